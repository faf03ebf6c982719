//! Masquerade off, the input chain, LAN-initiated traffic and bad packets,
//! end to end through wireguard-go.

use std::time::Duration;

use anyhow::Result;
use routing_peer_testbed::{
    office::{exchange, Office, Server, LAPTOP_OVERLAY, ROUTER_LAN, WIKI},
    wait_for, Daemon,
};

const QUICK: Duration = Duration::from_millis(1500);

fn connect(office: &Office, to: &str) -> Result<std::net::TcpStream> {
    wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(to, QUICK).ok())
    })
}

fn drops(daemon: &Daemon, reason: &str) -> Result<u64> {
    let stats = daemon.stats_json()?;
    Ok(stats["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == reason)
        .unwrap()["packets"]
        .as_u64()
        .unwrap())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn masquerade_off_keeps_the_overlay_source_with_a_return_route() -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config("")?;
    let text = std::fs::read_to_string(&path)?.replace("masquerade = true", "masquerade = false");
    std::fs::write(&path, text)?;
    // The LAN routes the overlay back through the routing peer.
    office
        .lan
        .ip(&format!("route add 100.64.0.0/10 via {ROUTER_LAN}"))?;
    let _daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    assert_eq!(
        exchange(&mut wiki, "hi")?,
        format!("wiki saw {LAPTOP_OVERLAY}: hi")
    );
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn lan_initiated_connections_toward_the_overlay_are_denied() -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config("")?;
    office
        .lan
        .ip(&format!("route add 100.64.0.0/10 via {ROUTER_LAN}"))?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    connect(&office, &format!("{WIKI}:443"))?; // the tunnel is up
    let _laptop_service = Server::start(
        &office.laptop.ns,
        &format!("{LAPTOP_OVERLAY}:8080"),
        "laptop",
    )?;
    let to: std::net::SocketAddr = format!("{LAPTOP_OVERLAY}:8080").parse()?;
    let attempt = office
        .lan
        .enter(move || std::net::TcpStream::connect_timeout(&to, QUICK))?;
    assert!(attempt.is_err(), "a LAN host reached the laptop");
    assert!(drops(&daemon, "lan-unsolicited")? >= 1);
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn the_routing_peer_itself_needs_a_peer_policy() -> Result<()> {
    let mut office = Office::new()?;
    let lan_ssh = r#"
[[networks.resources]]
name = "Office LAN"
address = "198.51.100.0/24"
groups = ["LAN"]

[[policies]]
name = "Development to LAN ssh"
sources = ["Development"]
destinations = ["LAN"]
protocol = "tcp"
ports = [22]
"#;
    let path = office.write_config(lan_ssh)?;
    let _ssh = Server::start(&office.router, &format!("{ROUTER_LAN}:22"), "gateway-ssh")?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    connect(&office, &format!("{WIKI}:443"))?;
    // The /24 resource contains the routing peer's LAN address; its policy
    // grants tcp/22 through the routing peer, never to it.
    assert!(office
        .laptop
        .tcp(&format!("{ROUTER_LAN}:22"), QUICK)
        .is_err());
    let v = daemon.cli_json(&[
        "policy", "check", "--from", "laptop", "--to", ROUTER_LAN, "--proto", "tcp", "--port",
        "22", "--json",
    ])?;
    assert_eq!(
        (v["allowed"].as_bool(), v["chain"].as_str()),
        (Some(false), Some("input")),
        "{v}"
    );

    let generation = |d: &Daemon| -> Result<u64> {
        Ok(d.cli_json(&["status", "--json"])?["status"]["generation"]
            .as_u64()
            .unwrap())
    };
    let before = generation(&daemon)?;
    let peer_ssh = format!(
        "{lan_ssh}\n[[policies]]\nname = \"ssh to the gateway\"\nkind = \"peer\"\nsources = [\"Development\"]\ndestinations = [\"Routing Peers\"]\nprotocol = \"tcp\"\nports = [22]\n"
    );
    office.write_config(&peer_ssh)?;
    wait_for(Duration::from_secs(10), || {
        Ok((generation(&daemon)? > before).then_some(()))
    })?;
    let mut ssh = office.laptop.tcp(&format!("{ROUTER_LAN}:22"), QUICK)?;
    assert!(exchange(&mut ssh, "SSH-2.0")?.starts_with("gateway-ssh saw"));
    Ok(())
}

/// Raw IPv4 packets from the laptop through its tunnel: the kernel fills in
/// the IP checksum and length, everything else is ours to break.
fn send_raw(office: &Office, packets: Vec<Vec<u8>>) -> Result<()> {
    office.laptop.ns.enter(move || -> Result<()> {
        // SAFETY: FFI with owned buffers; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            for p in &packets {
                let mut to: libc::sockaddr_in = std::mem::zeroed();
                to.sin_family = libc::AF_INET as u16;
                to.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
            }
            libc::close(fd);
        }
        Ok(())
    })?
}

fn ipv4(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 1];
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0, 100, 64, 0, 2, 198, 51, 100, 5]);
    p.extend_from_slice(payload);
    p
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn bad_packets_from_a_peer_are_dropped_and_counted_and_nothing_breaks() -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config("")?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    let mut wiki = connect(&office, &format!("{WIKI}:443"))?;
    let mut tcp_bad_checksum = vec![0u8; 20];
    tcp_bad_checksum[0..4].copy_from_slice(&[0x9c, 0x40, 0x01, 0xbb]); // 40000 -> 443
    tcp_bad_checksum[12] = 0x50;
    tcp_bad_checksum[13] = 0x02; // SYN
    tcp_bad_checksum[16..18].copy_from_slice(&[0xde, 0xad]);
    let packets = vec![
        ipv4(6, 0x0010, &[0u8; 24]), // a later fragment whose first never comes
        ipv4(6, 0, &[0x9c, 0x41, 0x01]), // TCP header cut short
        ipv4(17, 0, &[0u8; 4]),      // UDP header cut short
        ipv4(6, 0, &tcp_bad_checksum), // well-formed, wrong checksum: forwarded, the server drops it
    ];
    send_raw(&office, packets)?;
    wait_for(Duration::from_secs(5), || {
        Ok(
            (drops(&daemon, "fragment-orphan")? >= 1 && drops(&daemon, "malformed")? >= 2)
                .then_some(()),
        )
    })?;
    // Everything still works.
    assert!(exchange(&mut wiki, "still fine")?.ends_with("still fine"));
    assert!(daemon.cli_json(&["status", "--json"])?["running"] == true);
    Ok(())
}
