//! Benchmark helper driven by `cargo xtask bench`; not part of the product.
//!
//! - `gen`: BPF_PROG_TEST_RUN live frames out of an interface (there is no
//!   pktgen on these kernels, and xdp-trafficgen fails), or packets written
//!   into a TUN device (the L3 overlay, `tun.rs`).
//! - `attach`: pins a bench program to an interface: XDP (sink, pass,
//!   redirect) or TC (`rp_bench_tc_sink` at egress, the TC-redirect bound
//!   at ingress).
//! - `count`: reads a pinned sink's counter.
//! - `cost`: nanoseconds per packet of the overlay program, via test runs.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{
        links::FdLink, SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp,
        XdpMode,
    },
    EbpfLoader,
};
use clap::{Parser, Subcommand};
use etherparse::PacketBuilder;
use routing_peer::{compile, config, datapath, frames};
use routing_peer_common::{program_names, DatapathConfig, PacketCounter};

mod tun;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send UDP frames out of `iface` for `seconds`, cycling through `flows` flows.
    Gen {
        #[arg(long)]
        iface: String,
        /// `iface` is a multi-queue TUN device: write IPv4 packets into it,
        /// one writer thread per CPU in `--cpus`.
        #[arg(long)]
        tun: bool,
        /// The writers' CPUs (`--tun`), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        cpus: Vec<usize>,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1)]
        flows: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        src_mac: String,
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src: std::net::Ipv4Addr,
        #[arg(long)]
        dst: std::net::Ipv4Addr,
        /// Send each `size`-byte UDP datagram as IPv4 fragments of 1480
        /// bytes (`size` must be 4008: three fragments).
        #[arg(long)]
        fragments: bool,
        /// The first flow's number: generators running side by side send
        /// distinct flows.
        #[arg(long, default_value_t = 0)]
        first_flow: u32,
        /// The reply direction: the flow's client port is the destination.
        #[arg(long)]
        reply: bool,
    },
    /// Attach one of the bench programs to `iface`, pinned under `pin`.
    Attach {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        program: String,
        #[arg(long)]
        pin: PathBuf,
        /// A TC program at ingress (default: egress).
        #[arg(long)]
        ingress: bool,
    },
    /// Print the packets a pinned sink has counted.
    Count {
        #[arg(long)]
        pin: PathBuf,
    },
    /// Nanoseconds per packet of the overlay program for established, new
    /// and denied packets, with the configuration in `config` installed
    /// (xtask writes it: peer 100.64.0.2 may send UDP 10000-10127 to 198.51.100.2).
    Cost {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 2_000_000)]
        repeat: u32,
    },
}

fn mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}

/// As in the daemon, so the compile and install figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Gen {
            iface,
            tun,
            cpus,
            seconds,
            flows,
            size,
            src_mac,
            dst_mac,
            src,
            dst,
            fragments,
            first_flow,
            reply,
        } => {
            let frames = Frames {
                flows,
                size,
                src_mac: mac(&src_mac)?,
                dst_mac: mac(&dst_mac)?,
                src,
                dst,
                fragments,
                first_flow,
                reply,
            };
            if tun {
                gen_tun(&iface, &cpus, seconds, &frames)
            } else {
                gen(&iface, seconds, frames)
            }
        }
        Command::Attach {
            iface,
            program,
            pin,
            ingress,
        } => attach(&iface, &program, &pin, ingress),
        Command::Count { pin } => {
            let data = MapData::from_pin(pin.join("BENCH_SINK"))?;
            let arr = PerCpuArray::<_, PacketCounter>::try_from(Map::PerCpuArray(data))?;
            let mut total = PacketCounter::default();
            arr.get(&0, 0)?.iter().for_each(|c| total.add(c));
            println!("{}", total.packets);
            Ok(())
        }
        Command::Cost { config, repeat } => cost(&config, repeat),
    }
}

/// What the generator sends.
struct Frames {
    flows: u32,
    size: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    fragments: bool,
    first_flow: u32,
    reply: bool,
}

impl Frames {
    /// The first frame: the program rewrites its headers for every frame.
    fn template(&self) -> Result<Vec<u8>> {
        // `size` is the frame; with fragments, the UDP datagram, whose first
        // 1480 bytes fill a 1514-byte frame (the program writes the rest).
        let payload = if self.fragments {
            vec![0x5au8; self.size - 8]
        } else {
            vec![0x5au8; self.size.saturating_sub(14 + 20 + 8)]
        };
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src.octets(), self.dst.octets(), 64)
            .udp(40_000, 10_000)
            .write(&mut frame, &payload)?;
        // No UDP checksum: legal for IPv4, and nothing to recompute.
        frame[14 + 20 + 6] = 0;
        frame[14 + 20 + 7] = 0;
        Ok(frame)
    }

    /// The packets a TUN writer cycles through: the frame without its
    /// Ethernet header, or the datagram's three fragments.
    fn packets(&self) -> Result<Vec<Vec<u8>>> {
        let mut frame = self.template()?;
        if !self.fragments {
            return Ok(vec![frame.split_off(14)]);
        }
        // The whole datagram (the template holds its first 1480 bytes).
        let mut whole = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src.octets(), self.dst.octets(), 64)
            .udp(40_000, 10_000)
            .write(&mut whole, &vec![0x5au8; self.size - 8])?;
        whole[14 + 20 + 6] = 0;
        whole[14 + 20 + 7] = 0;
        Ok(frames::ipv4_fragments(&whole, 1480, 0x5151)
            .into_iter()
            .map(|mut f| f.split_off(14))
            .collect())
    }
}

/// Rewrites packet `index` of a cycle: the first carries flow `flow`'s
/// ports (as the XDP generator's `flow_ports`); a fragment, its datagram's
/// IP id (`cycle`), the header checksum fixed.
fn prepare_packet(packet: &mut [u8], index: u32, cycle: u32, flow: u32) {
    if index == 0 {
        let client = 40_000 + (flow % 20_000) as u16;
        let service = 10_000 + ((flow / 20_000) % 128) as u16;
        packet[20..22].copy_from_slice(&client.to_be_bytes());
        packet[22..24].copy_from_slice(&service.to_be_bytes());
    }
    // More fragments, or an offset: a fragment.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        packet[4..6].copy_from_slice(&(cycle as u16).to_be_bytes());
        frames::set_ipv4_checksum(&mut packet[..20]);
    }
}

fn gen_tun(iface: &str, cpus: &[usize], seconds: f64, frames: &Frames) -> Result<()> {
    anyhow::ensure!(
        !frames.reply,
        "--reply frames go out of a LAN veth, not a TUN"
    );
    let packets = frames.packets()?;
    let (sent, secs) = tun::write(
        iface,
        cpus,
        seconds,
        &packets,
        frames.first_flow,
        frames.flows,
        prepare_packet,
    )?;
    println!("{}", serde_json::json!({ "sent": sent, "seconds": secs }));
    Ok(())
}

fn gen(iface: &str, seconds: f64, frames: Frames) -> Result<()> {
    anyhow::ensure!(
        !frames.fragments || frames.size == 4008,
        "--fragments sends 4008-byte datagrams: pass --size 4008"
    );
    let mut ebpf = EbpfLoader::new().load(datapath::BENCH_OBJECT)?;
    {
        let map = ebpf.map_mut("BENCH_GEN").context("BENCH_GEN")?;
        let mut gen = Array::<_, u32>::try_from(map)?;
        gen.set(0, frames.flows, 0)?;
        gen.set(1, u32::from(frames.fragments), 0)?;
        gen.set(2, frames.first_flow, 0)?;
        gen.set(3, u32::from(frames.reply), 0)?;
    }
    {
        let prog: &mut Xdp = ebpf
            .program_mut("rp_bench_gen")
            .context("rp_bench_gen missing")?
            .try_into()?;
        prog.load()?;
    }
    let mut frame = frames.template()?;
    if frames.fragments {
        frame.truncate(14 + 1500);
    }
    {
        let mut words = [0u32; 11];
        for (i, w) in words.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            for (j, byte) in b.iter_mut().enumerate() {
                *byte = frame.get(4 * i + j).copied().unwrap_or(0);
            }
            *w = u32::from_ne_bytes(b);
        }
        let map = ebpf.map_mut("BENCH_TEMPLATE").context("BENCH_TEMPLATE")?;
        Array::<_, [u32; 11]>::try_from(map)?.set(0, words, 0)?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut("rp_bench_gen")
        .context("rp_bench_gen missing")?
        .try_into()?;
    let ifindex = datapath::ifindex(iface)?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    // The kernel wants data_end == the frame's length, data and data_meta 0.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let started = Instant::now();
    let mut sent: u64 = 0;
    const BATCH: u32 = 1 << 16;
    while started.elapsed().as_secs_f64() < seconds {
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: BATCH,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        };
        prog.test_run(opts)?;
        sent += u64::from(BATCH);
    }
    println!(
        "{}",
        serde_json::json!({ "sent": sent, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}

fn attach(iface: &str, program: &str, pin: &std::path::Path, ingress: bool) -> Result<()> {
    std::fs::create_dir_all(pin)?;
    let mut loader = EbpfLoader::new();
    let sink_pin = pin.join("BENCH_SINK");
    loader.map_pin_path("BENCH_SINK", sink_pin.as_path());
    let mut ebpf = loader.load(datapath::BENCH_OBJECT)?;
    let prog = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?;
    let link: FdLink = if let Ok(tc) = <&mut SchedClassifier>::try_from(&mut *prog) {
        tc.load()?;
        let at = if ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let id = tc.attach(iface, at)?;
        tc.take_link(id)?.try_into()?
    } else {
        let xdp: &mut Xdp = prog.try_into()?;
        xdp.load()?;
        let id = xdp
            .attach(iface, XdpMode::Driver)
            .or_else(|_| xdp.attach(iface, XdpMode::Skb))?;
        xdp.take_link(id)?.try_into()?
    };
    link.pin(pin.join("link"))?;
    Ok(())
}

/// Runs inside a namespace with ov0 (100.64.0.1/10) and lan0 (198.51.100.1/24) veths.
fn cost(config_path: &std::path::Path, repeat: u32) -> Result<()> {
    let mut ebpf = datapath::load(None, datapath::log_level_for(false), &[])?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::OVERLAY_L2)
        .context("the overlay program is missing")?
        .try_into()?;
    tc.load()?;
    let loaded = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules = loaded.config.policies.len();
    let self_addrs: Vec<IpAddr> = vec!["100.64.0.1".parse()?, "198.51.100.1".parse()?];
    let started = Instant::now();
    let compiled = compile::compile(
        &loaded.config,
        &self_addrs,
        &HashMap::new(),
        Default::default(),
    );
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut state = datapath::policy_maps::PolicyMaps::init(&mut ebpf, DatapathConfig::default())?;
    let started = Instant::now();
    state.install(&compiled.tables)?;
    let install_ms = started.elapsed().as_secs_f64() * 1e3;
    // A one-rule change, as a reload applies it: in place (the daemon's
    // path when only policies changed), and by a full recompile for
    // comparison. The rule in the middle goes: with ids by position every
    // later rule would be renumbered, and the peers' group loses a rule.
    let mut changed = loaded.config.clone();
    let middle = changed.policies.len() / 2;
    changed.policies.remove(middle);
    let mut updated = compiled.clone();
    let started = Instant::now();
    let in_place = compile::apply_policy_change(&mut updated, &loaded.config, &changed)
        .map_err(|e| anyhow::anyhow!("a one-rule change was not applied in place: {e}"))?;
    let diff = state.install_diff(&in_place)?;
    let one_rule_change_ms = started.elapsed().as_secs_f64() * 1e3;
    state.install(&compiled.tables)?;
    let started = Instant::now();
    let recompiled = compile::compile(
        &changed,
        &self_addrs,
        &HashMap::new(),
        compiled.as_previous(),
    );
    let full_diff = state.install(&recompiled.tables)?;
    let one_rule_full_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        full_diff == diff,
        "in place and full recompile wrote different diffs"
    );
    state.install(&compiled.tables)?;

    let frame = |sport: u16, dport: u16| -> Result<Vec<u8>> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([100, 64, 0, 2], [198, 51, 100, 2], 64)
            .udp(sport, dport)
            .write(&mut f, &[0u8; 18])?;
        Ok(f)
    };
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::OVERLAY_L2)
        .context("the overlay program is missing")?
        .try_into()?;
    let run = |data: &[u8], repeat: u32| -> Result<(u32, f64)> {
        let mut out = vec![0u8; data.len() + 64];
        let r = tc.test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        // The kernel reports the mean duration of one run.
        Ok((r.return_value, r.duration.as_nanos() as f64))
    };
    // The kernel repeats a run on the same skb without restoring it: after
    // the first, a forwarded packet is already translated (its source is
    // no peer's any more). What is forwarded is timed run by run.
    let each = |data: &[u8], n: u32| -> Result<(u32, f64)> {
        let mut total = 0.0;
        let mut verdict = 0;
        for _ in 0..n {
            let (v, ns) = run(data, 1)?;
            verdict = v;
            total += ns;
        }
        Ok((verdict, total / f64::from(n)))
    };
    let single_runs = repeat.clamp(1, 20_000);
    let established = frame(4000, 10_000)?;
    each(&established, 1)?; // creates the flow
    let (verdict, est_ns) = each(&established, single_runs)?;
    anyhow::ensure!(
        verdict == 7,
        "the established packet was not forwarded: verdict {verdict}"
    );
    // A new flow each time is impossible with one frame: time the first
    // packet of many distinct flows instead.
    let mut new_total = 0.0;
    let new_flows = 2000u16;
    for i in 0..new_flows {
        new_total += each(&frame(20_000 + i, 10_001)?, 1)?.1;
    }
    // A 4000-byte datagram in 1480-byte fragments: the first opens the
    // flow and records the verdict; a later one is what is timed.
    let fragments = {
        let mut whole = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([100, 64, 0, 2], [198, 51, 100, 2], 64)
            .udp(4002, 10_000)
            .write(&mut whole, &[0u8; 3992])?;
        frames::ipv4_fragments(&whole, 1480, 0x5151)
    };
    anyhow::ensure!(
        each(&fragments[0], 1)?.0 == 7,
        "the first fragment was not forwarded"
    );
    let (verdict, later_fragment_ns) = each(&fragments[1], single_runs)?;
    anyhow::ensure!(
        verdict == 7,
        "the later fragment was not forwarded: verdict {verdict}"
    );
    let denied = frame(4001, 9999)?;
    let (verdict, denied_ns) = each(&denied, single_runs)?;
    anyhow::ensure!(verdict == 2, "the denied case was not denied");
    println!(
        "{}",
        serde_json::json!({
            "rules": rules,
            "peers": loaded.config.peers.len(),
            "policy_entries": compiled.tables.policy.len(),
            "one_rule_change_ms": one_rule_change_ms,
            "one_rule_full_recompile_ms": one_rule_full_ms,
            "one_rule_change_entries": diff.written + diff.removed,
            "compile_ms": compile_ms,
            "install_ms": install_ms,
            "established_ns": est_ns,
            "new_flow_ns": new_total / f64::from(new_flows),
            "denied_ns": denied_ns,
            "later_fragment_ns": later_fragment_ns,
        })
    );
    Ok(())
}
