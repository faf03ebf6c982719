//! The rig: three namespaces, generator (`bgen`) → device under test
//! (`bdut`) → sink (`bsnk`), joined by veths:
//!
//! - `ov1`: the L3 overlay, a multi-queue TUN device in the device under
//!   test, written by the generator as wireguard-go writes what it
//!   decrypted (this kernel has no WireGuard, IPIP or GRE to stand in);
//! - `g0`–`ov0`: the L2 overlay (veth), 100.64.0.2 → 100.64.0.1, for the
//!   XDP path's row;
//! - `lan0`–`s0`: the LAN, 198.51.100.1 → the resource 198.51.100.2.
//!
//! Counters on `s0` (XDP, forward) and at `ov1`'s TC egress (replies, where
//! wireguard-go would read them) count what arrives. The L2 and reply
//! generators send XDP live frames, each CPU into a veth queue of its own.
//! Attaching the bench programs, generating, counting, and one measurement
//! of a mode in a scenario.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use routing_peer_testbed::{veth_queues, Daemon, Netns, VethSpec};
use serde_json::Value;

use super::{workloads, Direction, Mode, Scenario, FRAGMENTED};
use crate::util::{output, run_cmd};

const GEN_MAC: &str = "02:00:00:00:0b:01";
const OV_MAC: &str = "02:00:00:00:0b:02";
const LAN_MAC: &str = "02:00:00:00:0b:03";
const SINK_MAC: &str = "02:00:00:00:0b:04";
const PEER: &str = "100.64.0.2";
const RESOURCE: &str = "198.51.100.2";
/// The routing peer's LAN address: masqueraded flows' replies go to it.
const MASQUERADE: &str = "198.51.100.1";

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
        veth_queues(
            VethSpec {
                a: &gen,
                a_if: "g0",
                a_mac: GEN_MAC,
                a_addr: "100.64.0.2/10",
                b: &dut,
                b_if: "ov0",
                b_mac: OV_MAC,
                b_addr: "100.64.0.1/10",
            },
            2,
        )?;
        veth_queues(
            VethSpec {
                a: &dut,
                a_if: "lan0",
                a_mac: LAN_MAC,
                a_addr: "198.51.100.1/24",
                b: &sink,
                b_if: "s0",
                b_mac: SINK_MAC,
                b_addr: "198.51.100.2/24",
            },
            2,
        )?;
        // The overlay's route is the TUN's; the L2 overlay keeps only its
        // address (its rows measure the forward direction).
        dut.sh("ip tuntap add dev ov1 mode tun multi_queue && \
             ip link set ov1 mtu 1500 up && ip addr add 100.64.0.1/10 dev ov1 && \
             ip addr del 100.64.0.1/10 dev ov0 && ip addr add 100.64.0.1/32 dev ov0 && \
             sysctl -qw net.ipv4.ip_forward=1")?;
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
        bench.attach(&bench.dut, "ov1", "rp_bench_tc_sink", "tunsink")?;
        // veth takes XDP frames only on an end with an XDP program.
        for iface in ["ov0", "lan0"] {
            bench.attach(&bench.dut, iface, "rp_bench_pass", iface)?;
        }
        Ok(bench)
    }

    pub(super) fn rp_bench(&self, ns: &Netns) -> Command {
        ns.cmd(&self.bin_dir.join("rp-bench").to_string_lossy())
    }

    pub(super) fn attach(&self, ns: &Netns, iface: &str, program: &str, pin: &str) -> Result<()> {
        self.attach_at(ns, iface, program, pin, false)
    }

    /// A bench program on `iface` pinned under `pin`; a TC one at ingress
    /// when `ingress`, else at egress.
    fn attach_at(
        &self,
        ns: &Netns,
        iface: &str,
        program: &str,
        pin: &str,
        ingress: bool,
    ) -> Result<()> {
        let mut cmd = self.rp_bench(ns);
        cmd.args(["attach", "--iface", iface, "--program", program])
            .arg("--pin")
            .arg(self.pins.join(pin));
        if ingress {
            cmd.arg("--ingress");
        }
        run_cmd(&mut cmd)
    }

    /// The TC bound's programs where `sc`'s traffic enters: the TUN
    /// (forward), the LAN (replies); their pins.
    fn tc_bound_pins(sc: &Scenario) -> Vec<(&'static str, &'static str, &'static str)> {
        let forward = ("ov1", "rp_bench_tc_redirect_l3", "tcbound-ov1");
        let reply = ("lan0", "rp_bench_tc_redirect_l2", "tcbound-lan0");
        match sc.direction {
            Direction::Forward => vec![forward],
            Direction::Reply => vec![reply],
            Direction::Both => vec![forward, reply],
        }
    }

    pub(super) fn detach(&self, pin: &str) -> Result<()> {
        std::fs::remove_dir_all(self.pins.join(pin)).context("detaching")
    }

    /// Packets counted at the LAN's sink (forward) and the TUN's egress
    /// (replies).
    pub(super) fn sink_count(&self) -> Result<u64> {
        let mut total = 0;
        for (ns, pin) in [(&self.sink, "sink"), (&self.dut, "tunsink")] {
            let out = output(self.rp_bench(ns).args([
                "count",
                "--pin",
                &*self.pins.join(pin).to_string_lossy(),
            ]))?;
            total += out.trim().parse::<u64>()?;
        }
        Ok(total)
    }

    /// The L2-overlay generator on CPU 1 (the reload step's).
    pub(super) fn gen_command(&self, seconds: f64, flows: u32, size: usize) -> Command {
        self.l2_generator(1, seconds, flows, size)
    }

    fn l2_generator(&self, cpu: u32, seconds: f64, flows: u32, size: usize) -> Command {
        let mut cmd = self.gen_base(&self.gen, cpu, seconds, flows, size);
        cmd.args(["--iface", "g0", "--src-mac", GEN_MAC, "--dst-mac", OV_MAC])
            .args(["--src", PEER, "--dst", RESOURCE]);
        cmd
    }

    /// A generator in `ns` pinned to `cpu`, before its direction's arguments.
    fn gen_base(&self, ns: &Netns, cpu: u32, seconds: f64, flows: u32, size: usize) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpu.to_string(), "nsenter"])
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(self.bin_dir.join("rp-bench"))
            .args(["gen", "--seconds", &seconds.to_string()])
            .args(["--flows", &flows.to_string(), "--size", &size.to_string()]);
        if size == FRAGMENTED {
            cmd.arg("--fragments");
        }
        cmd
    }

    /// The generators of one measurement. Generator k runs on CPU 1 − k
    /// and sends flows k·flows … (k+1)·flows − 1; the TUN writer is one
    /// process with a thread per CPU. Both directions share CPU 1.
    pub(super) fn generators(&self, mode: Mode, sc: &Scenario, seconds: f64) -> Vec<Command> {
        let cpus: Vec<u32> = (0..sc.cpus).map(|k| 1 - k % 2).collect();
        let forward = || -> Vec<Command> {
            if !mode.l3() {
                return cpus
                    .iter()
                    .enumerate()
                    .map(|(k, &cpu)| {
                        let mut cmd = self.l2_generator(cpu, seconds, sc.flows, sc.size);
                        cmd.args(["--first-flow", &(k as u32 * sc.flows).to_string()]);
                        cmd
                    })
                    .collect();
            }
            let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
            let mut cmd = self.gen_base(&self.dut, 1, seconds, sc.flows, sc.size);
            cmd.args(["--iface", "ov1", "--tun", "--cpus", &list.join(",")])
                .args(["--src-mac", LAN_MAC, "--dst-mac", SINK_MAC])
                .args(["--src", PEER, "--dst", RESOURCE]);
            vec![cmd]
        };
        let reply = || -> Vec<Command> {
            // Kernel forwarding and the bound do not translate: replies go
            // to the peer.
            let to = if matches!(mode, Mode::KernelForward | Mode::TcRedirect) {
                PEER
            } else {
                MASQUERADE
            };
            cpus.iter()
                .enumerate()
                .map(|(k, &cpu)| {
                    let mut cmd = self.gen_base(&self.sink, cpu, seconds, sc.flows, sc.size);
                    cmd.args(["--iface", "s0", "--src-mac", SINK_MAC, "--dst-mac", LAN_MAC])
                        .args(["--src", RESOURCE, "--dst", to, "--reply"])
                        .args(["--first-flow", &(k as u32 * sc.flows).to_string()]);
                    cmd
                })
                .collect()
        };
        match sc.direction {
            Direction::Forward => forward(),
            Direction::Reply => reply(),
            Direction::Both => forward().into_iter().chain(reply()).collect(),
        }
    }

    /// Replies answer flows: the forward direction opens them first.
    pub(super) fn open_reply_flows(&self, mode: Mode, sc: &Scenario) -> Result<()> {
        if sc.direction == Direction::Forward {
            return Ok(());
        }
        let warm = Scenario {
            direction: Direction::Forward,
            ..*sc
        };
        for mut cmd in self.generators(mode, &warm, 0.2) {
            output(&mut cmd)?;
        }
        Ok(())
    }

    /// Runs the generators side by side; the longest one's seconds.
    pub(super) fn generate(&self, mode: Mode, sc: &Scenario) -> Result<f64> {
        self.open_reply_flows(mode, sc)?;
        let children = self
            .generators(mode, sc, self.seconds)
            .into_iter()
            .map(|mut c| c.stdout(std::process::Stdio::piped()).spawn())
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut secs: f64 = 0.0;
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("generator failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            secs = secs.max(v["seconds"].as_f64().unwrap_or(self.seconds));
        }
        Ok(secs)
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

    /// The daemon on `config`: on the L2 overlay it attaches its own XDP
    /// programs to the overlay and the LAN in place of the pass-through
    /// (on an L3 overlay it has no XDP program: the LAN keeps ours, which
    /// veth needs to take the reply generator's frames).
    pub(super) fn start_daemon(&self, config: &std::path::Path, l3: bool) -> Result<Daemon> {
        if !l3 {
            self.detach("ov0")?;
            self.detach("lan0")?;
        }
        Daemon::start(&self.dut, config, &[])
    }

    pub(super) fn stop_daemon(&self, daemon: Daemon, l3: bool) -> Result<()> {
        drop(daemon);
        if !l3 {
            self.attach(&self.dut, "ov0", "rp_bench_pass", "ov0")?;
            self.attach(&self.dut, "lan0", "rp_bench_pass", "lan0")?;
        }
        Ok(())
    }

    /// Sets the device under test up for `mode`, measures, and tears it down.
    pub(super) fn measure(&self, mode: Mode, sc: &Scenario) -> Result<f64> {
        let mut daemon = None;
        match mode {
            Mode::RoutingPeerL3
            | Mode::RoutingPeerXdp
            | Mode::RoutingPeerL2Tc
            | Mode::PerCpuLru => {
                let path = self.work.path().join("rp.toml");
                std::fs::write(&path, workloads::daemon_config(mode, sc.rules))?;
                // The bench build's daemon loads the comparison object.
                let lru = "ROUTING_PEER_BENCH_PERCPU_LRU";
                if mode == Mode::PerCpuLru {
                    std::env::set_var(lru, "1");
                }
                let started = self.start_daemon(&path, mode.l3());
                std::env::remove_var(lru);
                daemon = Some(started?);
            }
            Mode::Nftables => {
                let path = self.work.path().join("nft.conf");
                std::fs::write(&path, workloads::bench_ruleset(sc.rules, "ov1"))?;
                run_cmd(self.dut.cmd("nft").args(["-f", &*path.to_string_lossy()]))?;
            }
            Mode::KernelForward => {}
            Mode::TcRedirect => {
                for (iface, program, pin) in Self::tc_bound_pins(sc) {
                    self.attach_at(&self.dut, iface, program, pin, true)?;
                }
            }
            Mode::XdpRedirect => {
                self.detach("ov0")?;
                self.attach(&self.dut, "ov0", "rp_bench_redirect", "ov0")?;
            }
        }
        let result = (|| {
            let before = self.sink_count()?;
            let secs = self.generate(mode, sc)?;
            Ok::<_, anyhow::Error>((self.sink_count()? - before, secs))
        })();
        match mode {
            Mode::RoutingPeerL3
            | Mode::RoutingPeerXdp
            | Mode::RoutingPeerL2Tc
            | Mode::PerCpuLru => {
                if let Some(d) = daemon.take() {
                    self.stop_daemon(d, mode.l3())?;
                }
            }
            Mode::Nftables => {
                run_cmd(
                    self.dut
                        .cmd("nft")
                        .args(["delete", "table", "inet", "rptbench"]),
                )?;
            }
            Mode::KernelForward => {}
            Mode::TcRedirect => {
                for (_, _, pin) in Self::tc_bound_pins(sc) {
                    self.detach(pin)?;
                }
            }
            Mode::XdpRedirect => {
                self.detach("ov0")?;
                self.attach(&self.dut, "ov0", "rp_bench_pass", "ov0")?;
            }
        }
        // The kernel's connections end with the mode: the next nftables
        // sample must open its flows afresh, as routing-peer's daemon does.
        if !mode.routing_peer() {
            self.dut
                .cmd("conntrack")
                .arg("-F")
                .output()?
                .status
                .success()
                .then_some(())
                .context("conntrack -F failed")?;
        }
        let (received, secs) = result?;
        if received == 0 {
            bail!("{}: the sinks received nothing", mode.name());
        }
        Ok(received as f64 / secs / 1e6)
    }
}
