//! `cargo xtask demo`: the data path on a throwaway topology, end to end.
//!
//! overlay stand-in (veth) — routing peer — LAN, each in its own namespace.
//! Everything created is torn down by guards, on success, failure or Ctrl-C.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Result};
use routing_peer_e2e::{routing_peer_bin, send_udp, veth, Daemon, Netns, VethSpec};

use crate::{setup, util};

pub fn run() -> Result<()> {
    let started = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        // Ctrl-C stops the story at the next step; the guards then tear down.
        ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst))?;
    }
    setup::check_toolchain()?;
    util::cargo(&["build", "--locked", "-p", "routing-peer"])?;
    std::env::set_var(
        "ROUTING_PEER_BIN",
        util::workspace_root().join("target/debug/routing-peer"),
    );
    let result = story(&interrupted);
    println!();
    match &result {
        Ok(()) => println!(
            "demo: SUCCESS in {:.1} s; namespaces and pins removed",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("demo: FAILED: {e:#}"),
    }
    result
}

fn step(interrupted: &AtomicBool, what: &str) -> Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    println!("\n--- {what}");
    Ok(())
}

fn story(interrupted: &AtomicBool) -> Result<()> {
    step(
        interrupted,
        "creating namespaces: overlay, routing peer, LAN",
    )?;
    let overlay = Netns::new("demo-o")?;
    let router = Netns::new("demo-r")?;
    let lan = Netns::new("demo-l")?;
    veth(VethSpec {
        a: &router,
        a_if: "ov0",
        a_mac: "02:00:00:00:01:01",
        a_addr: "100.64.0.1/24",
        b: &overlay,
        b_if: "eth0",
        b_mac: "02:00:00:00:01:02",
        b_addr: "100.64.0.2/24",
    })?;
    veth(VethSpec {
        a: &router,
        a_if: "lan0",
        a_mac: "02:00:00:00:02:01",
        a_addr: "198.51.100.1/24",
        b: &lan,
        b_if: "eth0",
        b_mac: "02:00:00:00:02:02",
        b_addr: "198.51.100.5/24",
    })?;

    step(
        interrupted,
        "starting routing-peer (TC on ov0, XDP on lan0)",
    )?;
    let daemon = Daemon::start(&router, &["--overlay", "ov0", "--lan", "lan0"])?;

    step(interrupted, "sending 100 UDP datagrams from each side")?;
    send_udp(&overlay, "100.64.0.1:9", 100, 64)?;
    send_udp(&lan, "198.51.100.1:9", 100, 64)?;

    step(interrupted, "routing-peer stats")?;
    let status = Command::new(routing_peer_bin())
        .args(["--instance", &daemon.instance, "stats"])
        .status()?;
    if !status.success() {
        bail!("routing-peer stats failed");
    }
    Ok(())
}
