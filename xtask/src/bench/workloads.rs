//! What runs on the rig: the routing-peer configuration and the nftables
//! ruleset at a given size (one generator for both the forwarding bench and
//! goodput), and a reload under load.

use std::time::Instant;

use anyhow::Result;
use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};

use super::{median, min, rig::Bench, Mode};

impl Bench {
    /// A full reload of `rules` rules while 64-byte traffic flows: how long
    /// from SIGHUP to the new generation, and the slowest 50-ms window of
    /// forwarding around it against the median before.
    pub(super) fn reload_under_load(&self, rules: usize) -> Result<Value> {
        let path = self.work.path().join("rp-reload.toml");
        let config = bench_config(rules);
        std::fs::write(&path, &config)?;
        let daemon = self.start_daemon(&path, false)?;
        let generation = || -> Result<u64> {
            Ok(
                daemon.cli_json(&["status", "--json"])?["status"]["generation"]
                    .as_u64()
                    .unwrap_or(0),
            )
        };
        let mut gen = self
            .gen_command(4.0, 1, 64)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let started = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(800));
        let before = self.sink_windows(
            started + std::time::Duration::from_millis(1500),
            std::time::Duration::from_millis(50),
        )?;
        // One policy fewer: a real change, so every slot gets a diff.
        let changed = &config[..config.rfind("[[policies]]").unwrap_or(config.len())];
        std::fs::write(&path, changed)?;
        let first_gen = generation()?;
        // Watch for the new generation while the sink is sampled: the
        // reload time must not wait for the sampling.
        let instance = daemon.instance.clone();
        let watch = std::thread::spawn(move || -> Option<f64> {
            let started = Instant::now();
            let deadline = started + std::time::Duration::from_secs(10);
            while Instant::now() < deadline {
                let out = std::process::Command::new(routing_peer_testbed::routing_peer_bin())
                    .args(["--instance", &instance, "status", "--json"])
                    .output()
                    .ok()?;
                let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if doc["status"]["generation"].as_u64().unwrap_or(0) > first_gen {
                    return Some(started.elapsed().as_secs_f64() * 1e3);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            None
        });
        daemon.reload();
        let sampler_until = Instant::now() + std::time::Duration::from_millis(1800);
        let during = self.sink_windows(sampler_until, std::time::Duration::from_millis(50))?;
        let reload_ms = watch.join().unwrap_or(None);
        let _ = gen.wait();
        self.stop_daemon(daemon, false)?;
        let rates = |w: &[(f64, u64)]| -> Vec<f64> {
            w.windows(2)
                .map(|p| (p[1].1 - p[0].1) as f64 / (p[1].0 - p[0].0) / 1e6)
                .collect()
        };
        let before_rates = rates(&before);
        let during_rates = rates(&during);
        Ok(json!({
            "rules": rules,
            "reload_ms": reload_ms,
            "median_mpps_before": median(&before_rates),
            "min_window_mpps_during": min(&during_rates),
            "windows_mpps_during": during_rates,
        }))
    }
}

/// The configuration of a routing-peer mode: the L3 overlay is the TUN
/// (`ov1`), and only the XDP path lets XDP redirect into the LAN.
pub(super) fn daemon_config(mode: Mode, rules: usize) -> String {
    let mut config = bench_config(rules);
    if mode != Mode::RoutingPeerXdp {
        config = config.replace("xdp_redirect_interfaces = [\"lan0\"]", "");
    }
    if matches!(mode, Mode::RoutingPeerL3 | Mode::PerCpuLru) {
        config = config.replace("overlay_interface = \"ov0\"", "overlay_interface = \"ov1\"");
    }
    config
}

/// The benchmark's routing-peer configuration: `n` rules and resources.
pub(super) fn bench_config(n: usize) -> String {
    let mut text = String::from(
        r#"
[routing_peer]
name = "bench"
overlay_interface = "ov0"
overlay_addresses = ["100.64.0.1/10"]
private_key_file = "/dev/null"
lan_interfaces = ["lan0"]
wireguard = "external"
# The sink end runs XDP, so the overlay's XDP program may redirect into lan0.
xdp_redirect_interfaces = ["lan0"]

[[peers]]
name = "gen"
public_key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
addresses = ["100.64.0.2"]
groups = ["Bench"]

[[networks]]
name = "bench"
[[networks.resources]]
name = "sink"
address = "198.51.100.2/32"
groups = ["Sinks"]

[[policies]]
name = "bench-udp"
sources = ["Bench"]
destinations = ["Sinks"]
protocol = "udp"
port_ranges = [{ start = 10000, end = 10127 }]
"#,
    );
    // At the largest scale, the issue's target: 10k peers as well.
    let peers = if n >= 100_000 { 10_000 } else { 0 };
    for i in 1..=peers {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&(i as u32).to_le_bytes());
        key[31] = 1;
        text += &format!(
            "[[peers]]\nname = \"peer{i}\"\npublic_key = \"{}\"\naddresses = [\"100.{}.{}.{}\"]\ngroups = [\"Bench\"]\n",
            STANDARD.encode(key),
            64 + ((i + 16) >> 16),
            ((i + 16) >> 8) & 0xff,
            (i + 16) & 0xff
        );
    }
    for i in 1..n {
        text += &format!(
            "[[networks.resources]]\nname = \"r{i}\"\naddress = \"2001:db8:{:x}:{:x}::1/128\"\ngroups = [\"g{i}\"]\n",
            i >> 16,
            i & 0xffff
        );
    }
    for i in 1..n {
        text += &format!(
            "[[policies]]\nname = \"p{i}\"\nsources = [\"Bench\"]\ndestinations = [\"g{i}\"]\nprotocol = \"tcp\"\nports = [{}]\n",
            1 + i % 60000
        );
    }
    text
}

/// NetBird's Linux routing-peer data path as nftables, in table `table`:
/// established first, then `rules` (after `sets`), a drop for anything
/// else from `overlay`, and masquerade by mark for new overlay flows.
pub(super) fn nft_ruleset(table: &str, overlay: &str, sets: &str, rules: &[String]) -> String {
    format!(
        r#"table inet {table} {{
{sets}
  chain prerouting {{
    type filter hook prerouting priority -150; policy accept;
    iifname "{overlay}" ct state new meta mark set 0x1bd00
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
{}
    iifname "{overlay}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    meta mark 0x1bd00 masquerade
  }}
}}
"#,
        rules.join("\n")
    )
}

/// The forwarding bench's ruleset: one rule per policy of `bench_config(n)`,
/// the bench's own rule in the middle of the filler.
pub(super) fn bench_ruleset(n: usize, overlay: &str) -> String {
    let mut rules = Vec::new();
    for i in 1..n {
        rules.push(format!(
            "    ip6 daddr 2001:db8:{:x}:{:x}::1 tcp dport {} accept",
            i >> 16,
            i & 0xffff,
            1 + i % 60000
        ));
    }
    rules.insert(
        rules.len() / 2,
        "    ip saddr @peers ip daddr @resources udp dport 10000-10127 accept".into(),
    );
    let sets = "  set peers { type ipv4_addr; elements = { 100.64.0.2 } }\n  \
                set resources { type ipv4_addr; flags interval; elements = { 198.51.100.2/32 } }";
    nft_ruleset("rptbench", overlay, sets, &rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both rulesets are what nft accepts (checked, not applied, in a
    /// namespace of the test's own).
    #[test]
    #[ignore = "needs root and network namespaces: cargo xtask test runs it"]
    fn the_generated_rulesets_are_valid_nftables() {
        let ns = routing_peer_testbed::Netns::new("nftchk").expect("namespace");
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("bench", bench_ruleset(100, "ov1")),
            ("goodput", super::super::goodput::nft_ruleset("wg0")),
        ] {
            let path = dir.path().join(format!("{name}.nft"));
            std::fs::write(&path, &text).expect("write");
            let out = ns
                .cmd("nft")
                .args(["-c", "-f", &path.to_string_lossy()])
                .output()
                .expect("nft");
            assert!(
                out.status.success(),
                "{name}: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
