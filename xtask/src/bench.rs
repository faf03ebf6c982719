//! `cargo xtask bench [--quick]`: the data path against the Linux path
//! NetBird's routing peer uses (nftables + conntrack + masquerade), side by
//! side in one run, on veth pairs in namespaces:
//!
//!   generator (BPF_PROG_TEST_RUN live frames) → device under test → sink (XDP counter)
//!
//! Modes are interleaved (A B C D A B C D …) so drift hits all alike; we
//! report medians with min and max, and the ratio to nftables per scenario.

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD, Engine};
use routing_peer_testbed::{veth, Daemon, Netns, VethSpec};
use serde_json::{json, Value};

use crate::util::{self, output, run_cmd, step};

/// More distinct flows than one sample sends packets: every packet opens a
/// new flow (conntrack entry, masquerade mapping), so Mpps is the new-flow rate.
const NEW_FLOWS: u32 = 5_000_000;
const GEN_MAC: &str = "02:00:00:00:0b:01";
const OV_MAC: &str = "02:00:00:00:0b:02";
const LAN_MAC: &str = "02:00:00:00:0b:03";
const SINK_MAC: &str = "02:00:00:00:0b:04";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    RoutingPeer,
    Nftables,
    KernelForward,
    XdpRedirect,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::RoutingPeer,
        Mode::Nftables,
        Mode::KernelForward,
        Mode::XdpRedirect,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::RoutingPeer => "routing-peer (eBPF)",
            Mode::Nftables => "nftables + conntrack + masquerade",
            Mode::KernelForward => "kernel forwarding, no rules",
            Mode::XdpRedirect => "XDP redirect, stateless",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    flows: u32,
    rules: usize,
    size: usize,
}

struct Bench {
    bin_dir: PathBuf,
    work: tempfile::TempDir,
    gen: Netns,
    dut: Netns,
    sink: Netns,
    pins: PathBuf,
    seconds: f64,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

pub fn run(quick: bool) -> Result<()> {
    crate::setup::check_toolchain()?;
    util::cargo(&["build", "--locked", "--release", "-p", "routing-peer"])?;
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
        std::fs::write(&config, bench_config(rules))?;
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
    let goodput = crate::goodput::measure(if quick { 3 } else { 5 }, if quick { 2 } else { 5 })?;
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

impl Bench {
    fn new(bin_dir: PathBuf, seconds: f64) -> Result<Self> {
        let gen = Netns::new("bgen")?;
        let dut = Netns::new("bdut")?;
        let sink = Netns::new("bsnk")?;
        veth(VethSpec {
            a: &gen,
            a_if: "g0",
            a_mac: GEN_MAC,
            a_addr: "100.64.0.2/10",
            b: &dut,
            b_if: "ov0",
            b_mac: OV_MAC,
            b_addr: "100.64.0.1/10",
        })?;
        veth(VethSpec {
            a: &dut,
            a_if: "lan0",
            a_mac: LAN_MAC,
            a_addr: "198.51.100.1/24",
            b: &sink,
            b_if: "s0",
            b_mac: SINK_MAC,
            b_addr: "198.51.100.2/24",
        })?;
        dut.sh("sysctl -qw net.ipv4.ip_forward=1")?;
        let pins = PathBuf::from("/sys/fs/bpf").join(routing_peer_testbed::unique_name("bench"));
        let bench = Self {
            bin_dir,
            work: tempfile::tempdir()?,
            gen,
            dut,
            sink,
            pins,
            seconds,
        };
        bench.attach(&bench.sink, "s0", "rp_bench_sink", "sink")?;
        bench.attach(&bench.dut, "ov0", "rp_bench_pass", "ov0")?;
        Ok(bench)
    }

    fn rp_bench(&self, ns: &Netns) -> Command {
        ns.cmd(&self.bin_dir.join("rp-bench").to_string_lossy())
    }

    fn attach(&self, ns: &Netns, iface: &str, program: &str, pin: &str) -> Result<()> {
        run_cmd(self.rp_bench(ns).args([
            "attach",
            "--iface",
            iface,
            "--program",
            program,
            "--pin",
            &*self.pins.join(pin).to_string_lossy(),
        ]))
    }

    fn detach(&self, pin: &str) -> Result<()> {
        std::fs::remove_dir_all(self.pins.join(pin)).context("detaching")
    }

    fn sink_count(&self) -> Result<u64> {
        let out = output(self.rp_bench(&self.sink).args([
            "count",
            "--pin",
            &*self.pins.join("sink").to_string_lossy(),
        ]))?;
        Ok(out.trim().parse()?)
    }

    /// The generator, pinned to CPU 1, sending from the generator namespace.
    fn gen_command(&self, seconds: f64, flows: u32, size: usize) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c",
            "1",
            "nsenter",
            &format!("--net=/run/netns/{}", self.gen.name),
            "--",
        ])
        .arg(self.bin_dir.join("rp-bench"))
        .args(["gen", "--iface", "g0", "--seconds", &seconds.to_string()])
        .args(["--flows", &flows.to_string(), "--size", &size.to_string()])
        .args(["--src-mac", GEN_MAC, "--dst-mac", OV_MAC])
        .args(["--src", "100.64.0.2", "--dst", "198.51.100.2"]);
        cmd
    }

    fn generate(&self, sc: &Scenario) -> Result<f64> {
        let out = output(&mut self.gen_command(self.seconds, sc.flows, sc.size))?;
        let v: Value = serde_json::from_str(out.trim())?;
        Ok(v["seconds"].as_f64().unwrap_or(self.seconds))
    }

    fn sink_windows(&self, until: Instant, every: std::time::Duration) -> Result<Vec<(f64, u64)>> {
        let start = Instant::now();
        let mut samples = Vec::new();
        while Instant::now() < until {
            samples.push((start.elapsed().as_secs_f64(), self.sink_count()?));
            std::thread::sleep(every);
        }
        Ok(samples)
    }

    /// A full reload of `rules` rules while 64-byte traffic flows: how long
    /// from SIGHUP to the new generation, and the slowest 50-ms window of
    /// forwarding around it against the median before.
    fn reload_under_load(&self, rules: usize) -> Result<Value> {
        let path = self.work.path().join("rp-reload.toml");
        let config = bench_config(rules);
        std::fs::write(&path, &config)?;
        self.detach("ov0")?;
        let daemon = Daemon::start(&self.dut, &path, &[])?;
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
        drop(daemon);
        self.attach(&self.dut, "ov0", "rp_bench_pass", "ov0")?;
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

    /// Sets the device under test up for `mode`, measures, and tears it down.
    fn measure(&self, mode: Mode, sc: &Scenario) -> Result<f64> {
        let mut daemon = None;
        match mode {
            Mode::RoutingPeer => {
                let path = self.work.path().join("rp.toml");
                std::fs::write(&path, bench_config(sc.rules))?;
                // routing-peer attaches its own XDP program to the L2 overlay.
                self.detach("ov0")?;
                daemon = Some(Daemon::start(&self.dut, &path, &[])?);
            }
            Mode::Nftables => {
                let path = self.work.path().join("nft.conf");
                std::fs::write(&path, nft_ruleset(sc.rules))?;
                run_cmd(self.dut.cmd("nft").args(["-f", &*path.to_string_lossy()]))?;
            }
            Mode::KernelForward => {}
            Mode::XdpRedirect => {
                self.detach("ov0")?;
                self.attach(&self.dut, "ov0", "rp_bench_redirect", "ov0")?;
            }
        }
        let before = self.sink_count()?;
        let secs = self.generate(sc)?;
        let received = self.sink_count()? - before;
        match mode {
            Mode::RoutingPeer => {
                drop(daemon.take());
                self.attach(&self.dut, "ov0", "rp_bench_pass", "ov0")?;
            }
            Mode::Nftables => run_cmd(
                self.dut
                    .cmd("nft")
                    .args(["delete", "table", "inet", "rptbench"]),
            )?,
            Mode::KernelForward => {}
            Mode::XdpRedirect => {
                self.detach("ov0")?;
                self.attach(&self.dut, "ov0", "rp_bench_pass", "ov0")?;
            }
        }
        if received == 0 {
            bail!("{}: the sink received nothing", mode.name());
        }
        Ok(received as f64 / secs / 1e6)
    }

    fn report(
        &self,
        costs: &[Value],
        results: &[Value],
        goodput: &Value,
        reload: &Value,
        quick: bool,
        elapsed: f64,
    ) -> Result<()> {
        let date = output(Command::new("date").args(["-u", "+%Y-%m-%dT%H%M%SZ"]))?
            .trim()
            .to_string();
        let kernel = output(Command::new("uname").arg("-r"))?.trim().to_string();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")?
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .to_string();
        let nft = output(Command::new("nft").arg("--version"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let doc = json!({
            "date": date, "quick": quick, "kernel": kernel, "cpu": cpu,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "versions": { "routing-peer": env!("CARGO_PKG_VERSION"), "aya": "0.14.0", "nftables": nft },
            "seconds_per_sample": self.seconds, "elapsed_seconds": elapsed,
            "per_packet_cost": costs, "throughput": results, "goodput": goodput, "reload_under_load": reload,
        });
        let dir = util::workspace_root().join("bench-results");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{date}.json")),
            serde_json::to_string_pretty(&doc)?,
        )?;
        let md = markdown(&doc);
        std::fs::write(dir.join(format!("{date}.md")), &md)?;
        std::fs::write(dir.join("latest.md"), &md)?;
        std::fs::write(dir.join("latest.svg"), svg(results))?;
        println!("\n{md}");
        println!(
            "written: bench-results/{date}.json, bench-results/latest.md, bench-results/latest.svg"
        );
        Ok(())
    }
}

fn markdown(doc: &Value) -> String {
    let mut s = format!(
        "Measured {} on {} ({} CPUs), kernel {}; {} s per sample, 5 interleaved repeats, medians [min–max].\n\n",
        doc["date"].as_str().unwrap_or(""),
        doc["cpu"].as_str().unwrap_or(""),
        doc["cpus"],
        doc["kernel"].as_str().unwrap_or(""),
        doc["seconds_per_sample"],
    );
    s += "| flows | rules | frame | mode | Mpps | vs nftables | vs XDP redirect |\n|---:|---:|---:|---|---:|---:|---:|\n";
    for r in doc["throughput"].as_array().into_iter().flatten() {
        let flows = if r["flows"] == NEW_FLOWS {
            "every packet new".to_string()
        } else {
            r["flows"].to_string()
        };
        s += &format!(
            "| {} | {} | {} B | {} | {:.3} [{:.3}–{:.3}] | {:.2}× | {:.0}% |\n",
            flows,
            r["rules"],
            r["size"],
            r["mode"].as_str().unwrap_or(""),
            r["median_mpps"].as_f64().unwrap_or(0.0),
            r["min_mpps"].as_f64().unwrap_or(0.0),
            r["max_mpps"].as_f64().unwrap_or(0.0),
            r["ratio_to_nftables"].as_f64().unwrap_or(0.0),
            100.0 * r["ratio_to_xdp_redirect"].as_f64().unwrap_or(0.0),
        );
    }
    let r = &doc["reload_under_load"];
    s += &format!(
        "\nA reload of {} rules while 64-byte traffic flows: applied in {} (SIGHUP to the new generation the daemon reports: read and validate the file, compile, write both slots); the slowest 50-ms window of forwarding during it ran at {:.3} Mpps against a median of {:.3} Mpps before.\n",
        r["rules"],
        r["reload_ms"].as_f64().map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "— (no new generation within 10 s)".into()),
        r["min_window_mpps_during"].as_f64().unwrap_or(0.0),
        r["median_mpps_before"].as_f64().unwrap_or(0.0),
    );
    let g = &doc["goodput"];
    s += &format!(
        "\nTCP goodput end to end through userspace WireGuard (wireguard-go on both ends, iperf3, {} s runs, interleaved, medians): routing-peer {:.2} Gbit/s, the nftables path {:.2} Gbit/s ({:.2}×). Both modes share the same wireguard-go, so the small gap bounds what the forwarding path costs there.\n\n",
        g["seconds"],
        g["routing_peer_gbps"].as_f64().unwrap_or(0.0),
        g["nftables_gbps"].as_f64().unwrap_or(0.0),
        g["ratio"].as_f64().unwrap_or(0.0),
    );
    let p = &g["profile"];
    let pct = |k: &str| p[k].as_f64().unwrap_or(0.0);
    s += &format!(
        "Where the time goes (`perf record -a`, cpu-clock, one more routing-peer run at {:.2} Gbit/s; percent of all CPU time on both vCPUs): wireguard-go's own code (ChaCha20-Poly1305 and the Go runtime; the binary has no symbols) {:.1}%, the kernel on wireguard-go's behalf (TUN, UDP, veth) {:.1}%, iperf3 {:.1}%, routing-peer's BPF programs {:.1}%, idle {:.1}%. Top symbols: {}.\n",
        pct("gbps"),
        pct("wireguard_go_user_percent"),
        pct("wireguard_go_kernel_percent"),
        pct("iperf3_percent"),
        pct("bpf_programs_percent"),
        pct("idle_percent"),
        p["top_symbols"]
            .as_array()
            .into_iter()
            .flatten()
            .take(6)
            .map(|t| format!("{} {:.1}%", t["symbol"].as_str().unwrap_or("?"), t["percent"].as_f64().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    s += "\nPer-packet cost of the overlay program (BPF_PROG_TEST_RUN, mean over the repeats), and the policy compiler:\n\n";
    s += "| rules + resources | peers | established | new flow | denied | policy entries | compile | install (both slots) | one-rule change, in place | the same, full recompile |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for c in doc["per_packet_cost"].as_array().into_iter().flatten() {
        let ms = |k: &str| c[k].as_f64().unwrap_or(0.0);
        s += &format!(
            "| {} | {} | {:.0} ns | {:.0} ns | {:.0} ns | {} | {:.0} ms | {:.0} ms | {:.1} ms ({} entries written) | {:.0} ms |\n",
            c["rules"],
            c["peers"],
            ms("established_ns"),
            ms("new_flow_ns"),
            ms("denied_ns"),
            c["policy_entries"],
            ms("compile_ms"),
            ms("install_ms"),
            ms("one_rule_change_ms"),
            c["one_rule_change_entries"],
            ms("one_rule_full_recompile_ms"),
        );
    }
    s
}

/// A grouped bar chart of median Mpps per scenario and mode.
fn svg(results: &[Value]) -> String {
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        let g = format!(
            "{} flows, {} rules, {} B",
            r["flows"], r["rules"], r["size"]
        );
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let top = results
        .iter()
        .filter_map(|r| r["max_mpps"].as_f64())
        .fold(0.1, f64::max);
    let (w, h, bar, gap) = (220.0 * groups.len() as f64 + 80.0, 340.0, 40.0, 20.0);
    let colors = ["#2b7bb9", "#d95f02", "#7570b3", "#999999"];
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    s += r#"<text x="10" y="16" font-size="13">Median Mpps by mode and scenario (higher is better)</text>"#;
    for (gi, g) in groups.iter().enumerate() {
        let x0 = 60.0 + gi as f64 * 220.0;
        for (mi, mode) in Mode::ALL.iter().enumerate() {
            let Some(r) = results.iter().find(|r| {
                format!(
                    "{} flows, {} rules, {} B",
                    r["flows"], r["rules"], r["size"]
                ) == *g
                    && r["mode"] == mode.name()
            }) else {
                continue;
            };
            let v = r["median_mpps"].as_f64().unwrap_or(0.0);
            let bh = 240.0 * v / top;
            let x = x0 + mi as f64 * bar;
            s += &format!(
                r#"<rect x="{x}" y="{}" width="{}" height="{bh}" fill="{}"/>"#,
                280.0 - bh,
                bar - 4.0,
                colors[mi]
            );
            s += &format!(
                r#"<text x="{}" y="{}" text-anchor="middle">{v:.2}</text>"#,
                x + bar / 2.0 - 2.0,
                276.0 - bh
            );
        }
        s += &format!(
            r#"<text x="{}" y="298" text-anchor="middle">{g}</text>"#,
            x0 + 2.0 * bar - gap / 2.0
        );
    }
    for (mi, mode) in Mode::ALL.iter().enumerate() {
        let y = 316.0 + (mi / 2) as f64 * 14.0;
        let x = 10.0 + (mi % 2) as f64 * 300.0;
        s += &format!(
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 9.0,
            colors[mi],
            x + 14.0,
            y,
            mode.name()
        );
    }
    s + "</svg>\n"
}

/// The benchmark's routing-peer configuration: `n` rules and resources.
fn bench_config(n: usize) -> String {
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

/// NetBird's Linux routing-peer data path as nftables: established first,
/// one rule per policy (the bench's own rule in the middle of the filler),
/// a drop for the overlay interface, and masquerade by mark.
fn nft_ruleset(n: usize) -> String {
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
    format!(
        r#"table inet rptbench {{
  set peers {{ type ipv4_addr; elements = {{ 100.64.0.2 }} }}
  set resources {{ type ipv4_addr; flags interval; elements = {{ 198.51.100.2/32 }} }}
  chain prerouting {{
    type filter hook prerouting priority -150; policy accept;
    iifname "ov0" ct state new meta mark set 0x1bd00
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
{}
    iifname "ov0" drop
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
