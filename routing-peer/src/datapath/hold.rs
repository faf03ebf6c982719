//! The hold: where a later fragment that arrived before its datagram's
//! first fragment waits. It is a veth pair of the daemon's own: the data
//! path redirects the fragment out of one end (`rph-…`), it comes back in
//! at the other (`rpq-…`, whose MAC is `HOLD_MAC`), where `rp_hold`
//! decides it again, for a bounded number of passes. With `sch_netem`, the
//! sending end delays each pass by a millisecond; without it (kernels
//! built without netem), a pass is a plain requeue of a few microseconds,
//! and the fragment gets more of them.

use std::process::Command;

use routing_peer_common::HOLD_MAC;
use tracing::{info, warn};

use super::{ifindex, DatapathError, Result};

/// Passes around a delayed hold: up to 16 ms.
pub const PASSES_DELAYED: u32 = 16;
/// Passes around a hold without a delay.
pub const PASSES_REQUEUE: u32 = 64;
/// The delay of each pass, where netem exists.
pub const DELAY: &str = "1ms";

/// The hold, as the data path is told about it.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    pub ifindex: u32,
    pub passes: u32,
    pub delayed: bool,
}

/// The sending and receiving ends' names for `instance`.
pub fn names(instance: &str) -> (String, String) {
    // FNV-1a: stable across builds, short enough for IFNAMSIZ.
    let hash = instance.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (format!("rph-{hash:08x}"), format!("rpq-{hash:08x}"))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(DatapathError::Interface {
            iface: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Creates the pair (or adopts it after a restart), up, without IPv6 (no
/// neighbour discovery of its own), delayed where netem exists.
pub fn ensure(instance: &str) -> Result<Hold> {
    let (send, recv) = names(instance);
    if ifindex(&send).is_err() {
        ip(&["link", "add", &send, "type", "veth", "peer", "name", &recv])?;
    }
    let mac = HOLD_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ip(&["link", "set", &recv, "address", &mac])?;
    for dev in [&send, &recv] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
        ip(&["link", "set", dev, "up"])?;
    }
    let delayed = Command::new("tc")
        .args([
            "qdisc", "replace", "dev", &send, "root", "netem", "delay", DELAY,
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let passes = if delayed {
        PASSES_DELAYED
    } else {
        warn!(
            hold = %send,
            "no netem qdisc in this kernel: held fragments requeue without a delay"
        );
        PASSES_REQUEUE
    };
    let hold = Hold {
        ifindex: ifindex(&send)?,
        passes,
        delayed,
    };
    info!(send = %send, receive = %recv, passes, delayed, "fragment hold ready");
    Ok(hold)
}

/// Removes the pair (both ends go together); gone already is fine.
pub fn remove(instance: &str) -> Result<()> {
    let (send, _) = names(instance);
    if ifindex(&send).is_ok() {
        ip(&["link", "del", &send])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_and_differ_by_instance() {
        let (a, b) = names("default");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(names("default").0, names("office").0);
        assert_eq!(names("default"), (a, b));
    }
}
