//! The report: JSON, Markdown and an SVG chart under `bench-results/`.

use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use super::{rig::Bench, Mode, FRAGMENTED, NEW_FLOWS};
use crate::util::{self, output};

/// Everything one run measured.
pub(super) struct Measured {
    pub costs: Vec<Value>,
    pub results: Vec<Value>,
    pub goodput: Value,
    pub reload: Value,
    /// Where the time goes (`profiled()`): by process, by symbol, and
    /// inside the program.
    pub profiles: Vec<Value>,
    /// A denied flood with and without an `observe` client.
    pub events: Vec<Value>,
}

impl Bench {
    pub(super) fn report(&self, m: &Measured, quick: bool, elapsed: f64) -> Result<()> {
        let (costs, results) = (&m.costs, &m.results);
        let (goodput, reload) = (&m.goodput, &m.reload);
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
            "tc_profiles": m.profiles, "targets": targets(results, costs), "events": m.events,
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
    s += "| direction | CPUs | flows | rules | frame | mode | Mpps | vs nftables | vs kernel | vs TC bound | vs XDP bound |\n|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n";
    for r in doc["throughput"].as_array().into_iter().flatten() {
        let flows = if r["flows"].as_u64().is_some_and(super::every_packet_new) {
            "every packet new".to_string()
        } else {
            r["flows"].to_string()
        };
        let frame = if r["size"] == FRAGMENTED {
            "4008-B UDP datagram in 3 fragments".to_string()
        } else {
            format!("{} B", r["size"])
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} [{:.3}–{:.3}] | {:.2}× | {:.2}× | {:.0}% | {:.0}% |\n",
            r["direction"].as_str().unwrap_or(""),
            r["cpus"],
            flows,
            r["rules"],
            frame,
            r["mode"].as_str().unwrap_or(""),
            r["median_mpps"].as_f64().unwrap_or(0.0),
            r["min_mpps"].as_f64().unwrap_or(0.0),
            r["max_mpps"].as_f64().unwrap_or(0.0),
            r["ratio_to_nftables"].as_f64().unwrap_or(0.0),
            r["ratio_to_kernel"].as_f64().unwrap_or(0.0),
            100.0 * r["ratio_to_tc_bound"].as_f64().unwrap_or(0.0),
            100.0 * r["ratio_to_xdp_redirect"].as_f64().unwrap_or(0.0),
        );
    }
    s += "\nTargets (issue #16), from this run:\n\n| target | measured | met |\n|---|---:|:-:|\n";
    for t in doc["targets"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {:.2}{}{} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            t["measured"].as_f64().unwrap_or(f64::NAN),
            t["unit"].as_str().unwrap_or(""),
            t["also"]
                .as_str()
                .map(|a| format!(", {a}"))
                .unwrap_or_default(),
            match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "—",
            }
        );
    }
    s += "\nEvents: a flood of denied packets (a drop rule over the generator's flows, L3 TC path, 1k rules, 64 B), dropped Mpps with and without an `observe` client attached; target: within 10%.\n\n| flows | without observe | with observe | cost | met |\n|---:|---:|---:|---:|---|\n";
    for e in doc["events"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {:.3} | {:.3} | {:+.1}% | {} |\n",
            e["flows"],
            e["without_observe_mpps"].as_f64().unwrap_or(f64::NAN),
            e["with_observe_mpps"].as_f64().unwrap_or(f64::NAN),
            e["cost"].as_f64().unwrap_or(f64::NAN) * 100.0,
            if e["target_met"] == true { "yes" } else { "no" }
        );
    }
    s += "\nWhere the time goes on the TC path of the L3 overlay (`perf record -e cpu-clock -g` on the generators' CPUs, 3 s each). The program's share is of all samples, the TUN write, the veths and the sinks being the rest; inside it, by leaf symbol:\n\n| scenario | samples | program and helpers | by process | inside the program |\n|---|---:|---:|---|---|\n";
    for p in doc["tc_profiles"].as_array().into_iter().flatten() {
        let list = |k: &str, n: usize| {
            p[k].as_array()
                .into_iter()
                .flatten()
                .take(n)
                .map(|t| {
                    format!(
                        "{} {:.1}%",
                        t["symbol"].as_str().unwrap_or("?"),
                        t["percent"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        s += &format!(
            "| {} | {} | {:.1}% | {} | {} |\n",
            p["scenario"].as_str().unwrap_or(""),
            p["samples"],
            p["program_percent_of_cpu"].as_f64().unwrap_or(0.0),
            list("by_process", 3),
            list("inside_program", 10),
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
    s += "| rules + resources | peers | established | later fragment | new flow | denied | policy entries | compile | install (both slots) | one-rule change, in place | the same, full recompile |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for c in doc["per_packet_cost"].as_array().into_iter().flatten() {
        let ms = |k: &str| c[k].as_f64().unwrap_or(0.0);
        s += &format!(
            "| {} | {} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {} | {:.0} ms | {:.0} ms | {:.1} ms ({} entries written) | {:.0} ms |\n",
            c["rules"],
            c["peers"],
            ms("established_ns"),
            ms("later_fragment_ns"),
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
/// The issue's targets, each from this run's medians.
fn targets(results: &[Value], costs: &[Value]) -> Value {
    let find = |mode: Mode, flows: u32, direction: &str, cpus: u32| -> Option<&Value> {
        results.iter().find(|r| {
            r["mode"] == mode.name()
                && r["flows"] == flows
                && r["size"] == 64
                && r["rules"] == 1000
                && r["direction"] == direction
                && r["cpus"] == cpus
        })
    };
    let ratio = |r: Option<&Value>, k: &str| r.and_then(|r| r[k].as_f64()).unwrap_or(f64::NAN);
    let mut v = Vec::new();
    let row = |target: &str, measured: f64, unit: &str, goal: f64| json!({"target": target, "measured": measured, "unit": unit, "met": measured >= goal});
    for (direction, label) in [
        ("forward", "TC path, L3, established"),
        ("reply", "reply path, L3"),
    ] {
        let rp = find(Mode::RoutingPeerL3, 1, direction, 1);
        v.push(row(
            &format!("{label}, 64 B: ≥ 1.3× kernel forwarding"),
            ratio(rp, "ratio_to_kernel"),
            "×",
            1.3,
        ));
        v.push(row(
            &format!("{label}, 64 B: ≥ 7× nftables"),
            ratio(rp, "ratio_to_nftables"),
            "×",
            7.0,
        ));
        v.push(row(
            &format!("{label}, 64 B: ≥ 75% of the XDP redirect bound"),
            100.0 * ratio(rp, "ratio_to_xdp_redirect"),
            "%",
            75.0,
        ));
    }
    let new = find(Mode::RoutingPeerL3, NEW_FLOWS, "forward", 1);
    v.push(row(
        "new flows: ≥ 5× nftables",
        ratio(new, "ratio_to_nftables"),
        "×",
        5.0,
    ));
    // What the rig allows: the stateless TC bound against the same
    // references. A target above the bound's own ratio is out of reach of
    // any TC program here.
    let ceiling = |flows: u32, direction: &str, k: &str| {
        ratio(find(Mode::TcRedirect, flows, direction, 1), k)
    };
    for (flows, direction, label) in [
        (1, "forward", "TC path, L3, established"),
        (1, "reply", "reply path, L3"),
        (NEW_FLOWS, "forward", "new flows"),
    ] {
        v.push(json!({
            "target": format!("{label}: the TC bound's own ratios (kernel, nftables), the ceiling on this rig"),
            "measured": ceiling(flows, direction, "ratio_to_kernel"), "unit": "×",
            "also": format!("{:.2}× nftables", ceiling(flows, direction, "ratio_to_nftables")), "met": null,
        }));
        let rp = find(Mode::RoutingPeerL3, flows, direction, 1);
        v.push(json!({
            "target": format!("{label}: routing-peer as a share of the TC bound"),
            "measured": 100.0 * ratio(rp, "ratio_to_tc_bound"), "unit": "%", "met": null,
        }));
    }
    for (flows, what) in [(1, "established"), (NEW_FLOWS, "new flows")] {
        for mode in [Mode::RoutingPeerL3, Mode::Nftables, Mode::KernelForward] {
            let one = ratio(find(mode, flows, "forward", 1), "median_mpps");
            // Two generators split the new flows between them.
            let each = if flows == NEW_FLOWS {
                super::NEW_FLOWS_TWO_CPUS.flows
            } else {
                flows
            };
            let two = ratio(find(mode, each, "forward", 2), "median_mpps");
            let target = format!("two cores / one, {what}, {}", mode.name());
            if mode == Mode::RoutingPeerL3 {
                v.push(row(&format!("{target}: ≥ 1.7×"), two / one, "×", 1.7));
            } else {
                // The alternatives' scaling, side by side: no target of theirs.
                v.push(json!({"target": target, "measured": two / one, "unit": "×", "met": null}));
            }
        }
    }
    // BPF_F_NO_COMMON_LRU against the shared LRU lists, where flows are made.
    for (cpus, flows) in [(1, NEW_FLOWS), (2, super::NEW_FLOWS_TWO_CPUS.flows)] {
        let shared = ratio(
            find(Mode::RoutingPeerL3, flows, "forward", cpus),
            "median_mpps",
        );
        let own = ratio(find(Mode::PerCpuLru, flows, "forward", cpus), "median_mpps");
        v.push(json!({
            "target": format!("new flows on {cpus} CPU(s): per-CPU LRU lists / shared lists"),
            "measured": own / shared, "unit": "×", "met": null,
        }));
    }
    // Per-packet cost from the fewest to the most rules.
    if let (Some(lo), Some(hi)) = (costs.first(), costs.last()) {
        for k in ["established_ns", "denied_ns"] {
            let change = hi[k].as_f64().unwrap_or(f64::NAN) / lo[k].as_f64().unwrap_or(f64::NAN);
            v.push(json!({
                "target": format!("per-packet cost flat within ±10% from {} to {} rules ({})", lo["rules"], hi["rules"], k.trim_end_matches("_ns")),
                "measured": 100.0 * (change - 1.0), "unit": "%", "met": (change - 1.0).abs() <= 0.10,
            }));
        }
    }
    Value::Array(v)
}

/// A scenario's label in the chart.
fn group(r: &Value) -> String {
    format!(
        "{} flows, {} rules, {} B, {}, {} CPU",
        r["flows"],
        r["rules"],
        r["size"],
        r["direction"].as_str().unwrap_or(""),
        r["cpus"]
    )
}

fn svg(results: &[Value]) -> String {
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        let g = group(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let top = results
        .iter()
        .filter_map(|r| r["max_mpps"].as_f64())
        .fold(0.1, f64::max);
    let (w, h, bar, gap) = (300.0 * groups.len() as f64 + 80.0, 340.0, 40.0, 20.0);
    let colors = [
        "#2b7bb9", "#1b9e77", "#d95f02", "#999999", "#e7298a", "#66a61e", "#7570b3", "#444444",
    ];
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    s += r#"<text x="10" y="16" font-size="13">Median Mpps by mode and scenario (higher is better)</text>"#;
    for (gi, g) in groups.iter().enumerate() {
        let x0 = 60.0 + gi as f64 * 300.0;
        for (mi, mode) in Mode::ALL.iter().enumerate() {
            let Some(r) = results
                .iter()
                .find(|r| group(r) == *g && r["mode"] == mode.name())
            else {
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
