//! The daemon in kernel WireGuard mode against clients running kernel
//! WireGuard configured by `wg`. The host kernel here has no WireGuard, so
//! `cargo xtask vm-test` runs this inside QEMU on Debian's kernels.

use std::{net::UdpSocket, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use routing_peer_testbed::{
    office::{exchange, Client, Office, UdpEcho, WgImpl, ROUTER_LAN, WIKI},
    wait_for, Daemon,
};
use serde_json::Value;

const QUICK: Duration = Duration::from_millis(1500);

const UDP_POLICY: &str = r#"
[[policies]]
name = "Development to the wiki's echo"
sources = ["Development"]
destinations = ["Internal Apps"]
protocol = "udp"
ports = [7]
"#;

fn ops_peer(public_key: &str) -> String {
    format!(
        r#"
[[peers]]
name = "ops"
public_key = "{public_key}"
addresses = ["100.64.0.4"]
groups = ["Development"]
"#
    )
}

fn status(daemon: &Daemon) -> Result<Value> {
    Ok(daemon.cli_json(&["status", "--json"])?["status"].clone())
}

fn peer<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// The public keys `wg` sees on the routing peer's interface, with the
/// bytes received from each: a tunnel torn down and rebuilt starts at 0.
fn kernel_peers(office: &Office) -> Result<Vec<(String, u64)>> {
    let out = office
        .router
        .cmd("wg")
        .args(["show", &office.wg_iface, "transfer"])
        .output()?;
    ensure!(out.status.success(), "wg show: {out:?}");
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect())
}

fn rx_bytes(office: &Office, key: &str) -> Result<u64> {
    kernel_peers(office)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, rx)| rx)
        .with_context(|| format!("peer {key} is not on the kernel interface"))
}

fn udp_echo(client: &Client, to: &str) -> Result<Vec<u8>> {
    let to = to.to_string();
    client.ns.enter(move || -> Result<Vec<u8>> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(QUICK))?;
        socket.send_to(b"ping over kernel wireguard", &to)?;
        let mut buf = [0u8; 128];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(buf[..n].to_vec())
    })?
}

#[test]
#[ignore = "needs kernel WireGuard: `cargo xtask vm-test` runs it in QEMU"]
fn kernel_wireguard_forwards_enforces_and_reloads_without_dropping_tunnels() -> Result<()> {
    let mut office = Office::with_wireguard(WgImpl::Kernel)?;
    let _echo = UdpEcho::start(&office.lan, &format!("{WIKI}:7"))?;
    let config = office.write_config(UDP_POLICY)?;
    let daemon = Daemon::start(&office.router, &config, &["--wireguard", "kernel"])?;

    // The daemon created the interface as a kernel WireGuard device.
    let link = office
        .router
        .ip(&format!("-d link show {}", office.wg_iface))?;
    ensure!(
        String::from_utf8_lossy(&link.stdout).contains("wireguard"),
        "not a kernel WireGuard link: {link:?}"
    );
    ensure!(status(&daemon)?["wireguard_mode"] == "kernel");

    office.connect_clients()?;
    let mut wiki = wait_for(Duration::from_secs(30), || {
        Ok(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).ok())
    })?;
    // Allowed TCP, masqueraded to the routing peer's LAN address.
    assert_eq!(
        exchange(&mut wiki, "hello")?,
        format!("wiki saw {ROUTER_LAN}: hello")
    );
    // Allowed UDP.
    assert_eq!(
        udp_echo(&office.laptop, &format!("{WIKI}:7"))?,
        b"ping over kernel wireguard"
    );
    // Denied: a port no policy grants, and a peer whose group has no policy.
    assert!(office.laptop.tcp(&format!("{WIKI}:80"), QUICK).is_err());
    assert!(office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_err());

    // `status` shows the handshake, by age.
    let laptop = wait_for(Duration::from_secs(10), || {
        let s = status(&daemon)?;
        Ok(peer(&s, "laptop").filter(|p| p["up"] == true).cloned())
    })?;
    let age = laptop["handshake_age_secs"]
        .as_u64()
        .context("laptop has no handshake age")?;
    ensure!(age < 180, "handshake age {age} s");

    // A reload that adds a peer: the new one connects, the others' tunnels stay.
    let mut ops = Client::new(
        "ops",
        office.dir.path(),
        ("203.0.113.9", "203.0.113.10"),
        "100.64.0.4",
        &office.router,
        WgImpl::Kernel,
    )?;
    let rx_before = rx_bytes(&office, &office.laptop.public_key)?;
    office.write_config(&format!("{UDP_POLICY}{}", ops_peer(&ops.public_key)))?;
    daemon.reload();
    ops.connect(&office.router_public_key)?;
    let mut ops_wiki = wait_for(Duration::from_secs(30), || {
        Ok(ops.tcp(&format!("{WIKI}:443"), QUICK).ok())
    })?;
    assert_eq!(
        exchange(&mut ops_wiki, "new peer")?,
        format!("wiki saw {ROUTER_LAN}: new peer")
    );
    assert_eq!(
        exchange(&mut wiki, "still here")?,
        format!("wiki saw {ROUTER_LAN}: still here")
    );
    ensure!(
        rx_bytes(&office, &office.laptop.public_key)? > rx_before,
        "the laptop's tunnel was rebuilt by the reload"
    );

    // A reload that removes that peer: it is gone from the kernel, its
    // traffic stops, the laptop's tunnel and connection carry on.
    let rx_before = rx_bytes(&office, &office.laptop.public_key)?;
    office.write_config(UDP_POLICY)?;
    daemon.reload();
    wait_for(Duration::from_secs(10), || {
        Ok(kernel_peers(&office)?
            .iter()
            .all(|(k, _)| *k != ops.public_key)
            .then_some(()))
    })?;
    if ops.tcp(&format!("{WIKI}:443"), QUICK).is_ok() {
        bail!("a removed peer still reaches the LAN");
    }
    assert_eq!(
        exchange(&mut wiki, "after removal")?,
        format!("wiki saw {ROUTER_LAN}: after removal")
    );
    ensure!(
        rx_bytes(&office, &office.laptop.public_key)? > rx_before,
        "the laptop's tunnel was rebuilt by the reload"
    );
    Ok(())
}
