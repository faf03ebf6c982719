//! Events end to end: what the data path decided, as `observe --json`
//! shows it, against real peers (wireguard-go) and servers.

use std::time::Duration;

use anyhow::Result;
use routing_peer_testbed::{
    office::{exchange, Office, UdpEcho, WIKI},
    send_udp, wait_for, Daemon,
};
use serde_json::Value;

const QUICK: Duration = Duration::from_millis(1500);
const UDP_POLICY: &str = "\n[[policies]]\nname = \"Development UDP\"\nsources = [\"Development\"]\ndestinations = [\"Internal Apps\"]\nprotocol = \"udp\"\nports = [5353]\n";

/// The office with short UDP and closing timeouts, so flows end (and GC
/// reports them) within seconds, and a JSON-lines export.
fn start() -> Result<(Office, Daemon, std::path::PathBuf)> {
    let mut office = Office::new()?;
    let export = office.dir.path().join("events.jsonl");
    let text = office
        .config(UDP_POLICY)
        .replace("udp_secs = 120", "udp_secs = 2")
        .replace("tcp_transitory_secs = 240", "tcp_transitory_secs = 1")
        + &format!("\n[events]\nfile = \"{}\"\n", export.display());
    let config = office.dir.path().join("routing-peer.toml");
    std::fs::write(&config, text)?;
    let daemon = Daemon::start(&office.router, &config, &[])?;
    office.connect_clients()?;
    Ok((office, daemon, export))
}

/// The daemon's recent events (and a moment of live ones), as JSON.
fn observe(daemon: &Daemon, filters: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["observe", "--json", "--since", "10m", "--for", "1s"];
    args.extend_from_slice(filters);
    Ok(daemon
        .cli(&args)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn observe_shows_the_denied_attempt_and_the_flow_from_start_to_end() -> Result<()> {
    let (office, daemon, export) = start()?;
    let _echo = UdpEcho::start(&office.lan, &format!("{WIKI}:5353"))?;
    let mut wiki = wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).ok())
    })?;
    exchange(&mut wiki, "GET /")?;
    drop(wiki);
    // Sales has no policy.
    let sales_up = wait_for(Duration::from_secs(15), || {
        let _ = office
            .sales
            .tcp(&format!("{WIKI}:443"), Duration::from_millis(300));
        let drops = observe(&daemon, &["--peer", "sales", "--verdict", "dropped"])?;
        Ok((!drops.is_empty()).then_some(drops))
    })?;
    let d = &sales_up[0];
    assert_eq!(d["type"], "drop");
    assert_eq!(d["reason"], "no-policy");
    assert_eq!(d["peer"], "sales");
    assert_eq!(d["resource"], "Internal Wiki");
    assert_eq!(
        (d["dst"].as_str(), d["dst_port"].as_u64()),
        (Some(WIKI), Some(443))
    );
    assert_eq!(d["proto"], "tcp");
    assert_eq!(d["tcp_flags"], "SYN");
    assert!(d["count"].as_u64() >= Some(1));

    // A UDP exchange of exactly 20 datagrams each way: its start, then
    // (2 s idle, GC within 10 s) its end with exactly those counts.
    const COUNT: u64 = 20;
    let to: std::net::SocketAddr = format!("{WIKI}:5353").parse()?;
    let echoed = office.laptop.ns.enter(move || -> Result<u64> {
        let socket = std::net::UdpSocket::bind("100.64.0.2:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 256];
        let mut echoed = 0;
        for i in 0..COUNT {
            socket.send_to(&[i as u8; 100], to)?;
            if socket.recv(&mut buf)? == 100 {
                echoed += 1;
            }
        }
        Ok(echoed)
    })??;
    assert_eq!(echoed, COUNT);
    // Top talkers: the laptop's live flows summed.
    let by_peer = daemon.cli_json(&["flows", "--by", "peer", "--json"])?;
    let laptop = by_peer
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "laptop"))
        .expect("the laptop among the talkers");
    assert!(laptop["flows"].as_u64() >= Some(1));
    assert!(laptop["packets_out"].as_u64() >= Some(COUNT));
    let end = wait_for(Duration::from_secs(30), || {
        let ends = observe(&daemon, &["--proto", "udp", "--port", "5353"])?;
        Ok(ends.into_iter().find(|e| e["type"] == "end"))
    })?;
    assert_eq!(end["peer"], "laptop");
    assert_eq!(end["resource"], "Internal Wiki");
    assert_eq!(end["rule"], "Development UDP");
    assert_eq!(end["reason"], "timeout");
    assert_eq!(
        (end["packets_out"].as_u64(), end["packets_in"].as_u64()),
        (Some(COUNT), Some(COUNT))
    );
    assert_eq!(end["bytes_out"].as_u64(), Some(COUNT * 128));
    let udp = observe(&daemon, &["--proto", "udp", "--port", "5353"])?;
    let start = udp.iter().find(|e| e["type"] == "start").expect("a start");
    assert_eq!(start["nat_src"], routing_peer_testbed::office::ROUTER_LAN);
    assert_eq!(start["src_port"], end["src_port"]);

    // The TCP connection closed: its end says so.
    let tcp_end = wait_for(Duration::from_secs(30), || {
        let e = observe(
            &daemon,
            &["--peer", "laptop", "--proto", "tcp", "--port", "443"],
        )?;
        Ok(e.into_iter().find(|e| e["type"] == "end"))
    })?;
    assert_eq!(tcp_end["reason"], "close");
    assert_eq!(tcp_end["rule"], "Development to Internal Apps");

    // Filters: forwarded only, no drop among them; the human form names.
    let forwarded = observe(&daemon, &["--verdict", "forwarded"])?;
    assert!(!forwarded.is_empty() && forwarded.iter().all(|e| e["type"] != "drop"));
    let human = daemon.cli(&[
        "observe", "--since", "10m", "--for", "1s", "--peer", "sales",
    ])?;
    assert!(
        human.contains("DROP") && human.contains("sales") && human.contains("no-policy"),
        "{human}"
    );
    // The export has what observe had.
    let exported = std::fs::read_to_string(&export)?;
    assert!(exported
        .lines()
        .any(|l| l.contains("\"no-policy\"") && l.contains("\"sales\"")));
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_flood_of_denied_packets_adds_up_to_the_drop_counter() -> Result<()> {
    let (office, daemon, _) = start()?;
    wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).ok())
    })?;
    let no_policy = |s: &Value| {
        s["drops"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == "no-policy"))
            .and_then(|d| d["packets"].as_u64())
            .unwrap_or(0)
    };
    // 100k UDP datagrams from Sales to a port no policy grants, paced so
    // that wireguard-go's sockets drop none.
    const FLOOD: u64 = 100_000;
    let to: std::net::SocketAddr = format!("{WIKI}:9").parse()?;
    office.sales.ns.enter(move || -> Result<()> {
        let socket = std::net::UdpSocket::bind("100.64.0.3:0")?;
        for i in 0..FLOOD {
            socket.send_to(&[0x5a; 16], to)?;
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })??;
    // Until the counter settles and the daemon has flushed its aggregates.
    let mut last = 0;
    let dropped = wait_for(Duration::from_secs(30), || {
        let now = no_policy(&daemon.stats_json()?);
        let settled = now == last && now > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(1500));
        Ok(settled.then_some(now))
    })?;
    // What wireguard-go delivered of it (its sockets may lose some under
    // load); every one that reached the data path is in the events.
    eprintln!("flood: {dropped} of {FLOOD} dropped as no-policy");
    assert!(dropped >= FLOOD / 2, "the flood did not arrive: {dropped}");
    let drops = observe(&daemon, &["--verdict", "dropped", "--reason", "no-policy"])?;
    let reported: u64 = drops.iter().map(|e| e["count"].as_u64().unwrap_or(0)).sum();
    // The flood's first packet came alone, the rest in aggregates.
    let flood: Vec<&Value> = drops.iter().filter(|e| e["dst_port"] == 9).collect();
    assert_eq!(
        (flood[0]["count"].as_u64(), flood[0].get("aggregated")),
        (Some(1), None)
    );
    assert!(flood[1..].iter().all(|e| e["aggregated"] == true));
    assert!(
        flood.len() < 100,
        "aggregated, not one event per packet: {}",
        flood.len()
    );
    assert_eq!(
        reported, dropped,
        "aggregated counts must add up to the drop counter"
    );
    let status = daemon.cli_json(&["status", "--json"])?;
    let events = &status["status"]["events"];
    assert_eq!(events["lost"], 0);
    assert!(
        events["aggregated"].as_u64() > Some(dropped / 2),
        "{events}"
    );
    Ok(())
}

/// A pcap file of UDP datagrams to the IPFIX port, for tshark to read.
fn pcap(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, d) in datagrams.iter().enumerate() {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .udp(40000, 4739)
            .write(&mut frame, d)
            .expect("a UDP frame");
        for word in [i as u32 + 1, 0, frame.len() as u32, frame.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
#[ignore = "needs root, namespaces and tshark: cargo xtask test runs it"]
fn ipfix_records_decode_in_tshark_with_the_expected_fields() -> Result<()> {
    let mut office = Office::new()?;
    let collector = office
        .router
        .enter(|| std::net::UdpSocket::bind("127.0.0.1:0"))??;
    collector.set_read_timeout(Some(Duration::from_millis(300)))?;
    let text = office
        .config(UDP_POLICY)
        .replace("udp_secs = 120", "udp_secs = 2")
        + &format!(
            "\n[events]\nipfix_collector = \"{}\"\n",
            collector.local_addr()?
        );
    let config = office.dir.path().join("routing-peer.toml");
    std::fs::write(&config, text)?;
    let daemon = Daemon::start(&office.router, &config, &[])?;
    office.connect_clients()?;
    let _echo = UdpEcho::start(&office.lan, &format!("{WIKI}:5353"))?;
    // A denied attempt, and an allowed UDP flow of 3 datagrams each way.
    wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).ok())
    })?;
    send_udp(&office.sales.ns, &format!("{WIKI}:9"), 1, 8)?;
    let to: std::net::SocketAddr = format!("{WIKI}:5353").parse()?;
    office.laptop.ns.enter(move || -> Result<()> {
        let socket = std::net::UdpSocket::bind("100.64.0.2:47000")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            socket.send_to(&[7; 20], to)?;
            socket.recv(&mut buf)?;
        }
        Ok(())
    })??;
    // Until the UDP flow's end (2 s idle, GC within 10 s) has been exported.
    let mut datagrams = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = collector.recv(&mut buf) {
            datagrams.push(buf[..n].to_vec());
        }
        let ends = observe(&daemon, &["--proto", "udp", "--port", "5353"])?;
        if ends.iter().any(|e| e["type"] == "end") && !datagrams.is_empty() {
            // The end's message follows its record at once.
            while let Ok(n) = collector.recv(&mut buf) {
                datagrams.push(buf[..n].to_vec());
            }
            break;
        }
    }
    let file = office.dir.path().join("ipfix.pcap");
    std::fs::write(&file, pcap(&datagrams))?;
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            &file.display().to_string(),
            "-d",
            "udp.port==4739,cflow",
        ])
        // Reverse elements (RFC 5103) share their forward twins' names.
        .args(["-T", "json", "--no-duplicate-keys"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: Value = serde_json::from_slice(&out.stdout)?;
    // Every flow record tshark found, as (field → value) maps.
    let mut records: Vec<serde_json::Map<String, Value>> = Vec::new();
    collect_records(&decoded, &mut records);
    // A field's values: one, or forward and reverse.
    let values = |r: &serde_json::Map<String, Value>, k: &str| -> Vec<String> {
        match r.get(k) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let field = |r: &serde_json::Map<String, Value>, k: &str| values(r, k).join(",");
    let denied = records
        .iter()
        .find(|r| field(r, "cflow.srcaddr") == "100.64.0.3")
        .expect("the denied datagram's record");
    assert_eq!(field(denied, "cflow.dstaddr"), WIKI);
    assert_eq!(field(denied, "cflow.dstport"), "9");
    assert_eq!(field(denied, "cflow.protocol"), "17");
    assert_eq!(field(denied, "cflow.firewall_event"), "3", "{denied:#?}");
    // Its packet count: the drop event's.
    assert_eq!(values(denied, "cflow.packets")[0], "1");
    let end = records
        .iter()
        .find(|r| field(r, "cflow.srcport") == "47000" && field(r, "cflow.firewall_event") == "2")
        .expect("the flow's end record");
    assert_eq!(field(end, "cflow.srcaddr"), "100.64.0.2");
    // Out and back (reverse): 3 datagrams of 48 IP bytes each way.
    assert_eq!(field(end, "cflow.packets"), "3,3", "{end:#?}");
    assert_eq!(field(end, "cflow.octets"), "144,144");
    assert_eq!(field(end, "cflow.flow_end_reason"), "1", "idle timeout");
    assert_eq!(
        field(end, "cflow.post_natsource_ipv4_address"),
        routing_peer_testbed::office::ROUTER_LAN
    );
    assert_eq!(field(end, "cflow.post_naptsource_transport_port"), "47000");
    let start = records
        .iter()
        .find(|r| field(r, "cflow.srcport") == "47000" && field(r, "cflow.firewall_event") == "1")
        .expect("the flow's start record");
    assert_eq!(field(start, "cflow.dstport"), "5353");
    Ok(())
}

/// tshark's JSON nests a flow's fields under `cflow.flowset`; collects
/// every object holding `cflow.srcaddr`.
fn collect_records(v: &Value, out: &mut Vec<serde_json::Map<String, Value>>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("cflow.srcaddr") {
                out.push(o.clone());
            }
            for x in o.values() {
                collect_records(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_records(x, out)),
        _ => {}
    }
}
