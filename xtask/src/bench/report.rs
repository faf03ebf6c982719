//! The report: JSON, Markdown and an SVG chart under `bench-results/`.

use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use super::{rig::Bench, Mode, FRAGMENTED, NEW_FLOWS};
use crate::util::{self, output};

impl Bench {
    pub(super) fn report(
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
        let frame = if r["size"] == FRAGMENTED {
            "4008-B UDP datagram in 3 fragments".to_string()
        } else {
            format!("{} B", r["size"])
        };
        s += &format!(
            "| {} | {} | {} | {} | {:.3} [{:.3}–{:.3}] | {:.2}× | {:.0}% |\n",
            flows,
            r["rules"],
            frame,
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
    let colors = ["#2b7bb9", "#66a61e", "#d95f02", "#7570b3", "#999999"];
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
