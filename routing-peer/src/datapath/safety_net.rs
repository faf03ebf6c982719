//! The safety net: the kernel's own forward path to and from the overlay is
//! closed to anything our programs did not hand over on purpose.
//!
//! The programs forward by redirect, which bypasses netfilter; the only
//! packets they leave to the kernel to forward are translated IPv4 packets
//! it must fragment, and those carry `FORWARD_MARK`. So one table of our
//! own, in the daemon's namespace, drops and counts every other packet the
//! kernel would forward from or to the overlay interface: whatever a bug in
//! the programs passes by mistake goes nowhere. Local delivery (the input
//! chain) and the kernel's own ICMP errors (generated before the forward
//! hook) are untouched. `run` creates it, `down` removes it, `status`
//! shows its drop counter.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use routing_peer_common::FORWARD_MARK;

#[derive(Debug, thiserror::Error)]
pub enum SafetyNetError {
    #[error("nft could not be run ({0}): install nftables (cargo xtask setup does)")]
    NoNft(std::io::Error),
    #[error("nft refused the safety-net table {table}: {stderr}")]
    Refused { table: String, stderr: String },
}

/// The table's name: one per instance, ours alone.
pub fn table_name(instance: &str) -> String {
    let clean: String = instance
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("routing_peer_{clean}")
}

/// The ruleset for `overlay`, replacing any earlier version atomically
/// (the empty declaration makes the delete valid when there is none).
pub fn ruleset(instance: &str, overlay: &str) -> String {
    let table = table_name(instance);
    format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tmeta mark {FORWARD_MARK:#x} accept comment \"handed over by routing-peer\"\n\
         \t\tiifname \"{overlay}\" counter drop comment \"from the overlay, not ours\"\n\
         \t\toifname \"{overlay}\" counter drop comment \"to the overlay, not ours\"\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(input: &str, table: &str) -> Result<String, SafetyNetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(SafetyNetError::NoNft)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(SafetyNetError::NoNft)?;
    }
    let out = child.wait_with_output().map_err(SafetyNetError::NoNft)?;
    if !out.status.success() {
        return Err(SafetyNetError::Refused {
            table: table.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates (or replaces) the table for `overlay`.
pub fn install(instance: &str, overlay: &str) -> Result<(), SafetyNetError> {
    nft(&ruleset(instance, overlay), &table_name(instance)).map(|_| ())
}

/// Removes the table, if there is one.
pub fn remove(instance: &str) -> Result<(), SafetyNetError> {
    let table = table_name(instance);
    nft(
        &format!("table inet {table} {{}}\ndelete table inet {table}\n"),
        &table,
    )
    .map(|_| ())
}

/// Packets the table dropped, or `None` when it is not there.
pub fn dropped(instance: &str) -> Option<u64> {
    let table = table_name(instance);
    let out = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| count_dropped(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums the `counter packets N` of the listing's drop rules.
pub fn count_dropped(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(" drop"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "packets")?;
            words.next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ours_and_safe() {
        assert_eq!(table_name("office-1"), "routing_peer_office_1");
    }

    #[test]
    fn drop_counters_are_summed_from_the_listing() {
        let listing = "table inet routing_peer_x {\n\tchain forward {\n\
            \t\ttype filter hook forward priority filter - 10; policy accept;\n\
            \t\tmeta mark 0x52500001 accept comment \"handed over by routing-peer\"\n\
            \t\tiifname \"wg0\" counter packets 3 bytes 180 drop comment \"from the overlay, not ours\"\n\
            \t\toifname \"wg0\" counter packets 4 bytes 240 drop comment \"to the overlay, not ours\"\n\
            \t}\n}\n";
        assert_eq!(count_dropped(listing), 7);
    }

    /// Three namespaces, client — router — server, and the router's kernel
    /// forwarding with no program at all: exactly what a program passing a
    /// packet by mistake leaves behind. The net must stop it both ways,
    /// count it, and let marked packets through.
    #[test]
    #[ignore = "needs root and network namespaces: cargo xtask test runs it"]
    fn the_kernel_forwards_nothing_unmarked_to_or_from_the_overlay() {
        use routing_peer_testbed::Netns;
        let (router, client, server) = (
            Netns::new("snr").unwrap(),
            Netns::new("snc").unwrap(),
            Netns::new("sns").unwrap(),
        );
        router
            .sh(&format!(
                "ip link add ov0 type veth peer name ovp netns {c} && \
                 ip link add lan0 type veth peer name lanp netns {s} && \
                 ip addr add 100.64.0.1/10 dev ov0 && ip addr add 198.51.100.1/24 dev lan0 && \
                 ip link set ov0 up && ip link set lan0 up && sysctl -qw net.ipv4.ip_forward=1",
                c = client.name,
                s = server.name
            ))
            .unwrap();
        client
            .sh("ip addr add 100.64.0.2/10 dev ovp && ip link set ovp up && ip route add default via 100.64.0.1")
            .unwrap();
        server
            .sh("ip addr add 198.51.100.5/24 dev lanp && ip link set lanp up && ip route add 100.64.0.0/10 via 198.51.100.1")
            .unwrap();
        let ping = |from: &Netns, to: &str| from.sh(&format!("ping -c1 -W1 {to}")).is_ok();
        assert!(
            ping(&client, "198.51.100.5"),
            "the kernel forwards without the net"
        );
        let instance = format!("test{}", std::process::id());
        let i = instance.clone();
        router.enter(move || install(&i, "ov0")).unwrap().unwrap();
        assert!(!ping(&client, "198.51.100.5"), "overlay → LAN stopped");
        assert!(!ping(&server, "100.64.0.2"), "LAN → overlay stopped");
        let i = instance.clone();
        let dropped_now = router.enter(move || dropped(&i)).unwrap();
        assert!(dropped_now.unwrap_or(0) >= 2, "{dropped_now:?}");
        // What the programs hand over on purpose carries the mark. Marked
        // here by a table of the test's own, in the router's namespace.
        router
            .sh(&format!(
                "nft add table ip mark_test && \
                 nft 'add chain ip mark_test pre {{ type filter hook prerouting priority -300; }}' && \
                 nft add rule ip mark_test pre meta mark set {FORWARD_MARK:#x}"
            ))
            .unwrap();
        assert!(ping(&client, "198.51.100.5"), "marked packets pass");
        let i = instance.clone();
        router.enter(move || remove(&i)).unwrap().unwrap();
        let i = instance.clone();
        assert_eq!(router.enter(move || dropped(&i)).unwrap(), None);
    }
}
