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

mod events;
mod goodput;
mod profile;
mod report;
mod rig;
mod workloads;

use rig::Bench;

use crate::util::{self, output, step};

/// More distinct flows than one sample sends packets (20000 client ports ×
/// 128 service ports): every packet opens a new flow (conntrack entry,
/// masquerade mapping), so Mpps is the new-flow rate. On two CPUs each
/// generator takes half (`NEW_FLOWS / 2`), so that no flow is sent twice.
const NEW_FLOWS: u32 = 2_560_000;

/// Whether a generator sending `flows` flows opens a new one with every
/// packet (one of `NEW_FLOWS`, or of its half on two CPUs).
fn every_packet_new(flows: u64) -> bool {
    flows >= u64::from(NEW_FLOWS / 2)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// The deployment: an L3 overlay (as `wg0`), the TC programs.
    RoutingPeerL3,
    /// The same with per-CPU LRU lists for conntrack and NAT
    /// (`BPF_F_NO_COMMON_LRU`), in the new-flow scenarios only.
    PerCpuLru,
    Nftables,
    KernelForward,
    /// A stateless TC program at the TUN's ingress (and the LAN's, for
    /// replies): FIB lookup and redirect, nothing else. The ceiling of any
    /// TC program on this rig.
    TcRedirect,
    /// The XDP fast path on an L2 (veth) overlay with XDP redirect.
    RoutingPeerXdp,
    /// The same daemon on the L2 overlay without XDP redirect.
    RoutingPeerL2Tc,
    XdpRedirect,
}

impl Mode {
    const ALL: [Mode; 8] = [
        Mode::RoutingPeerL3,
        Mode::PerCpuLru,
        Mode::Nftables,
        Mode::KernelForward,
        Mode::TcRedirect,
        Mode::RoutingPeerXdp,
        Mode::RoutingPeerL2Tc,
        Mode::XdpRedirect,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::RoutingPeerL3 => "routing-peer, TC path, L3 overlay",
            Mode::PerCpuLru => "routing-peer, TC path, L3 overlay, per-CPU LRU lists",
            Mode::Nftables => "nftables + conntrack + masquerade, L3 overlay",
            Mode::KernelForward => "kernel forwarding, no rules, L3 overlay",
            Mode::TcRedirect => "TC redirect bound, stateless, L3 overlay",
            Mode::RoutingPeerXdp => "routing-peer, XDP path, L2 overlay",
            Mode::RoutingPeerL2Tc => "routing-peer, TC path, L2 overlay",
            Mode::XdpRedirect => "XDP redirect bound, stateless, L2",
        }
    }
    /// The overlay is the TUN device (an L3 device, as WireGuard's).
    fn l3(self) -> bool {
        matches!(
            self,
            Mode::RoutingPeerL3
                | Mode::PerCpuLru
                | Mode::Nftables
                | Mode::KernelForward
                | Mode::TcRedirect
        )
    }
    fn routing_peer(self) -> bool {
        matches!(
            self,
            Mode::RoutingPeerL3 | Mode::PerCpuLru | Mode::RoutingPeerXdp | Mode::RoutingPeerL2Tc
        )
    }
}

/// The size of a scenario whose frames are the three IPv4 fragments of a
/// 4008-byte UDP datagram.
const FRAGMENTED: usize = 4008;

/// Which way the traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Overlay → LAN: the peer's requests.
    Forward,
    /// LAN → overlay: the answers to flows the forward direction opened
    /// (reverse NAT, redirect into the L3 device).
    Reply,
    /// Both at once, on one CPU.
    Both,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    flows: u32,
    rules: usize,
    size: usize,
    direction: Direction,
    /// Generators, one per CPU, each sending `flows` flows of its own.
    cpus: u32,
}

impl Scenario {
    pub(super) const fn forward(flows: u32, rules: usize, size: usize) -> Self {
        Self {
            flows,
            rules,
            size,
            direction: Direction::Forward,
            cpus: 1,
        }
    }
    /// `1000 flows, 1000 rules, 64 B, reply, 2 CPUs`.
    fn label(&self) -> String {
        format!(
            "{} flows, {} rules, {} B, {}, {} CPU{}",
            self.flows,
            self.rules,
            self.size,
            format!("{:?}", self.direction).to_lowercase(),
            self.cpus,
            if self.cpus > 1 { "s" } else { "" }
        )
    }
    /// The modes a scenario runs: the L2 rows only in the forward
    /// direction on one CPU (they exist to compare the XDP path), the
    /// per-CPU LRU lists only where flows are created.
    fn modes(&self) -> Vec<Mode> {
        let new_flows = every_packet_new(self.flows.into());
        Mode::ALL
            .into_iter()
            .filter(|m| {
                if *m == Mode::PerCpuLru {
                    return new_flows;
                }
                m.l3()
                    || (self.direction == Direction::Forward && self.cpus == 1)
                    || (*m == Mode::XdpRedirect && self.direction == Direction::Forward)
            })
            .collect()
    }
}

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
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

    if let Some(only) = only {
        return run_only(&bin_dir, quick, only);
    }
    step("per-packet cost (BPF_PROG_TEST_RUN, single runs)");
    let rule_counts: &[usize] = if quick {
        &[10, 100_000]
    } else {
        &[10, 1_000, 100_000]
    };
    let costs = per_packet_costs(&bin_dir, rule_counts)?;

    step("throughput: generator → device under test → sink, modes interleaved");
    let bench = Bench::new(bin_dir, if quick { 1.3 } else { 3.0 })?;
    let repeats = 5;
    let scenarios = scenarios(quick);
    let results = throughput(&bench, &scenarios, repeats)?;
    step("events: a denied flood with and without an observe client, interleaved");
    let events = [1, 1000]
        .into_iter()
        .map(|flows| bench.event_cost(&Scenario::forward(flows, 1000, 64), repeats))
        .collect::<Result<Vec<_>>>()?;
    step("profiles of the TC path, L3 overlay (perf, cpu-clock): established, replies, new flows on one and two CPUs");
    let profiles = profiled()
        .iter()
        .map(|sc| bench.profile_l3(sc))
        .collect::<Result<Vec<_>>>()?;
    step("a 100k-rule reload while traffic flows");
    let reload = bench.reload_under_load(100_000)?;
    eprintln!("  {reload}");
    step("goodput: iperf3 through userspace WireGuard, routing-peer vs nftables, interleaved");
    let goodput = goodput::measure(if quick { 3 } else { 5 }, if quick { 2 } else { 5 })?;
    eprintln!("  {goodput}");
    let measured = report::Measured {
        costs,
        results,
        goodput,
        reload,
        profiles,
        events,
    };
    bench.report(&measured, quick, started.elapsed().as_secs_f64())
}

/// Runs every mode of every scenario `repeats` times, interleaved; one
/// result per scenario and mode, with the ratios of the same run.
fn throughput(bench: &Bench, scenarios: &[Scenario], repeats: usize) -> Result<Vec<Value>> {
    let mut results: Vec<Value> = Vec::new();
    let mut bound: BTreeMap<u32, f64> = BTreeMap::new();
    for sc in scenarios {
        let mut samples: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
        for rep in 0..repeats {
            for mode in sc.modes() {
                let mpps = bench.measure(mode, sc)?;
                eprintln!(
                    "  {:<44} rep {rep}  {:<46} {mpps:.3} Mpps",
                    sc.label(),
                    mode.name()
                );
                samples.entry(mode).or_default().push(mpps);
            }
        }
        let nft = median(&samples[&Mode::Nftables]);
        let kernel = median(&samples[&Mode::KernelForward]);
        let tc_bound = median(&samples[&Mode::TcRedirect]);
        // Replies have no stateless bound of their own (XDP cannot redirect
        // into an L3 device): they are held against the forward one.
        if let Some(s) = samples.get(&Mode::XdpRedirect) {
            bound.insert(sc.cpus, median(s));
        }
        let xdp = bound.get(&sc.cpus).copied().unwrap_or(f64::NAN);
        for (mode, s) in &samples {
            let m = median(s);
            results.push(json!({
                "flows": sc.flows, "rules": sc.rules, "size": sc.size, "mode": mode.name(),
                "direction": format!("{:?}", sc.direction).to_lowercase(), "cpus": sc.cpus,
                "median_mpps": m, "min_mpps": min(s), "max_mpps": max(s), "samples": s,
                "ratio_to_nftables": m / nft, "ratio_to_kernel": m / kernel,
                "ratio_to_xdp_redirect": m / xdp, "ratio_to_tc_bound": m / tc_bound,
            }));
        }
    }
    Ok(results)
}

/// The overlay program's per-packet cost at each rule count (`rp-bench cost`).
/// Rule counts alternate over `COST_ROUNDS` rounds and each figure is the
/// median of its rounds: single test runs on this VM vary by ±30% from one
/// process to the next, more than the ±10% the flatness target allows.
fn per_packet_costs(bin_dir: &std::path::Path, rule_counts: &[usize]) -> Result<Vec<Value>> {
    const COST_ROUNDS: usize = 5;
    let mut rounds: Vec<Vec<Value>> = vec![Vec::new(); rule_counts.len()];
    for round in 0..COST_ROUNDS {
        for (i, &rules) in rule_counts.iter().enumerate() {
            let v = cost_once(bin_dir, rules)?;
            eprintln!("  round {round}, {rules:>6} rules: {v}");
            rounds[i].push(v);
        }
    }
    Ok(rounds
        .into_iter()
        .map(|runs| {
            let mut doc = runs.last().cloned().unwrap_or_default();
            for k in [
                "established_ns",
                "denied_ns",
                "new_flow_ns",
                "later_fragment_ns",
            ] {
                let v: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
                if !v.is_empty() {
                    doc[k] = json!(median(&v));
                    doc[format!("{k}_rounds")] = json!(v);
                }
            }
            doc
        })
        .collect())
}

fn cost_once(bin_dir: &std::path::Path, rules: usize) -> Result<Value> {
    let ns = Netns::new("cost")?;
    ns.sh("sysctl -qw net.ipv4.conf.all.forwarding=1 && \
           ip link add lan0 type veth peer name lan0p && ip link set lan0 up && ip link set lan0p up && \
           ip addr add 198.51.100.1/24 dev lan0 && \
           ip link add ov0 type veth peer name ov0p && ip link set ov0 up && ip link set ov0p up && \
           ip addr add 100.64.0.1/10 dev ov0")?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("rp.toml");
    std::fs::write(&config, workloads::bench_config(rules))?;
    // On one CPU, the generator's: unpinned runs came out in two modes
    // 30% apart, as the scheduler placed them.
    let out = output(
        std::process::Command::new("taskset")
            .args(["-c", "1", "nsenter"])
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(bin_dir.join("rp-bench"))
            .args(["cost", "--config", &*config.to_string_lossy()]),
    )?;
    Ok(serde_json::from_str(out.trim())?)
}

/// `--only`: the matching scenarios, three repeats, printed (`profile`:
/// the TC-path profiles; `cost`: the per-packet cost).
fn run_only(bin_dir: &std::path::Path, quick: bool, only: &str) -> Result<()> {
    if only == "cost" {
        for c in per_packet_costs(bin_dir, &[10, 100_000])? {
            println!("{c}");
        }
        return Ok(());
    }
    let bench = Bench::new(bin_dir.to_path_buf(), 1.3)?;
    if only == "profile" {
        for sc in profiled() {
            println!("{}", bench.profile_l3(&sc)?);
        }
        return Ok(());
    }
    if only == "events" {
        for flows in [1, 1000] {
            let r = bench.event_cost(&Scenario::forward(flows, 1000, 64), 3)?;
            println!("{r}");
        }
        return Ok(());
    }
    let picked: Vec<Scenario> = scenarios(quick)
        .into_iter()
        .filter(|s| s.label().contains(only))
        .collect();
    anyhow::ensure!(!picked.is_empty(), "no scenario matches {only:?}");
    let results = throughput(&bench, &picked, 3)?;
    for r in results {
        println!("{r}");
    }
    Ok(())
}

/// The quick run: each kind once at 1k rules; the full run adds flow and
/// rule counts.
fn scenarios(quick: bool) -> Vec<Scenario> {
    let f = Scenario::forward;
    let mut v = vec![f(1, 1000, 64), f(1000, 1000, 64)];
    if !quick {
        v.push(f(100_000, 1000, 64));
        v.push(f(1, 10, 64));
        v.push(f(1, 100_000, 64));
    }
    v.extend([
        f(1, 1000, 1400),
        f(NEW_FLOWS, 1000, 64),
        f(1, 1000, FRAGMENTED),
    ]);
    for direction in [Direction::Reply, Direction::Both] {
        for flows in [1, 1000] {
            v.push(Scenario {
                direction,
                ..f(flows, 1000, 64)
            });
        }
    }
    v.push(Scenario {
        cpus: 2,
        ..f(1, 1000, 64)
    });
    v.push(Scenario {
        cpus: 2,
        direction: Direction::Reply,
        ..f(1, 1000, 64)
    });
    v.push(NEW_FLOWS_TWO_CPUS);
    v
}

/// The scenarios profiled: one established flow each way, new flows on
/// one CPU and on two.
fn profiled() -> [Scenario; 4] {
    let f = Scenario::forward;
    [
        f(1, 1000, 64),
        Scenario {
            direction: Direction::Reply,
            ..f(1, 1000, 64)
        },
        f(NEW_FLOWS, 1000, 64),
        NEW_FLOWS_TWO_CPUS,
    ]
}

/// New flows from two generators on two CPUs, half the flows each.
const NEW_FLOWS_TWO_CPUS: Scenario = Scenario {
    cpus: 2,
    ..Scenario::forward(NEW_FLOWS / 2, 1000, 64)
};

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each scenario runs the modes it is for: the per-CPU LRU comparison
    /// only where flows are made, the L2 rows only forward on one CPU,
    /// the L3 references and the TC bound everywhere.
    #[test]
    fn scenarios_run_the_modes_they_compare() {
        for sc in scenarios(false) {
            let modes = sc.modes();
            let new_flows = every_packet_new(sc.flows.into());
            assert_eq!(
                modes.contains(&Mode::PerCpuLru),
                new_flows,
                "{}",
                sc.label()
            );
            for m in [
                Mode::RoutingPeerL3,
                Mode::Nftables,
                Mode::KernelForward,
                Mode::TcRedirect,
            ] {
                assert!(modes.contains(&m), "{}: {m:?}", sc.label());
            }
            let l2_rows = sc.direction == Direction::Forward && sc.cpus == 1;
            assert_eq!(
                modes.contains(&Mode::RoutingPeerXdp),
                l2_rows,
                "{}",
                sc.label()
            );
        }
        assert!(scenarios(true)
            .iter()
            .any(|s| s.label() == "1280000 flows, 1000 rules, 64 B, forward, 2 CPUs"));
    }
}
