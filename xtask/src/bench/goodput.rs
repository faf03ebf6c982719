//! TCP goodput end to end through userspace WireGuard (wireguard-go), with
//! iperf3: the office walkthrough's topology, once with routing-peer's data
//! path and once with the Linux path NetBird uses (kernel forwarding,
//! nftables, masquerade), interleaved.

use std::time::Duration;

use anyhow::{Context, Result};
use routing_peer_testbed::{
    office::{Office, WIKI},
    wait_for, Daemon,
};
use serde_json::{json, Value};

use crate::{
    bench::median,
    util::{output, run_cmd},
};

const IPERF_POLICY: &str = r#"
[[policies]]
name = "Development iperf3"
sources = ["Development"]
destinations = ["Internal Apps"]
protocol = "tcp"
ports = [5201]
"#;

/// Median Gbit/s per mode over `repeats` interleaved runs of `seconds` each.
pub fn measure(repeats: usize, seconds: u32) -> Result<Value> {
    let mut rp = Vec::new();
    let mut nft = Vec::new();
    for _ in 0..repeats {
        rp.push(run_once(true, seconds, None)?);
        nft.push(run_once(false, seconds, None)?);
    }
    let (m_rp, m_nft) = (median(&rp), median(&nft));
    // One more routing-peer run under `perf record`: where the time goes.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("perf.data");
    let profiled_gbps = run_once(true, seconds, Some(&data))?;
    Ok(json!({
        "seconds": seconds,
        "routing_peer_gbps": m_rp, "routing_peer_samples": rp,
        "nftables_gbps": m_nft, "nftables_samples": nft,
        "ratio": m_rp / m_nft,
        "profile": profile_summary(&data, profiled_gbps)?,
    }))
}

/// CPU samples of every CPU (perf, cpu-clock) by process and by code: user
/// space, kernel, our BPF programs, idle. wireguard-go has no symbol table,
/// so its own code is one figure (ChaCha20-Poly1305 and the Go runtime).
fn profile_summary(data: &std::path::Path, gbps: f64) -> Result<Value> {
    let report = |sort: &str| -> Result<Vec<(f64, String)>> {
        let out = output(
            std::process::Command::new("perf")
                .args(["report", "--stdio", "-q", "--sort", sort, "-i"])
                .arg(data),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let (pct, rest) = l.split_once('%')?;
                Some((
                    pct.trim().parse().ok()?,
                    rest.split_whitespace().collect::<Vec<_>>().join(" "),
                ))
            })
            .collect())
    };
    let by_process = report("comm,dso")?;
    let by_symbol = report("sym")?;
    let share = |pred: &dyn Fn(&str) -> bool, rows: &[(f64, String)]| -> f64 {
        rows.iter().filter(|(_, n)| pred(n)).map(|(p, _)| p).sum()
    };
    let idle = share(&|n| n.starts_with("swapper"), &by_process);
    let wg_user = share(&|n| n == "wireguard-go wireguard-go", &by_process);
    let wg_kernel = share(&|n| n == "wireguard-go [kernel.kallsyms]", &by_process);
    let iperf = share(&|n| n.starts_with("iperf3"), &by_process);
    let bpf = share(&|n| n.contains("bpf_prog_"), &by_symbol);
    Ok(json!({
        "gbps": gbps,
        "idle_percent": idle,
        "wireguard_go_user_percent": wg_user,
        "wireguard_go_kernel_percent": wg_kernel,
        "iperf3_percent": iperf,
        "bpf_programs_percent": bpf,
        "top_processes": by_process.iter().take(10).map(|(p, n)| json!({"percent": p, "process_and_object": n})).collect::<Vec<_>>(),
        "top_symbols": by_symbol.iter().take(12).map(|(p, n)| json!({"percent": p, "symbol": n})).collect::<Vec<_>>(),
    }))
}

fn run_once(
    with_routing_peer: bool,
    seconds: u32,
    profile: Option<&std::path::Path>,
) -> Result<f64> {
    let mut office = Office::new()?;
    let config = office.write_config(IPERF_POLICY)?;
    let iperf_server = office
        .lan
        .cmd("iperf3")
        .args(["-s", "-B", WIKI, "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("iperf3 (cargo xtask setup installs it)")?;
    let _daemon = if with_routing_peer {
        Some(Daemon::start(&office.router, &config, &[])?)
    } else {
        // The same WireGuard, configured as NetBird's Linux peer would be,
        // and the kernel's forwarding path with nftables doing the policy.
        let wg = office.wg_iface.clone();
        office.router.sh(&format!(
            "wireguard-go {wg} && wg set {wg} private-key {key} listen-port 51820 \
               peer {laptop} allowed-ips 100.64.0.2/32 && \
             ip addr add 100.64.0.1/10 dev {wg} && ip link set {wg} mtu 1280 up && \
             sysctl -qw net.ipv4.ip_forward=1",
            key = office.router_key_file.display(),
            laptop = office.laptop.public_key,
        ))?;
        let ruleset = office.dir.path().join("nft.conf");
        std::fs::write(&ruleset, nft_ruleset(&wg))?;
        run_cmd(
            office
                .router
                .cmd("nft")
                .args(["-f", &*ruleset.to_string_lossy()]),
        )?;
        None
    };
    let key = office.router_public_key.clone();
    office.laptop.connect(&key)?;
    wait_for(Duration::from_secs(15), || {
        Ok(office
            .laptop
            .tcp(&format!("{WIKI}:443"), Duration::from_millis(1500))
            .ok())
    })?;
    // Every CPU, sampled at 999 Hz while iperf3 runs.
    let perf = match profile {
        Some(data) => Some(
            std::process::Command::new("perf")
                .args(["record", "-a", "-F", "999", "-o"])
                .arg(data)
                .args(["--", "sleep", &seconds.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("perf (cargo xtask setup installs linux-perf)")?,
        ),
        None => None,
    };
    let out = output(office.laptop.ns.cmd("iperf3").args([
        "-c",
        WIKI,
        "-t",
        &seconds.to_string(),
        "-J",
    ]))?;
    if let Some(mut perf) = perf {
        perf.wait()?;
    }
    drop(iperf_server);
    let v: Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no goodput")?;
    if !with_routing_peer {
        let _ = office.router.ip(&format!("link del {}", office.wg_iface));
    }
    Ok(bps / 1e9)
}

pub(super) fn nft_ruleset(wg: &str) -> String {
    let rule = "    ip saddr 100.64.0.2 ip daddr 198.51.100.5 tcp dport { 443, 5201 } accept";
    super::workloads::nft_ruleset("rptgoodput", wg, "", &[rule.to_string()])
}
