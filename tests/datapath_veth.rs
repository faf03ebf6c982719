//! The data path attached to real veths in namespaces: real packets in,
//! counters read back through the CLI from the pinned maps.

use std::{net::UdpSocket, time::Duration};

use anyhow::Result;
use etherparse::PacketBuilder;
use routing_peer_testbed::{send_raw_frame, send_udp, veth, wait_for, Daemon, Netns, VethSpec};
use serde_json::Value;
use tempfile::tempdir;

const R_OV_MAC: &str = "02:00:00:00:01:01";
const O_MAC: &str = "02:00:00:00:01:02";
const R_LAN_MAC: &str = "02:00:00:00:02:01";
const L_MAC: &str = "02:00:00:00:02:02";

/// overlay stand-in (nsO) — routing peer (nsR) — LAN (nsL)
struct Topology {
    overlay: Netns,
    router: Netns,
    lan: Netns,
}

/// A configuration for the veth topology: the overlay stand-in is managed
/// outside the daemon (`wireguard = "external"`).
pub fn write_config(dir: &std::path::Path, extra: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("rp.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[routing_peer]
name = "veth-gw"
overlay_interface = "ov0"
overlay_addresses = ["100.64.0.1/24"]
private_key_file = "/dev/null"
lan_interfaces = ["lan0"]
wireguard = "external"

[[peers]]
name = "overlay-host"
public_key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
addresses = ["100.64.0.2"]
groups = ["Development"]
{extra}
"#
        ),
    )?;
    Ok(path)
}

fn topology() -> Result<Topology> {
    let t = Topology {
        overlay: Netns::new("o")?,
        router: Netns::new("r")?,
        lan: Netns::new("l")?,
    };
    veth(VethSpec {
        a: &t.router,
        a_if: "ov0",
        a_mac: R_OV_MAC,
        a_addr: "100.64.0.1/24",
        b: &t.overlay,
        b_if: "eth0",
        b_mac: O_MAC,
        b_addr: "100.64.0.2/24",
    })?;
    veth(VethSpec {
        a: &t.router,
        a_if: "lan0",
        a_mac: R_LAN_MAC,
        a_addr: "198.51.100.1/24",
        b: &t.lan,
        b_if: "eth0",
        b_mac: L_MAC,
        b_addr: "198.51.100.5/24",
    })?;
    Ok(t)
}

fn counter(stats: &Value, section: &str, name: &str) -> (u64, u64) {
    let entry = stats[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {section} counter {name} in {stats}"));
    (
        entry["packets"].as_u64().unwrap(),
        entry["bytes"].as_u64().unwrap(),
    )
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn counts_real_packets_on_both_hooks_and_drops_malformed() -> Result<()> {
    let t = topology()?;
    let dir = tempdir()?;
    let daemon = Daemon::start(&t.router, &write_config(dir.path(), "")?, &[])?;

    // A listener on the router proves XDP passes valid packets to the stack.
    let receiver = t
        .router
        .enter(|| UdpSocket::bind("198.51.100.1:9000").unwrap())?;
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;

    const COUNT: u64 = 10;
    const PAYLOAD: usize = 100;
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
    send_udp(&t.overlay, "100.64.0.1:9000", COUNT as usize, PAYLOAD)?;
    send_udp(&t.lan, "198.51.100.1:9000", COUNT as usize, PAYLOAD)?;
    let mut buf = [0u8; 2048];
    for _ in 0..COUNT {
        assert_eq!(receiver.recv(&mut buf)?, PAYLOAD);
    }

    // A frame with IHL 4 from the LAN: dropped before the stack sees it.
    let mut bad = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 2], [2, 0, 0, 0, 2, 1])
        .ipv4([198, 51, 100, 5], [198, 51, 100, 1], 64)
        .udp(1234, 9000)
        .write(&mut bad, &[0u8; 18])?;
    bad[14] = 0x44;
    let bad_len = bad.len() as u64;
    send_raw_frame(&t.lan, "eth0", bad)?;

    let stats = wait_for(Duration::from_secs(5), || {
        let stats = daemon.stats_json()?;
        let done = counter(&stats, "hooks", "lan-ingress").0 == COUNT + 1
            && counter(&stats, "hooks", "overlay-ingress").0 == COUNT;
        Ok(done.then_some(stats))
    })?;
    assert_eq!(
        counter(&stats, "hooks", "overlay-ingress"),
        (COUNT, COUNT * FRAME)
    );
    assert_eq!(
        counter(&stats, "hooks", "lan-ingress"),
        (COUNT + 1, COUNT * FRAME + bad_len)
    );
    assert_eq!(counter(&stats, "drops", "malformed"), (1, bad_len));
    assert_eq!(counter(&stats, "drops", "fragment"), (0, 0));
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn down_detaches_and_removes_pins() -> Result<()> {
    let t = topology()?;
    let dir = tempdir()?;
    let daemon = Daemon::start(&t.router, &write_config(dir.path(), "")?, &[])?;
    let pins = format!("/sys/fs/bpf/routing-peer/{}", daemon.instance);
    assert!(std::path::Path::new(&pins).exists());
    daemon.cli(&["down"])?;
    assert!(!std::path::Path::new(&pins).exists());
    let xdp = t.router.ip("link show lan0")?;
    assert!(
        !String::from_utf8_lossy(&xdp.stdout).contains("xdp"),
        "XDP still attached after down"
    );
    Ok(())
}
