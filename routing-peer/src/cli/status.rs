//! `routing-peer status` and `routing-peer down`.

use anyhow::{bail, Context, Result};
use routing_peer_common::map_names;

use super::{
    context,
    table::{human_bytes, human_duration, Table},
};
use crate::{
    config::WireguardMode,
    control::{self, Status},
    datapath::{self, PinDir},
    identity,
    observe::occupancy,
    sysctl, wireguard,
};

/// The safety net's drop counter, read in the daemon's namespace (the CLI
/// may run in another); `None` when the table is missing.
pub fn safety_net_dropped(instance: &str) -> Option<u64> {
    identity::in_daemon_netns(&control::run_dir(instance), || {
        datapath::safety_net::dropped(instance)
    })
    .ok()
    .flatten()
}

pub fn run(instance: &str, pins: &PinDir, json: bool) -> Result<()> {
    let ctx = context(instance);
    let Some(status) = ctx.status else {
        bail!("routing-peer is not running for instance {instance}");
    };
    if json {
        let doc = serde_json::json!({
            "running": ctx.running,
            "status": status,
            "safety_net": {
                "table": status.safety_net_table,
                "dropped": safety_net_dropped(instance),
            },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_status(&status, ctx.running, pins);
    Ok(())
}

pub fn print_status(status: &Status, running: bool, pins: &PinDir) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if !running {
        println!(
            "routing-peer is not running for instance {} (showing its last state)",
            status.instance
        );
    }
    println!("routing peer: {}  metric {}", status.name, status.metric);
    println!(
        "wireguard:    {:?} mode, interface {}, listen port {}",
        status.wireguard_mode, status.interface, status.listen_port
    );
    println!("public key:   {}", status.public_key);
    println!(
        "config:       {} (generation {}, reloaded {} ago)",
        status.config_path,
        status.generation,
        human_duration(now.saturating_sub(status.last_reload_unix))
    );
    print_source(&status.source, now);
    match safety_net_dropped(&status.instance) {
        Some(n) => println!(
            "safety net:   nft table inet {}, {n} packets the kernel would have forwarded dropped",
            status.safety_net_table
        ),
        None => println!(
            "safety net:   MISSING (nft table inet {})",
            status.safety_net_table
        ),
    }
    println!();
    let mut t = Table::new(&[
        "PEER",
        "ADDRESSES",
        "ENDPOINT",
        "HANDSHAKE",
        "RX",
        "TX",
        "STATE",
    ]);
    for p in &status.peers {
        t.row(vec![
            p.name.clone(),
            p.addresses.join(","),
            p.endpoint.clone().unwrap_or_else(|| "-".into()),
            p.handshake_age_secs
                .map(|a| format!("{} ago", human_duration(a)))
                .unwrap_or_else(|| "never".into()),
            human_bytes(p.rx_bytes),
            human_bytes(p.tx_bytes),
            if p.up { "up" } else { "down" }.into(),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["PROGRAM", "HOOK", "INTERFACE", "ATTACHED"]);
    for p in &status.programs {
        let attached = pins.link(&p.program, &p.interface).exists();
        t.row(vec![
            p.program.clone(),
            p.hook.clone(),
            p.interface.clone(),
            if attached { "yes (pinned link)" } else { "no" }.into(),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["MAP", "ENTRIES", "CAPACITY"]);
    for name in [
        map_names::CONNTRACK,
        map_names::FRAGS,
        map_names::NAT_FWD,
        map_names::PEERS[0],
        map_names::DESTS[0],
        map_names::POLICY[0],
        map_names::POLICY_EXACT[0],
    ] {
        if let Some((used, cap)) = occupancy(pins, name) {
            t.row(vec![name.to_string(), used.to_string(), cap.to_string()]);
        }
    }
    t.print();
}

/// Stops the daemon, detaches everything and removes this instance's
/// state, in the daemon's namespace.
pub fn down(instance: &str, pins: &PinDir) -> Result<()> {
    let dir = control::run_dir(instance);
    identity::enter_daemon_netns(&dir)?;
    let state = control::read_state(instance);
    // Stop a running daemon first, so it doesn't re-attach; only if the
    // recorded pid is still that daemon.
    if let Some(pid) = identity::live_daemon(&dir) {
        // SAFETY: plain kill(2) on a pid checked to be our daemon.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    pins.remove()
        .with_context(|| format!("removing {}", pins.root().display()))?;
    if let Some(state) = &state {
        // An external interface is someone else's: only detach from it.
        let ours = state.wireguard_mode != WireguardMode::External;
        if ours && wireguard::iface_exists(&state.interface) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &state.interface])
                .status();
        }
    }
    datapath::safety_net::remove(instance).context("removing the safety-net table")?;
    datapath::hold::remove(instance).context("removing the fragment hold")?;
    sysctl::restore(&dir.join("sysctl.json"))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("routing-peer instance {instance} is down");
    Ok(())
}

/// The NetBird source: where, as whom, the last sync and its age, faults.
fn print_source(source: &crate::control::SourceStatus, now: u64) {
    if source.kind != "netbird" {
        return;
    }
    let sync = match source.last_sync_unix {
        Some(t) => format!("last sync {} ago", human_duration(now.saturating_sub(t))),
        None => "never synced".into(),
    };
    println!(
        "source:       NetBird {} as peer {}, {sync}, {} requests per sync",
        source.management_url.as_deref().unwrap_or("?"),
        source.peer.as_deref().unwrap_or("(not found yet)"),
        source.requests_per_sync
    );
    if let (Some(e), Some(t)) = (&source.last_error, source.last_error_unix) {
        if source.last_sync_unix.is_none_or(|s| t >= s) {
            println!(
                "              FAILING since {} ago, running configuration kept: {e}",
                human_duration(now.saturating_sub(t))
            );
        }
    }
    for w in &source.warnings {
        println!("              warning: {w}");
    }
}
