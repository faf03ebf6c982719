//! Where a packet's time goes on the TC path of the L3 overlay:
//! `perf record -e cpu-clock` on the generators' CPUs while the TUN writer
//! or the LAN's reply generator sends a scenario's flows through the
//! daemon, then the samples by process and, inside the overlay (or LAN)
//! program, by leaf symbol (the program's
//! own code, the FIB, map lookups, checksum helpers …).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{rig::Bench, Direction, Mode, Scenario};
use crate::util::output;

impl Bench {
    /// The profile of `sc` (L3, one direction) with the daemon at its rules:
    /// the samples under the overlay program (forward) or the LAN's (replies).
    pub(super) fn profile_l3(&self, sc: &Scenario) -> Result<Value> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("perf.data");
        let path = self.work.path().join("rp-profile.toml");
        let config = super::workloads::daemon_config(Mode::RoutingPeerL3, sc.rules);
        std::fs::write(&path, config)?;
        let daemon = self.start_daemon(&path, true)?;
        // The generators' CPUs (see `generators`): 1, then 0.
        let cpus = if sc.cpus > 1 { "0,1" } else { "1" };
        let result = (|| -> Result<String> {
            self.open_reply_flows(Mode::RoutingPeerL3, sc)?;
            let mut gen = self.generators(Mode::RoutingPeerL3, sc, 3.0);
            let gen = gen.pop().context("a generator")?;
            let mut perf = std::process::Command::new("perf");
            perf.args(["record", "-q", "-e", "cpu-clock", "-C", cpus, "-g", "-o"])
                .arg(&data)
                .arg("--")
                .arg(gen.get_program())
                .args(gen.get_args())
                .stdout(std::process::Stdio::null());
            output(&mut perf).context("perf record (cargo xtask setup installs linux-perf)")?;
            output(
                std::process::Command::new("perf")
                    .args(["script", "-F", "comm,ip,sym", "-i"])
                    .arg(&data),
            )
        })();
        self.stop_daemon(daemon, true)?;
        let program = match sc.direction {
            Direction::Reply => "rp_lan_tc",
            _ => "rp_overlay_l3",
        };
        let mut v = summarise(&result?, program);
        v["scenario"] = sc.label().into();
        Ok(v)
    }
}

/// Samples by process, by leaf symbol, and those under the overlay
/// program by leaf symbol.
fn summarise(script: &str, program_name: &str) -> Value {
    let mut total = 0u64;
    let mut in_program: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_comm: BTreeMap<String, u64> = BTreeMap::new();
    let mut leaves: BTreeMap<String, u64> = BTreeMap::new();
    for stack in script.split("\n\n") {
        let mut lines = stack.lines().filter(|l| !l.trim().is_empty());
        // The process on the first line, then `ip sym` frames, leaf first.
        let Some(comm) = lines.next().map(str::trim) else {
            continue;
        };
        let Some(leaf) = lines.next().and_then(|l| l.split_whitespace().nth(1)) else {
            continue;
        };
        total += 1;
        *by_comm.entry(comm.to_string()).or_default() += 1;
        *leaves.entry(leaf.to_string()).or_default() += 1;
        if stack.contains(program_name) {
            // JIT names carry a tag: bpf_prog_<tag>_<name>.
            let name = match leaf.strip_prefix("bpf_prog_") {
                Some(rest) => format!("BPF {}", rest.split_once('_').map_or(rest, |(_, n)| n)),
                None => leaf.to_string(),
            };
            *in_program.entry(name).or_default() += 1;
        }
    }
    let program: u64 = in_program.values().sum();
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    let top = |m: BTreeMap<String, u64>, n: usize, of: u64| -> Vec<Value> {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.1));
        v.into_iter()
            .take(n)
            .map(|(s, c)| json!({"symbol": s, "percent": pct(c, of)}))
            .collect()
    };
    json!({
        "samples": total,
        "program_percent_of_cpu": pct(program, total),
        "inside_program": top(in_program, 14, program),
        "by_process": top(by_comm, 6, total),
        "top_symbols": top(leaves, 12, total),
    })
}
