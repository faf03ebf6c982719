//! The operator commands. Counters and flows come straight from the pinned
//! maps, so they work while the daemon is down or restarting; names and
//! peer status come from the daemon (its control socket, or its last state
//! file when it isn't running).

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use routing_peer_common::map_names;

use crate::{
    control::{self, Status},
    datapath::PinDir,
};

pub use crate::observe::{
    is_expired, name_of, occupancy, open_pinned, proto_name, read_flows, read_stats, state_name,
    Flow, ResourceStats, StatsReport,
};

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn human_count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Names and config for display: from the running daemon, else its state file.
pub struct DaemonView {
    pub status: Option<Status>,
    pub running: bool,
}

pub fn context(instance: &str) -> DaemonView {
    match control::query_status(instance) {
        Some(s) => DaemonView {
            status: Some(s),
            running: true,
        },
        None => DaemonView {
            status: control::read_state(instance),
            running: false,
        },
    }
}

#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    pub peer: Option<String>,
    pub resource: Option<String>,
    pub proto: Option<String>,
    pub state: Option<String>,
    pub sort: Option<String>,
    pub top: Option<usize>,
}

pub fn filter_flows(mut flows: Vec<Flow>, f: &FlowFilter) -> Vec<Flow> {
    flows.retain(|fl| {
        f.peer
            .as_ref()
            .is_none_or(|p| &fl.peer == p || &fl.peer_addr == p)
            && f.resource.as_ref().is_none_or(|r| &fl.resource == r)
            && f.proto.as_ref().is_none_or(|p| &fl.proto == p)
            && f.state.as_ref().is_none_or(|s| &fl.state == s)
    });
    match f.sort.as_deref() {
        Some("packets") => {
            flows.sort_by_key(|fl| std::cmp::Reverse(fl.packets_out + fl.packets_in))
        }
        Some("age") => flows.sort_by_key(|fl| std::cmp::Reverse(fl.age_secs)),
        _ => flows.sort_by_key(|fl| std::cmp::Reverse(fl.bytes_out + fl.bytes_in)),
    }
    if let Some(n) = f.top {
        flows.truncate(n);
    }
    flows
}

pub fn print_flows(flows: &[Flow], rates: Option<&HashMap<String, (f64, f64)>>) {
    let mut rows = vec![vec![
        "PEER".to_string(),
        "SOURCE".into(),
        "RESOURCE".into(),
        "DESTINATION".into(),
        "PROTO".into(),
        "STATE".into(),
        "NAT".into(),
        "RULE".into(),
        "PKTS OUT/IN".into(),
        "BYTES OUT/IN".into(),
        "AGE".into(),
        "IDLE".into(),
    ]];
    if rates.is_some() {
        rows[0].push("RATE".into());
    }
    for f in flows {
        let mut row = vec![
            f.peer.clone(),
            format!("{}:{}", f.peer_addr, f.peer_port),
            f.resource.clone(),
            format!("{}:{}", f.remote_addr, f.remote_port),
            f.proto.clone(),
            f.state.clone(),
            f.nat.clone().unwrap_or_else(|| "-".into()),
            f.rule.clone(),
            format!("{}/{}", f.packets_out, f.packets_in),
            format!("{}/{}", human_bytes(f.bytes_out), human_bytes(f.bytes_in)),
            human_duration(f.age_secs),
            human_duration(f.idle_secs),
        ];
        if let Some(rates) = rates {
            let (pps, bps) = rates.get(&flow_id(f)).copied().unwrap_or((0.0, 0.0));
            row.push(format!(
                "{} pps {}/s",
                human_count(pps),
                human_bytes(bps as u64)
            ));
        }
        rows.push(row);
    }
    print_table(&rows);
}

pub fn flow_id(f: &Flow) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        f.proto, f.peer_addr, f.peer_port, f.remote_addr, f.remote_port
    )
}

pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn print_stats(report: &StatsReport, rates: Option<&HashMap<String, (f64, f64)>>) {
    let mut rows = vec![vec![
        "RESOURCE".to_string(),
        "FLOWS".into(),
        "NEW".into(),
        "PKTS OUT".into(),
        "BYTES OUT".into(),
        "PKTS IN".into(),
        "BYTES IN".into(),
        "DENIED".into(),
    ]];
    if rates.is_some() {
        rows[0].push("RATE".into());
    }
    for r in &report.resources {
        let mut row = vec![
            r.resource.clone(),
            r.active_flows.to_string(),
            r.new_flows.to_string(),
            r.packets_out.to_string(),
            human_bytes(r.bytes_out),
            r.packets_in.to_string(),
            human_bytes(r.bytes_in),
            r.denied_packets.to_string(),
        ];
        if let Some(rates) = rates {
            let (pps, bps) = rates.get(&r.resource).copied().unwrap_or((0.0, 0.0));
            row.push(format!(
                "{} pps {}/s",
                human_count(pps),
                human_bytes(bps as u64)
            ));
        }
        rows.push(row);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "DROP REASON".to_string(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    for d in &report.drops {
        rows.push(vec![
            d.name.to_string(),
            d.packets.to_string(),
            human_bytes(d.bytes),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "TO KERNEL".to_string(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    for h in &report.handoffs {
        rows.push(vec![
            h.name.to_string(),
            h.packets.to_string(),
            human_bytes(h.bytes),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec!["HOOK".to_string(), "PACKETS".into(), "BYTES".into()]];
    for h in &report.hooks {
        rows.push(vec![
            h.name.to_string(),
            h.packets.to_string(),
            human_bytes(h.bytes),
        ]);
    }
    print_table(&rows);
    println!(
        "\nconntrack: {} / {} entries, {} evicted (LRU)",
        report.conntrack_entries, report.conntrack_capacity, report.conntrack_evictions
    );
}

/// The safety net's drop counter, read in the daemon's namespace (the CLI
/// may run in another); `None` when the table is missing.
pub fn safety_net_dropped(instance: &str) -> Option<u64> {
    crate::identity::in_daemon_netns(&control::run_dir(instance), || {
        crate::datapath::safety_net::dropped(instance)
    })
    .ok()
    .flatten()
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
    let mut rows = vec![vec![
        "PEER".to_string(),
        "ADDRESSES".into(),
        "ENDPOINT".into(),
        "HANDSHAKE".into(),
        "RX".into(),
        "TX".into(),
        "STATE".into(),
    ]];
    for p in &status.peers {
        rows.push(vec![
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
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "PROGRAM".to_string(),
        "HOOK".into(),
        "INTERFACE".into(),
        "ATTACHED".into(),
    ]];
    for p in &status.programs {
        let attached = pins.link(&p.program, &p.interface).exists();
        rows.push(vec![
            p.program.clone(),
            p.hook.clone(),
            p.interface.clone(),
            if attached { "yes (pinned link)" } else { "no" }.into(),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec!["MAP".to_string(), "ENTRIES".into(), "CAPACITY".into()]];
    for name in [
        map_names::CONNTRACK,
        map_names::NAT_FWD,
        map_names::PEERS[0],
        map_names::DESTS[0],
        map_names::POLICY[0],
    ] {
        if let Some((used, cap)) = occupancy(pins, name) {
            rows.push(vec![name.to_string(), used.to_string(), cap.to_string()]);
        }
    }
    print_table(&rows);
}

pub fn require_state(ctx: &DaemonView, instance: &str) -> Result<Status> {
    ctx.status.clone().with_context(|| {
        format!("routing-peer is not running for instance {instance}, and has no saved state")
    })
}

/// The configuration the daemon applied (not the file on disk, which may
/// have changed or failed to load since).
pub fn load_config_of(status: &Status) -> Result<crate::config::Config> {
    let path = Path::new(&status.config_path);
    let applied = crate::control::applied_file(&status.instance);
    match std::fs::read_to_string(&applied) {
        Ok(text) => Ok(crate::config::parse(path, &text)?.config),
        Err(_) => Ok(crate::config::load(path)?.config),
    }
}
