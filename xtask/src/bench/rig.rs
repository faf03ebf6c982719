//! The rig: generator → device under test → sink, three namespaces joined
//! by veths; attaching the bench programs, generating, counting, and one
//! measurement of a mode in a scenario.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use routing_peer_testbed::{veth, Daemon, Netns, VethSpec};
use serde_json::Value;

use super::{workloads, Mode, Scenario, FRAGMENTED};
use crate::util::{output, run_cmd};

const GEN_MAC: &str = "02:00:00:00:0b:01";
const OV_MAC: &str = "02:00:00:00:0b:02";
const LAN_MAC: &str = "02:00:00:00:0b:03";
const SINK_MAC: &str = "02:00:00:00:0b:04";

pub(super) struct Bench {
    pub(super) bin_dir: PathBuf,
    pub(super) work: tempfile::TempDir,
    pub(super) gen: Netns,
    pub(super) dut: Netns,
    pub(super) sink: Netns,
    pub(super) pins: PathBuf,
    pub(super) seconds: f64,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

impl Bench {
    pub(super) fn new(bin_dir: PathBuf, seconds: f64) -> Result<Self> {
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

    pub(super) fn rp_bench(&self, ns: &Netns) -> Command {
        ns.cmd(&self.bin_dir.join("rp-bench").to_string_lossy())
    }

    pub(super) fn attach(&self, ns: &Netns, iface: &str, program: &str, pin: &str) -> Result<()> {
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

    pub(super) fn detach(&self, pin: &str) -> Result<()> {
        std::fs::remove_dir_all(self.pins.join(pin)).context("detaching")
    }

    pub(super) fn sink_count(&self) -> Result<u64> {
        let out = output(self.rp_bench(&self.sink).args([
            "count",
            "--pin",
            &*self.pins.join("sink").to_string_lossy(),
        ]))?;
        Ok(out.trim().parse()?)
    }

    /// The generator, pinned to CPU 1, sending from the generator namespace.
    pub(super) fn gen_command(&self, seconds: f64, flows: u32, size: usize) -> Command {
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
        if size == FRAGMENTED {
            cmd.arg("--fragments");
        }
        cmd
    }

    pub(super) fn generate(&self, sc: &Scenario) -> Result<f64> {
        let out = output(&mut self.gen_command(self.seconds, sc.flows, sc.size))?;
        let v: Value = serde_json::from_str(out.trim())?;
        Ok(v["seconds"].as_f64().unwrap_or(self.seconds))
    }

    pub(super) fn sink_windows(
        &self,
        until: Instant,
        every: std::time::Duration,
    ) -> Result<Vec<(f64, u64)>> {
        let start = Instant::now();
        let mut samples = Vec::new();
        while Instant::now() < until {
            samples.push((start.elapsed().as_secs_f64(), self.sink_count()?));
            std::thread::sleep(every);
        }
        Ok(samples)
    }

    /// Sets the device under test up for `mode`, measures, and tears it down.
    pub(super) fn measure(&self, mode: Mode, sc: &Scenario) -> Result<f64> {
        let mut daemon = None;
        match mode {
            Mode::RoutingPeer | Mode::RoutingPeerTc => {
                let path = self.work.path().join("rp.toml");
                let mut config = workloads::bench_config(sc.rules);
                if mode == Mode::RoutingPeerTc {
                    config = config.replace("xdp_redirect_interfaces = [\"lan0\"]", "");
                }
                std::fs::write(&path, config)?;
                // routing-peer attaches its own XDP program to the L2 overlay.
                self.detach("ov0")?;
                daemon = Some(Daemon::start(&self.dut, &path, &[])?);
            }
            Mode::Nftables => {
                let path = self.work.path().join("nft.conf");
                std::fs::write(&path, workloads::bench_ruleset(sc.rules))?;
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
            Mode::RoutingPeer | Mode::RoutingPeerTc => {
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
}
