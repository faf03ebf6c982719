//! The office walkthrough end to end: wireguard-go clients, the daemon in
//! userspace-WireGuard mode, real TCP servers behind it.

use std::time::Duration;

use anyhow::{bail, Result};
use routing_peer_testbed::{
    office::{exchange, Office, UdpEcho, ROUTER_LAN, WIKI},
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
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
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
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
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
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
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
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
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
    let out = std::process::Command::new(routing_peer_testbed::routing_peer_bin())
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
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
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

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_udp_exchange_shows_exactly_its_counts_in_flows_stats_and_metrics() -> Result<()> {
    let mut office = Office::new()?;
    let udp_policy = format!(
        "{GRAFANA_POLICY}\n[[policies]]\nname = \"Development UDP\"\nsources = [\"Development\"]\ndestinations = [\"Internal Apps\"]\nprotocol = \"udp\"\nports = [5353]\n"
    );
    let config = office.write_config(&udp_policy)?;
    let daemon = Daemon::start(
        &office.router,
        &config,
        &["--metrics-listen", "127.0.0.1:9477"],
    )?;
    office.connect_clients()?;
    let _echo = UdpEcho::start(&office.lan, &format!("{WIKI}:5353"))?;
    // Bring the tunnel up through another resource, so the exchange below
    // is exactly what the wiki's counters see.
    connect(&office, "198.51.100.6:443")?;

    const COUNT: u64 = 20;
    const PAYLOAD: usize = 100;
    let to: std::net::SocketAddr = format!("{WIKI}:5353").parse()?;
    let echoed = office.laptop.ns.enter(move || -> Result<u64> {
        let socket = std::net::UdpSocket::bind("100.64.0.2:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 2048];
        let mut echoed = 0;
        for i in 0..COUNT {
            socket.send_to(&[i as u8; PAYLOAD], to)?;
            if socket.recv(&mut buf)? == PAYLOAD {
                echoed += 1;
            }
        }
        Ok(echoed)
    })??;
    assert_eq!(echoed, COUNT);
    // IP bytes: 20 (IPv4) + 8 (UDP) + payload.
    let bytes = COUNT * (20 + 8 + PAYLOAD as u64);

    let flows = daemon.cli_json(&["flows", "--json", "--proto", "udp"])?;
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let f = &flows[0];
    assert_eq!(
        (
            f["packets_out"].as_u64(),
            f["bytes_out"].as_u64(),
            f["packets_in"].as_u64(),
            f["bytes_in"].as_u64()
        ),
        (Some(COUNT), Some(bytes), Some(COUNT), Some(bytes)),
        "{f}"
    );
    assert_eq!(f["state"], "replied");
    assert_eq!(f["rule"], "Development UDP");

    let stats = daemon.stats_json()?;
    let wiki = stats["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "Internal Wiki")
        .unwrap();
    assert_eq!(
        (
            wiki["packets_out"].as_u64(),
            wiki["bytes_out"].as_u64(),
            wiki["packets_in"].as_u64(),
            wiki["bytes_in"].as_u64()
        ),
        (Some(COUNT), Some(bytes), Some(COUNT), Some(bytes)),
        "{wiki}"
    );
    assert_eq!(wiki["new_flows"], 1);
    // conntrack.max_flows from the configuration sizes the table.
    assert_eq!(stats["conntrack_capacity"], 131072);

    // Peer status refreshes every second.
    wait_for(Duration::from_secs(5), || {
        let s = daemon.cli_json(&["status", "--json"])?;
        Ok((peer(&s, "laptop")["up"] == true).then_some(()))
    })?;
    // /metrics, read with a real Prometheus text-format parser.
    let body = office.router.enter(|| -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477")?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let wiki_out = [("resource", "Internal Wiki"), ("direction", "out")];
    assert_eq!(
        sample("routing_peer_resource_packets_total", &wiki_out),
        Some(COUNT as f64)
    );
    assert_eq!(
        sample("routing_peer_resource_bytes_total", &wiki_out),
        Some(bytes as f64)
    );
    assert_eq!(
        sample("routing_peer_peer_up", &[("peer", "laptop")]),
        Some(1.0)
    );
    assert!(sample(
        "routing_peer_drop_packets_total",
        &[("reason", "no-policy")]
    )
    .is_some());
    assert!(sample("routing_peer_conntrack_entries", &[]).unwrap() >= 2.0);
    Ok(())
}
