//! The office walkthrough end to end: wireguard-go clients, the daemon in
//! userspace-WireGuard mode, real TCP servers behind it.

use std::time::Duration;

use anyhow::{bail, Result};
use routing_peer_e2e::{
    office::{exchange, Office, ROUTER_LAN, WIKI},
    wait_for, Daemon,
};
use serde_json::Value;

const QUICK: Duration = Duration::from_millis(1500);

fn start() -> Result<(Office, Daemon)> {
    let mut office = Office::new()?;
    let config = office.write_config(GRAFANA_POLICY)?;
    let daemon = Daemon::start(&office.router, &config, &[])?;
    office.connect_clients()?;
    Ok((office, daemon))
}

const GRAFANA_POLICY: &str = r#"
[[policies]]
name = "Development to Dashboards"
sources = ["Development"]
destinations = ["Dashboards"]
protocol = "tcp"
ports = [443]
"#;

/// Connects once the tunnel is up (the first handshake takes a moment).
fn connect(office: &Office, to: &str) -> Result<std::net::TcpStream> {
    wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(to, QUICK).ok())
    })
}

fn generation(daemon: &Daemon) -> Result<u64> {
    Ok(
        daemon.cli_json(&["status", "--json"])?["status"]["generation"]
            .as_u64()
            .unwrap_or(0),
    )
}

fn peer<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["status"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

#[test]
fn the_walkthrough_allows_exactly_what_the_policy_says() -> Result<()> {
    let (office, daemon) = start()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    // Masquerade: the wiki sees the routing peer's LAN address.
    assert_eq!(
        exchange(&mut wiki, "GET /")?,
        format!("wiki saw {ROUTER_LAN}: GET /")
    );
    assert!(
        office.laptop.tcp(&format!("{WIKI}:80"), QUICK).is_err(),
        "port 80 is not granted"
    );
    assert!(
        office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_err(),
        "Sales has no policy"
    );

    let status = daemon.cli_json(&["status", "--json"])?;
    assert_eq!(status["running"], true);
    assert_eq!(status["status"]["wireguard_mode"], "userspace");
    assert_eq!(peer(&status, "laptop")["up"], true);
    assert!(peer(&status, "laptop")["handshake_age_secs"].is_u64());

    let flows = daemon.cli_json(&[
        "flows",
        "--json",
        "--peer",
        "laptop",
        "--state",
        "established",
    ])?;
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0]["resource"], "Internal Wiki");
    assert_eq!(flows[0]["rule"], "Development to Internal Apps");
    assert!(flows[0]["nat"].as_str().unwrap().starts_with(ROUTER_LAN));

    // `policy check` agrees with what the data path did.
    for (from, port, allowed) in [
        ("laptop", 443, true),
        ("laptop", 80, false),
        ("sales", 443, false),
    ] {
        let v = daemon.cli_json(&[
            "policy",
            "check",
            "--from",
            from,
            "--to",
            WIKI,
            "--proto",
            "tcp",
            "--port",
            &port.to_string(),
            "--json",
        ])?;
        assert_eq!(v["allowed"], allowed, "{from} -> {port}: {v}");
    }
    Ok(())
}

#[test]
fn a_reload_that_removes_a_policy_cuts_its_flows_only() -> Result<()> {
    let (office, daemon) = start()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    let mut grafana = connect(&office, "198.51.100.6:443")?;
    assert!(exchange(&mut grafana, "one")?.starts_with("grafana saw"));
    let before = generation(&daemon)?;
    office.write_config("")?; // the Dashboards policy is gone
    wait_for(Duration::from_secs(10), || {
        Ok((generation(&daemon)? > before).then_some(()))
    })?;
    assert!(
        exchange(&mut grafana, "two").is_err(),
        "the revoked flow is cut mid-stream"
    );
    assert!(exchange(&mut wiki, "still here")?.ends_with("still here"));
    let drops = daemon.stats_json()?;
    let revoked = drops["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "policy-revoked")
        .unwrap();
    assert!(revoked["packets"].as_u64().unwrap() >= 1);
    Ok(())
}

#[test]
fn a_daemon_restart_keeps_established_tcp_alive() -> Result<()> {
    let (office, mut daemon) = start()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    for i in 0..5 {
        exchange(&mut wiki, &format!("before {i}"))?;
    }
    daemon.restart()?;
    for i in 0..5 {
        assert!(exchange(&mut wiki, &format!("after {i}"))?.ends_with(&format!("after {i}")));
    }
    let flows = daemon.cli_json(&["flows", "--json", "--resource", "Internal Wiki"])?;
    let flow = &flows.as_array().unwrap()[0];
    assert!(
        flow["packets_out"].as_u64().unwrap() >= 10,
        "conntrack survived: {flow}"
    );
    Ok(())
}

#[test]
fn an_invalid_config_is_rejected_and_the_running_one_stays() -> Result<()> {
    let (office, daemon) = start()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    let before = generation(&daemon)?;
    let path = office.write_config("[[policies]]\nname = \"broken\"\nsources = [\"Nobody\"]\ndestinations = [\"Internal Apps\"]\n")?;
    // Give the file watcher a few ticks; the generation must not move.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(generation(&daemon)?, before);
    assert!(exchange(&mut wiki, "still allowed")?.ends_with("still allowed"));
    assert!(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).is_ok());
    // The same file, validated, names the file, the field and the fix.
    let out = std::process::Command::new(routing_peer_e2e::routing_peer_bin())
        .args(["validate", "--config", path.to_str().unwrap()])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routing-peer.toml")
            && err.contains("policies[1].sources[0]")
            && err.contains("unknown peer group `Nobody`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn peer_status_follows_a_client_that_comes_and_goes() -> Result<()> {
    let (mut office, daemon) = start()?;
    let up = |want: bool| -> Result<Option<()>> {
        let s = daemon.cli_json(&["status", "--json"])?;
        Ok((peer(&s, "sales")["up"] == want).then_some(()))
    };
    // Traffic (even denied) makes wireguard-go handshake.
    let _ = office.sales.tcp(&format!("{WIKI}:443"), QUICK);
    wait_for(Duration::from_secs(15), || up(true))?;
    office.sales.disconnect()?;
    wait_for(Duration::from_secs(20), || up(false))?;
    let key = office.router_public_key.clone();
    office.sales.connect(&key)?;
    let _ = office.sales.tcp(&format!("{WIKI}:443"), QUICK);
    wait_for(Duration::from_secs(15), || up(true))?;
    if office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_ok() {
        bail!("Sales must still be denied");
    }
    Ok(())
}
