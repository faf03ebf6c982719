//! Packet tests: crafted frames through BPF_PROG_TEST_RUN, asserting the
//! verdict, the rewritten bytes (checksums verified independently with
//! etherparse) and the exact counters. Need root, like the daemon.
//!
//! Each test runs on a thread inside its own network namespace, where a
//! veth LAN and overlay interface give the FIB lookups real routes.

use std::{collections::HashMap, net::IpAddr, path::Path};

use aya::{
    maps::{HashMap as BpfHashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use routing_peer_common::{
    map_names, program_names, CtEntry, CtKey, DatapathConfig, DropReason, Hook, ResourceCounters,
    CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT,
};
use routing_peer_testbed::Netns;

use super::policy_maps::PolicyMaps;
use crate::{compile, config, datapath, stats};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const ALICE: [u8; 4] = [100, 64, 0, 2];
const BOB: [u8; 4] = [100, 64, 0, 3];
const CAROL_SALES: [u8; 4] = [100, 64, 0, 4];
const WIKI: [u8; 4] = [198, 51, 100, 5];
const OTHER_HOST: [u8; 4] = [198, 51, 100, 9];
const RP_LAN: [u8; 4] = [198, 51, 100, 1];
const RP_OVERLAY: [u8; 4] = [100, 64, 0, 1];
const ETH_LEN: usize = 14;

/// The office fixture on overlay `ov0`, with `extra_policies`.
fn base_config(extra_policies: &str, masquerade: bool) -> String {
    crate::testing::office("ov0", masquerade, extra_policies)
}

/// The data path loaded in a namespace with routes, with `config_text` installed.
struct Dp {
    ebpf: Ebpf,
    state: PolicyMaps,
}

impl Dp {
    fn new(config_text: &str) -> Self {
        Self::with_sizes(config_text, &[])
    }

    fn with_sizes(config_text: &str, sizes: &[(&'static str, u32)]) -> Self {
        let mut ebpf = datapath::load(None, datapath::log_level_for(false), sizes).expect("load");
        for name in [
            program_names::OVERLAY_L2,
            program_names::OVERLAY_L3,
            program_names::LAN_TC,
            program_names::HOLD,
        ] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            tc.load().expect("TC program passes the verifier");
        }
        for name in [program_names::LAN_XDP, program_names::OVERLAY_XDP] {
            let xdp: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            xdp.load().expect("XDP program passes the verifier");
        }
        let state = PolicyMaps::init(&mut ebpf, DatapathConfig::default()).unwrap();
        let mut dp = Self { ebpf, state };
        dp.install(config_text);
        dp
    }

    fn install(&mut self, config_text: &str) {
        let loaded = config::parse(Path::new("test.toml"), config_text).expect("valid config");
        let self_addrs: Vec<IpAddr> = vec![RP_OVERLAY.into(), RP_LAN.into()];
        let compiled = compile::compile(
            &loaded.config,
            &self_addrs,
            &HashMap::new(),
            Default::default(),
        );
        self.state.install(&compiled.tables).unwrap();
    }

    /// Lets XDP redirect into `iface` (as `xdp_redirect_interfaces` does)
    /// and gives it a permanent neighbour, so the XDP FIB lookup resolves
    /// `neighbour`'s MAC. Returns the interface's index.
    fn xdp_egress(&mut self, iface: &str, neighbour: &str, mac: &str) -> u32 {
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: a NUL-terminated name; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let map = self.ebpf.map_mut(map_names::XDP_REDIRECT_IFACES).unwrap();
        BpfHashMap::<_, u32, u32>::try_from(map)
            .unwrap()
            .insert(ifindex, 1, 0)
            .unwrap();
        let status = std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                neighbour,
                "lladdr",
                mac,
                "dev",
                iface,
                "nud",
                "permanent",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "ip neigh replace {neighbour}");
        ifindex
    }

    fn set_config(&mut self, config: DatapathConfig) {
        self.state.set_config(config).unwrap();
    }

    fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let (verdict, out, _) = self.run_marked(program, frame, 0);
        (verdict, out)
    }

    /// Runs a TC program on `frame` carrying the skb mark `mark`; returns
    /// the verdict, the frame and the mark after it.
    fn run_marked(&mut self, program: &str, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        // struct __sk_buff: len, pkt_type, mark, …; 192 bytes in all.
        let mut ctx_in = [0u8; 192];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        let xdp = matches!(program, program_names::LAN_XDP | program_names::OVERLAY_XDP);
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (!xdp).then_some(&ctx_in[..]),
            ctx_out: (!xdp).then_some(&mut ctx_out[..]),
            ..Default::default()
        };
        let prog = self.ebpf.program_mut(program).unwrap();
        let result = match program {
            program_names::LAN_XDP | program_names::OVERLAY_XDP => {
                let xdp: &mut Xdp = prog.try_into().unwrap();
                xdp.test_run(opts)
            }
            _ => {
                let tc: &mut SchedClassifier = prog.try_into().unwrap();
                tc.test_run(opts)
            }
        }
        .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        let mark_out = u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]);
        (result.return_value, out, mark_out)
    }

    /// Overlay → LAN through the TC program (the L2 entry: the kernel's skb
    /// test run always supplies an Ethernet header).
    fn overlay(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::OVERLAY_L2, frame)
    }

    fn lan(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::LAN_XDP, frame)
    }

    /// The LAN's TC ingress program, which translates replies.
    fn lan_tc(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::LAN_TC, frame)
    }

    fn flows(&self) -> Vec<(CtKey, CtEntry)> {
        let map = self.ebpf.map(map_names::CONNTRACK).unwrap();
        let ct = BpfHashMap::<_, CtKey, CtEntry>::try_from(map).unwrap();
        ct.iter().map(|r| r.unwrap()).collect()
    }

    fn resource(&self, id: u32) -> ResourceCounters {
        let map = self.ebpf.map(map_names::RESOURCE_STATS).unwrap();
        let arr = PerCpuArray::<_, ResourceCounters>::try_from(map).unwrap();
        let mut total = ResourceCounters::default();
        arr.get(&id, 0).unwrap().iter().for_each(|c| total.add(c));
        total
    }

    fn drops(&self, reason: DropReason) -> u64 {
        stats::read_loaded(&self.ebpf).unwrap().drop(reason).packets
    }
}

/// Runs `test` inside a fresh namespace with LAN and overlay routes.
fn in_netns(test: impl FnOnce() + Send + 'static) {
    let ns = Netns::new("pkt").unwrap();
    ns.sh(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
         net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 && \
         ip link add lan0 type veth peer name lan0p && ip link set lan0p up && ip link set lan0 up && \
         ip addr add 198.51.100.1/24 dev lan0 && ip addr add 2001:db8:1::1/64 dev lan0 nodad && \
         ip link add ov0 type veth peer name ov0p && ip link set ov0p up && ip link set ov0 up && \
         ip addr add 100.64.0.1/10 dev ov0 && ip addr add 2001:db8:100::1/64 dev ov0 nodad",
    )
    .unwrap();
    ns.enter(test).unwrap();
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    let b = match flags {
        "S" => b.syn(),
        "SA" => b.syn().ack(2000),
        "A" => b.ack(2000),
        "F" => b.fin().ack(2000),
        _ => b,
    };
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .unwrap();
    f
}

/// (src ip, dst ip, sport, dport) of a frame, after checking every checksum.
fn checked(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let (src, dst, l3_ok): (IpAddr, IpAddr, bool) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            (
                h.source.into(),
                h.destination.into(),
                h.calc_header_checksum() == h.header_checksum,
            )
        }
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            true,
        ),
        _ => panic!("no IP"),
    };
    assert!(l3_ok, "IPv4 header checksum");
    let payload = p.transport.as_ref().unwrap();
    let (sport, dport) = match (payload, &p.net) {
        (TransportSlice::Tcp(t), Some(NetSlice::Ipv4(ip))) => {
            let h = t.to_header();
            let want = h
                .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                .unwrap();
            assert_eq!(h.checksum, want, "TCP checksum");
            (h.source_port, h.destination_port)
        }
        (TransportSlice::Udp(u), Some(NetSlice::Ipv4(ip))) => {
            let h = u.to_header();
            let want = h
                .calc_checksum_ipv4(&ip.header().to_header(), u.payload())
                .unwrap();
            assert_eq!(h.checksum, want, "UDP checksum");
            (h.source_port, h.destination_port)
        }
        (TransportSlice::Udp(u), Some(NetSlice::Ipv6(ip))) => {
            let h = u.to_header();
            let want = h
                .calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                .unwrap();
            assert_eq!(h.checksum, want, "UDPv6 checksum");
            (h.source_port, h.destination_port)
        }
        (TransportSlice::Tcp(t), Some(NetSlice::Ipv6(ip))) => {
            let h = t.to_header();
            let want = h
                .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                .unwrap();
            assert_eq!(h.checksum, want, "TCPv6 checksum");
            (h.source_port, h.destination_port)
        }
        (TransportSlice::Icmpv4(i), _) => {
            let h = i.header();
            let want = h.icmp_type.calc_checksum(i.payload());
            assert_eq!(h.checksum, want, "ICMP checksum");
            let id = match h.icmp_type {
                etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => {
                    e.id
                }
                _ => 0,
            };
            (id, id)
        }
        (TransportSlice::Icmpv6(i), Some(NetSlice::Ipv6(ip))) => {
            let h = i.header();
            let want = h
                .icmp_type
                .calc_checksum(ip.header().source(), ip.header().destination(), i.payload())
                .unwrap();
            assert_eq!(h.checksum, want, "ICMPv6 checksum");
            (0, 0)
        }
        other => panic!("unexpected transport {other:?}"),
    };
    (src, dst, sport, dport)
}

fn ip(a: [u8; 4]) -> IpAddr {
    a.into()
}

fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 7)
    } else {
        b.icmpv4_echo_request(id, 7)
    };
    let mut f = Vec::new();
    b.write(&mut f, b"ping-payload").unwrap();
    f
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    crate::frames::set_ipv4_checksum(&mut frame[ETH_LEN..ETH_LEN + 20]);
}

fn udp_v6(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let src = "2001:db8:100::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let dst = "2001:db8:1::5"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .udp(40000, 53)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

mod conntrack;
mod events;
mod fail_closed;
mod frag;
mod fuzz;
mod icmp;
mod nat;
mod parse;
mod policy;
mod xdp;
