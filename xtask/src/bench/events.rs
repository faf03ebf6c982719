//! What events cost: a flood of denied packets (a drop rule matching the
//! generator's flows) on the L3 TC path, with and without an `observe`
//! client attached, interleaved. The rate is the drop counter's.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{median, rig::Bench, workloads, Mode, Scenario};

/// Denies everything the generator sends: drop wins over the grant.
const DENY_ALL: &str = "\n[[policies]]\nname = \"bench-deny\"\nsources = [\"Bench\"]\ndestinations = [\"Sinks\"]\naction = \"drop\"\n";

impl Bench {
    /// Mpps dropped as `policy-drop` while the generator runs.
    fn denied_once(&self, sc: &Scenario, observe: bool) -> Result<f64> {
        let path = self.work.path().join("rp.toml");
        std::fs::write(
            &path,
            workloads::daemon_config(Mode::RoutingPeerL3, sc.rules) + DENY_ALL,
        )?;
        let daemon = self.start_daemon(&path, true)?;
        let mut client = if observe {
            Some(
                Command::new(self.bin_dir.join("routing-peer"))
                    .args(["--instance", &daemon.instance, "observe", "--json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            )
        } else {
            None
        };
        let dropped = || -> Result<u64> {
            let stats = daemon.stats_json()?;
            stats["drops"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["name"] == "policy-drop"))
                .and_then(|d| d["packets"].as_u64())
                .context("no policy-drop counter")
        };
        let result = (|| {
            let before = dropped()?;
            let secs = self.generate(Mode::RoutingPeerL3, sc)?;
            Ok::<_, anyhow::Error>((dropped()? - before) as f64 / secs / 1e6)
        })();
        if let Some(c) = client.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop_daemon(daemon, true)?;
        result
    }

    /// Both variants `repeats` times, alternating; medians and the ratio.
    pub(super) fn event_cost(&self, sc: &Scenario, repeats: usize) -> Result<Value> {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for rep in 0..repeats {
            without.push(self.denied_once(sc, false)?);
            with.push(self.denied_once(sc, true)?);
            eprintln!(
                "  denied flood, {} flows  rep {rep}  without observe {:.3} Mpps, with {:.3} Mpps",
                sc.flows, without[rep], with[rep]
            );
        }
        let (a, b) = (median(&without), median(&with));
        Ok(json!({
            "flows": sc.flows, "rules": sc.rules, "size": sc.size,
            "without_observe_mpps": a, "with_observe_mpps": b,
            "samples_without": without, "samples_with": with,
            "cost": 1.0 - b / a, "target_met": b >= 0.9 * a,
        }))
    }
}
