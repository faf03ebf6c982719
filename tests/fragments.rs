//! Fragments end to end through wireguard-go, with the overlay at its
//! default MTU of 1280: datagrams larger than that cross in fragments both
//! ways, masqueraded, and nothing of a denied datagram reaches the LAN.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result};
use routing_peer_testbed::{
    office::{Office, GRAFANA, LAPTOP_OVERLAY, ROUTER_LAN, ROUTER_OVERLAY, WIKI},
    wait_for, Daemon, Netns,
};

const DEV_UDP_ICMP: &str = "\n[[policies]]\nname = \"Development UDP\"\nsources = [\"Development\"]\n\
                            destinations = [\"Internal Apps\"]\nprotocol = \"udp\"\n\n\
                            [[policies]]\nname = \"Development ping\"\nsources = [\"Development\"]\n\
                            destinations = [\"Internal Apps\"]\nprotocol = \"icmp\"\n";

fn udp_in(ns: &Netns, bind: &str) -> Result<UdpSocket> {
    let addr: SocketAddr = bind.parse()?;
    let socket = ns.enter(move || UdpSocket::bind(addr))??;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    // Fragmented by the sending kernel, never refused for its size.
    let value = libc::IP_PMTUDISC_DONT;
    // SAFETY: setsockopt on a socket we own, with an int-sized value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    anyhow::ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(socket)
}

fn stat(daemon: &Daemon, table: &str, name: &str) -> Result<u64> {
    let stats = daemon.stats_json()?;
    stats[table]
        .as_array()
        .and_then(|rows| rows.iter().find(|d| d["name"] == name))
        .and_then(|d| d["packets"].as_u64())
        .with_context(|| format!("no {table} counter {name}"))
}

fn datagram(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A 6000-byte request from `client` to `server` at `to` (retried while the
/// tunnel comes up) and a 6000-byte reply back, each checked whole on
/// arrival: where the server saw the request from, and where the client
/// saw the reply from (`None`: it never came).
fn datagrams_both_ways(
    client: &UdpSocket,
    server: &UdpSocket,
    to: &str,
    seed: u8,
) -> Result<(SocketAddr, Option<SocketAddr>)> {
    let request = datagram(6000, seed);
    let mut buf = vec![0u8; 65536];
    let (len, from) = wait_for(Duration::from_secs(15), || {
        client.send_to(&request, to)?;
        Ok(server.recv_from(&mut buf).ok())
    })?;
    assert_eq!(&buf[..len], &request[..], "the request, reassembled whole");
    let reply = datagram(6000, seed + 1);
    for _ in 0..20 {
        server.send_to(&reply, from)?;
        if let Ok((n, src)) = client.recv_from(&mut buf) {
            assert_eq!(&buf[..n], &reply[..], "the reply, reassembled whole");
            return Ok((from, Some(src)));
        }
    }
    Ok((from, None))
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn six_kilobyte_datagrams_cross_both_ways_in_fragments_masqueraded() -> Result<()> {
    big_datagrams_both_ways(true)
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn six_kilobyte_datagrams_cross_both_ways_in_fragments_unmasqueraded() -> Result<()> {
    big_datagrams_both_ways(false)
}

fn big_datagrams_both_ways(masquerade: bool) -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config(DEV_UDP_ICMP)?;
    if !masquerade {
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(
            &path,
            text.replace("masquerade = true", "masquerade = false"),
        )?;
        // The LAN routes the overlay back through the routing peer.
        office
            .lan
            .ip(&format!("route add 100.64.0.0/10 via {ROUTER_LAN}"))?;
    }
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    let server = udp_in(&office.lan, &format!("{WIKI}:9100"))?;
    let client = udp_in(&office.laptop.ns, &format!("{LAPTOP_OVERLAY}:0"))?;
    let (from, back) = datagrams_both_ways(&client, &server, &format!("{WIKI}:9100"), 1)?;
    let source = if masquerade {
        ROUTER_LAN
    } else {
        LAPTOP_OVERLAY
    };
    assert_eq!(from.ip().to_string(), source);
    let src = back.context("the fragmented reply never reached the laptop")?;
    assert_eq!(src.to_string(), format!("{WIKI}:9100"));

    for reason in [
        "fragment",
        "fragment-overlap",
        "fragment-orphan",
        "fragment-tiny",
    ] {
        assert_eq!(stat(&daemon, "drops", reason)?, 0, "{reason}");
    }
    let stats = daemon.stats_json()?;
    assert!(stats["fragments"]["tracked"].as_u64() >= Some(2), "{stats}");
    assert!(
        stats["fragments"]["followed"].as_u64() >= Some(8),
        "{stats}"
    );
    let flows = daemon.cli_json(&["flows", "--json", "--proto", "udp"])?;
    let flow = flows
        .as_array()
        .and_then(|f| f.iter().find(|f| f["remote_port"] == 9100))
        .context("no flow for the datagrams")?;
    assert!(flow["fragmented_datagrams"].as_u64() >= Some(2), "{flow}");
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_ping_of_4000_bytes_gets_its_fragmented_answer() -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config(DEV_UDP_ICMP)?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    wait_for(Duration::from_secs(15), || {
        let out = office
            .laptop
            .ns
            .cmd("ping")
            .args(["-c", "1", "-W", "1", "-s", "4000", WIKI])
            .output()?;
        Ok(out.status.success().then_some(()))
    })
    .context("no answer to a 4000-byte ping")?;
    assert_eq!(stat(&daemon, "drops", "fragment-orphan")?, 0);
    assert_eq!(stat(&daemon, "drops", "fragment")?, 0);
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn no_fragment_of_a_denied_datagram_reaches_the_lan() -> Result<()> {
    let mut office = Office::new()?;
    let path = office.write_config(DEV_UDP_ICMP)?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    // The tunnel is up once an allowed datagram gets through.
    let allowed = udp_in(&office.lan, &format!("{WIKI}:9101"))?;
    let client = udp_in(&office.laptop.ns, &format!("{LAPTOP_OVERLAY}:0"))?;
    let mut buf = vec![0u8; 65536];
    wait_for(Duration::from_secs(15), || {
        client.send_to(b"up?", format!("{WIKI}:9101"))?;
        Ok(allowed.recv_from(&mut buf).ok())
    })?;
    // Grafana takes no UDP from Development.
    let denied = udp_in(&office.lan, &format!("{GRAFANA}:9102"))?;
    for _ in 0..3 {
        client.send_to(&datagram(6000, 3), format!("{GRAFANA}:9102"))?;
    }
    assert!(
        denied.recv_from(&mut buf).is_err(),
        "a denied datagram arrived"
    );
    let followers = wait_for(Duration::from_secs(5), || {
        let n = stat(&daemon, "drops", "fragment")?;
        Ok((n >= 12).then_some(n))
    })
    .context("the later fragments were not dropped as `fragment`")?;
    assert!(stat(&daemon, "drops", "no-policy")? >= 3);
    assert!(followers >= 12, "4 later fragments of each of 3 datagrams");
    Ok(())
}

/// A TXT query for `name` with EDNS0 offering 4096 bytes, as raw DNS.
fn txt_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]); // root, TXT, IN
                                            // OPT: root name, type 41, class = UDP payload size, TTL 0, no data.
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    q
}

/// An upstream answer larger than the LAN's MTU reaches the forwarder in
/// fragments (to the routing peer's own address: the kernel's, once the
/// first fragment was), and the peer gets it whole.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_dns_answer_over_1232_bytes_comes_through_the_forwarders_upstream_path() -> Result<()> {
    let mut office = Office::new()?;
    office.grafana_address = "grafana.berlin.internal".into();
    office.grafana_groups = vec!["Internal Apps".into()];
    // Nine strings of 240 bytes: an answer of about 2.2 kB.
    let long: Vec<String> = (b'a'..=b'i')
        .map(|c| char::from(c).to_string().repeat(240))
        .collect();
    office.dnsmasq_extra = vec![
        "--edns-packet-max=4096".into(),
        format!("--txt-record=grafana.berlin.internal,{}", long.join(",")),
    ];
    office.start_dnsmasq()?;
    let path = office.write_config("")?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    let query = txt_query("grafana.berlin.internal");
    let server: SocketAddr = format!("{ROUTER_OVERLAY}:53").parse()?;
    let answer = wait_for(Duration::from_secs(20), || {
        let query = query.clone();
        let reply = office
            .laptop
            .ns
            .enter(move || -> Result<Option<Vec<u8>>> {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                socket.send_to(&query, server)?;
                let mut buf = vec![0u8; 65536];
                Ok(socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
            })??;
        Ok(reply)
    })?;
    assert_eq!(answer[3] & 0x0f, 0, "rcode NOERROR");
    assert!(answer.len() > 1232, "{} bytes", answer.len());
    assert!(
        u16::from_be_bytes([answer[6], answer[7]]) >= 1,
        "an answer record"
    );
    assert_eq!(stat(&daemon, "drops", "fragment")?, 0);
    let stats = daemon.stats_json()?;
    assert!(
        stats["fragments"]["followed"].as_u64() >= Some(1),
        "{stats}"
    );
    Ok(())
}

/// IPv6: a 6000-byte datagram each way, masqueraded, in fragments. IPv6 is
/// never fragmented on the way, and the routing peer's packet-too-big does
/// not yet quote a fragment header (docs/architecture.md, known gaps), so
/// the LAN link here has the overlay's MTU: the host sends 1280-byte
/// fragments, which the skb MTU helper used to refuse (it counts the LAN's
/// Ethernet header against the L3 overlay's MTU).
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn six_kilobyte_ipv6_datagrams_cross_both_ways_in_fragments() -> Result<()> {
    const LAPTOP6: &str = "2001:db8:100::2";
    const WIKI6: &str = "2001:db8:1::5";
    let mut office = Office::new()?;
    let v6 = "\n[[networks.resources]]\nname = \"wiki6\"\naddress = \"2001:db8:1::5/128\"\n\
              groups = [\"Internal Apps\"]\n";
    let path = office.write_config(&format!("{DEV_UDP_ICMP}{v6}"))?;
    let text = std::fs::read_to_string(&path)?
        .replace(
            "overlay_addresses = [\"100.64.0.1/10\"]",
            "overlay_addresses = [\"100.64.0.1/10\", \"2001:db8:100::1/64\"]",
        )
        .replace(
            &format!("addresses = [\"{LAPTOP_OVERLAY}\"]"),
            &format!("addresses = [\"{LAPTOP_OVERLAY}\", \"{LAPTOP6}\"]"),
        );
    std::fs::write(&path, text)?;
    office.router.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 && ip -6 addr add 2001:db8:1::1/64 dev lan0 nodad")?;
    office.lan.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 && ip -6 addr add {WIKI6}/64 dev eth0 nodad && \
         ip link set eth0 mtu 1280"
    ))?;
    let daemon = Daemon::start(&office.router, &path, &[])?;
    office.connect_clients()?;
    let (iface, router_key) = (
        office.laptop.iface.clone(),
        office.router_public_key.clone(),
    );
    office.laptop.ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 && \
         ip -6 addr add {LAPTOP6}/128 dev {iface} nodad && \
         wg set {iface} peer {router_key} allowed-ips 100.64.0.0/10,198.51.100.0/24,2001:db8::/32 && \
         ip -6 route add 2001:db8::/32 dev {iface}"
    ))?;
    let bind = |ns: &Netns, addr: String| -> Result<UdpSocket> {
        let addr: SocketAddr = addr.parse()?;
        let socket = ns.enter(move || UdpSocket::bind(addr))??;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(socket)
    };
    let server = bind(&office.lan, format!("[{WIKI6}]:9103"))?;
    let client = bind(&office.laptop.ns, format!("[{LAPTOP6}]:0"))?;
    let (from, back) = datagrams_both_ways(&client, &server, &format!("[{WIKI6}]:9103"), 4)?;
    assert_eq!(from.ip().to_string(), "2001:db8:1::1", "masqueraded");
    let Some(src) = back else {
        anyhow::bail!(
            "the fragmented IPv6 reply never reached the laptop: {}",
            daemon.stats_json()?
        );
    };
    assert_eq!(src.ip().to_string(), WIKI6);
    Ok(())
}
