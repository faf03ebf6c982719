//! Where an established packet's time goes on the TC path of the L3
//! overlay: `perf record -e cpu-clock` on the generator's CPU while the
//! TUN writer sends one flow through the daemon, then the samples inside
//! the overlay program by leaf symbol (the program's own code, the FIB,
//! map lookups, checksum helpers …).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{rig::Bench, Mode, Scenario};
use crate::util::output;

impl Bench {
    pub(super) fn profile_l3(&self, rules: usize) -> Result<Value> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("perf.data");
        let path = self.work.path().join("rp-profile.toml");
        let config = super::workloads::daemon_config(Mode::RoutingPeerL3, rules);
        std::fs::write(&path, config)?;
        let daemon = self.start_daemon(&path, true)?;
        let sc = Scenario::forward(1, rules, 64);
        let result = (|| -> Result<String> {
            let mut gen = self.generators(Mode::RoutingPeerL3, &sc, 3.0);
            let gen = gen.pop().context("a generator")?;
            let mut perf = std::process::Command::new("perf");
            perf.args(["record", "-q", "-e", "cpu-clock", "-C", "1", "-g", "-o"])
                .arg(&data)
                .arg("--")
                .arg(gen.get_program())
                .args(gen.get_args())
                .stdout(std::process::Stdio::null());
            output(&mut perf).context("perf record (cargo xtask setup installs linux-perf)")?;
            output(
                std::process::Command::new("perf")
                    .args(["script", "-F", "ip,sym", "-i"])
                    .arg(&data),
            )
        })();
        self.stop_daemon(daemon, true)?;
        Ok(summarise(&result?))
    }
}

/// Samples by leaf symbol, all of them and those under the overlay program.
fn summarise(script: &str) -> Value {
    let mut total = 0u64;
    let mut in_program: BTreeMap<String, u64> = BTreeMap::new();
    for stack in script.split("\n\n") {
        let mut frames = stack.lines().filter_map(|l| l.split_whitespace().nth(1));
        let Some(leaf) = frames.next() else { continue };
        total += 1;
        if stack.contains("rp_overlay_l3") {
            // JIT names carry a tag: bpf_prog_<tag>_<name>.
            let name = match leaf.strip_prefix("bpf_prog_") {
                Some(rest) => format!("BPF {}", rest.split_once('_').map_or(rest, |(_, n)| n)),
                None => leaf.to_string(),
            };
            *in_program.entry(name).or_default() += 1;
        }
    }
    let program: u64 = in_program.values().sum();
    let mut top: Vec<(String, u64)> = in_program.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    json!({
        "samples": total,
        "program_percent_of_cpu": pct(program, total),
        "inside_program": top.iter().take(14).map(|(s, n)| json!({"symbol": s, "percent": pct(*n, program)})).collect::<Vec<_>>(),
    })
}
