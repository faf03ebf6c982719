//! `cargo xtask bench [--quick]`: the data path against the Linux path
//! NetBird's routing peer uses (nftables + conntrack + masquerade), side by
//! side in one run, on veth pairs in namespaces:
//!
//!   generator (BPF_PROG_TEST_RUN live frames) → device under test → sink (XDP counter)
//!
//! Modes are interleaved (A B C D A B C D …) so drift hits all alike; we
//! report medians with min and max, and the ratio to nftables per scenario.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;
use routing_peer_testbed::Netns;
use serde_json::{json, Value};

mod goodput;
mod report;
mod rig;
mod workloads;

use rig::Bench;

use crate::util::{self, output, step};

/// More distinct flows than one sample sends packets: every packet opens a
/// new flow (conntrack entry, masquerade mapping), so Mpps is the new-flow rate.
const NEW_FLOWS: u32 = 5_000_000;
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    RoutingPeer,
    /// The same daemon without `xdp_redirect_interfaces`: the overlay's TC
    /// program does the work, as on a WireGuard (L3) overlay.
    RoutingPeerTc,
    Nftables,
    KernelForward,
    XdpRedirect,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::RoutingPeer,
        Mode::RoutingPeerTc,
        Mode::Nftables,
        Mode::KernelForward,
        Mode::XdpRedirect,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::RoutingPeer => "routing-peer (eBPF), XDP path",
            Mode::RoutingPeerTc => "routing-peer (eBPF), TC path",
            Mode::Nftables => "nftables + conntrack + masquerade",
            Mode::KernelForward => "kernel forwarding, no rules",
            Mode::XdpRedirect => "XDP redirect, stateless",
        }
    }
}

/// The size of a scenario whose frames are the three IPv4 fragments of a
/// 4008-byte UDP datagram.
const FRAGMENTED: usize = 4008;

#[derive(Clone, Copy, Debug)]
struct Scenario {
    flows: u32,
    rules: usize,
    size: usize,
}

pub fn run(quick: bool) -> Result<()> {
    crate::setup::check_toolchain()?;
    util::cargo(&[
        "build",
        "--locked",
        "--release",
        "-p",
        "routing-peer",
        "--features",
        "bench",
    ])?;
    let started = Instant::now();
    let bin_dir = util::workspace_root().join("target/release");
    std::env::set_var("ROUTING_PEER_BIN", bin_dir.join("routing-peer"));

    step("per-packet cost (BPF_PROG_TEST_RUN, repeat)");
    let rule_counts: &[usize] = if quick {
        &[10, 100_000]
    } else {
        &[10, 1_000, 100_000]
    };
    let mut costs = Vec::new();
    for &rules in rule_counts {
        let ns = Netns::new("cost")?;
        ns.sh("sysctl -qw net.ipv4.conf.all.forwarding=1 && \
               ip link add lan0 type veth peer name lan0p && ip link set lan0 up && ip link set lan0p up && \
               ip addr add 198.51.100.1/24 dev lan0 && \
               ip link add ov0 type veth peer name ov0p && ip link set ov0 up && ip link set ov0p up && \
               ip addr add 100.64.0.1/10 dev ov0")?;
        let work = tempfile::tempdir()?;
        let config = work.path().join("rp.toml");
        std::fs::write(&config, workloads::bench_config(rules))?;
        let out = output(ns.cmd(&bin_dir.join("rp-bench").to_string_lossy()).args([
            "cost",
            "--config",
            &*config.to_string_lossy(),
        ]))?;
        let v: Value = serde_json::from_str(out.trim())?;
        eprintln!("  {rules:>6} rules: {v}");
        costs.push(v);
    }

    step("throughput: generator → device under test → sink, modes interleaved");
    let bench = Bench::new(bin_dir, if quick { 1.3 } else { 3.0 })?;
    let repeats = 5;
    let scenarios: Vec<Scenario> = if quick {
        vec![
            Scenario {
                flows: 1,
                rules: 1000,
                size: 64,
            },
            Scenario {
                flows: 1000,
                rules: 1000,
                size: 64,
            },
            Scenario {
                flows: 1,
                rules: 1000,
                size: 1400,
            },
            Scenario {
                flows: NEW_FLOWS,
                rules: 1000,
                size: 64,
            },
            Scenario {
                flows: 1,
                rules: 1000,
                size: FRAGMENTED,
            },
        ]
    } else {
        let mut v = Vec::new();
        for flows in [1, 1000, 100_000] {
            v.push(Scenario {
                flows,
                rules: 1000,
                size: 64,
            });
        }
        for rules in [10, 100_000] {
            v.push(Scenario {
                flows: 1,
                rules,
                size: 64,
            });
        }
        v.push(Scenario {
            flows: 1,
            rules: 1000,
            size: 1400,
        });
        v.push(Scenario {
            flows: NEW_FLOWS,
            rules: 1000,
            size: 64,
        });
        v.push(Scenario {
            flows: 1,
            rules: 1000,
            size: FRAGMENTED,
        });
        v
    };
    let mut results: Vec<Value> = Vec::new();
    for sc in &scenarios {
        let mut samples: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
        for rep in 0..repeats {
            for mode in Mode::ALL {
                let mpps = bench.measure(mode, sc)?;
                eprintln!(
                    "  {:>6} flows {:>6} rules {:>4} B  rep {rep}  {:<36} {mpps:.3} Mpps",
                    sc.flows,
                    sc.rules,
                    sc.size,
                    mode.name()
                );
                samples.entry(mode).or_default().push(mpps);
            }
        }
        let nft = median(&samples[&Mode::Nftables]);
        let xdp = median(&samples[&Mode::XdpRedirect]);
        for (mode, s) in &samples {
            let m = median(s);
            results.push(json!({
                "flows": sc.flows, "rules": sc.rules, "size": sc.size, "mode": mode.name(),
                "median_mpps": m, "min_mpps": min(s), "max_mpps": max(s), "samples": s,
                "ratio_to_nftables": m / nft, "ratio_to_xdp_redirect": m / xdp,
            }));
        }
    }
    step("a 100k-rule reload while traffic flows");
    let reload = bench.reload_under_load(100_000)?;
    eprintln!("  {reload}");
    step("goodput: iperf3 through userspace WireGuard, routing-peer vs nftables, interleaved");
    let goodput = goodput::measure(if quick { 3 } else { 5 }, if quick { 2 } else { 5 })?;
    eprintln!("  {goodput}");
    bench.report(
        &costs,
        &results,
        &goodput,
        &reload,
        quick,
        started.elapsed().as_secs_f64(),
    )
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}
fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
