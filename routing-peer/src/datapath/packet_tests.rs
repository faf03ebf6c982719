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
use routing_peer_e2e::Netns;

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

const KEYS: [&str; 3] = [
    "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=",
    "YW5vdGhlciBrZXkgYW5vdGhlciBrZXkgYW5vdGhlcg0=",
    "dGhpcmQga2V5IHRoaXJkIGtleSB0aGlyZCBrZXkgdGg=",
];

fn base_config(extra_policies: &str, masquerade: bool) -> String {
    format!(
        r#"
[routing_peer]
name = "gw"
overlay_interface = "ov0"
overlay_addresses = ["100.64.0.1/10", "2001:db8:100::1/64"]
private_key_file = "/dev/null"
lan_interfaces = ["lan0"]
groups = ["Gateways"]

[[peers]]
name = "alice"
public_key = "{}"
addresses = ["100.64.0.2", "2001:db8:100::2"]
groups = ["Development"]

[[peers]]
name = "bob"
public_key = "{}"
addresses = ["100.64.0.3"]
groups = ["Development"]

[[peers]]
name = "carol"
public_key = "{}"
addresses = ["100.64.0.4"]
groups = ["Sales"]

[[networks]]
name = "Berlin Office"
masquerade = {masquerade}
[[networks.resources]]
name = "wiki"
address = "198.51.100.5/32"
groups = ["Internal Apps"]
[[networks.resources]]
name = "office-lan"
address = "198.51.100.0/24"
groups = ["LAN"]
[[networks.resources]]
name = "wiki6"
address = "2001:db8:1::5/128"
groups = ["Internal Apps"]

[[policies]]
name = "dev-to-apps"
sources = ["Development"]
destinations = ["Internal Apps"]
protocol = "tcp"
ports = [443]
{extra_policies}
"#,
        KEYS[0], KEYS[1], KEYS[2]
    )
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
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
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
        (result.return_value, out)
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

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn allowed_flow_is_masqueraded_tracked_and_counted() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let syn = tcp(ALICE, WIKI, 40000, 443, "S", &[]);
        let (verdict, out) = dp.overlay(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // Source port preserved, source address the LAN address, TTL decremented.
        assert_eq!(checked(&out), (ip(RP_LAN), ip(WIKI), 40000, 443));
        assert_eq!(out[ETH_LEN + 8], 63);

        let flows = dp.flows();
        assert_eq!(flows.len(), 1);
        let (key, entry) = flows[0];
        assert_eq!(key.peer_port, 40000);
        assert_eq!(entry.state, CT_TCP_SYN_SENT);
        assert_eq!(entry.rule_id, 1);
        assert_eq!(entry.resource_id, 1, "the /32 wins over the /24");
        assert_eq!(entry.nat_port, 40000);
        // Flow bytes are IP bytes: the same whether a hook sees L2 or L3.
        let ip_len = |f: &[u8]| (f.len() - ETH_LEN) as u64;
        assert_eq!((entry.fwd.packets, entry.fwd.bytes), (1, ip_len(&syn)));

        // The reply, addressed to the masquerade address: XDP leaves it to
        // TC (the overlay takes no XDP redirects), which sends it to Alice.
        let syn_ack = tcp(WIKI, RP_LAN, 443, 40000, "SA", &[]);
        let (verdict, out) = dp.lan(&syn_ack);
        assert_eq!((verdict, out.as_slice()), (XDP_PASS, syn_ack.as_slice()));
        let (verdict, out) = dp.lan_tc(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40000));

        let data = tcp(ALICE, WIKI, 40000, 443, "A", b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(dp.overlay(&data).0, TC_ACT_REDIRECT);
        let (_, entry) = dp.flows()[0];
        assert_eq!(entry.state, CT_TCP_ESTABLISHED);
        assert_eq!(
            (entry.fwd.packets, entry.fwd.bytes),
            (2, ip_len(&syn) + ip_len(&data))
        );
        assert_eq!((entry.rev.packets, entry.rev.bytes), (1, ip_len(&syn_ack)));
        let wiki = dp.resource(1);
        assert_eq!(wiki.new_flows, 1);
        assert_eq!(
            (wiki.fwd.packets, wiki.fwd.bytes),
            (2, ip_len(&syn) + ip_len(&data))
        );
        assert_eq!((wiki.rev.packets, wiki.rev.bytes), (1, ip_len(&syn_ack)));

        let fin = tcp(ALICE, WIKI, 40000, 443, "F", &[]);
        assert_eq!(dp.overlay(&fin).0, TC_ACT_REDIRECT);
        assert_eq!(dp.flows()[0].1.state, CT_TCP_CLOSING);

        // A TTL about to expire goes to the kernel, which answers time-exceeded.
        let mut last_hop = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(ALICE, WIKI, 1)
            .tcp(40001, 443, 1, 65535)
            .syn()
            .write(&mut last_hop, &[])
            .unwrap();
        let (verdict, out) = dp.overlay(&last_hop);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, last_hop, "untouched: no NAT before the kernel answers");
    });
}

/// Where the overlay takes XDP redirects (an L2 stand-in whose peer runs
/// XDP), XDP translates and redirects replies itself, checksums included.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn xdp_fast_path_translates_and_redirects_replies() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        // Our own neighbour entry, so the XDP FIB lookup resolves Alice's MAC.
        dp.xdp_egress("ov0", "100.64.0.2", "02:00:00:00:00:aa");
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40050, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        let syn_ack = tcp(WIKI, RP_LAN, 443, 40050, "SA", &[]);
        let (verdict, out) = dp.lan(&syn_ack);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40050));
        assert_eq!(
            &out[..6],
            &[2, 0, 0, 0, 0, 0xaa],
            "destination MAC from the FIB"
        );
        assert_eq!(out[ETH_LEN + 8], 63, "TTL decremented");
        assert_eq!(dp.flows()[0].1.rev.packets, 1);
    });
}

/// The overlay's XDP path: where the egress takes XDP redirects, the whole
/// forward path (policy, conntrack, masquerade) runs without an skb.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn xdp_overlay_forwards_and_masquerades_without_an_skb() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let lan0 = dp.xdp_egress("lan0", "198.51.100.5", "02:00:00:00:00:55");
        let syn = tcp(ALICE, WIKI, 40060, 443, "S", &[]);
        let (verdict, out) = dp.run(program_names::OVERLAY_XDP, &syn);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(checked(&out), (ip(RP_LAN), ip(WIKI), 40060, 443));
        assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 0x55]);
        assert_eq!(dp.flows()[0].1.fwd.packets, 1);
        // Denied traffic is dropped right there.
        let (verdict, _) = dp.run(
            program_names::OVERLAY_XDP,
            &tcp(ALICE, WIKI, 40061, 80, "S", &[]),
        );
        assert_eq!(verdict, XDP_DROP);
        // Without an XDP-capable egress it passes untouched, state untouched, to TC.
        let map = dp.ebpf.map_mut(map_names::XDP_REDIRECT_IFACES).unwrap();
        BpfHashMap::<_, u32, u32>::try_from(map)
            .unwrap()
            .remove(&lan0)
            .unwrap();
        let other = tcp(ALICE, WIKI, 40062, 443, "S", &[]);
        let (verdict, out) = dp.run(program_names::OVERLAY_XDP, &other);
        assert_eq!((verdict, out), (XDP_PASS, other));
        assert_eq!(dp.flows().len(), 1);
    });
}

/// RFC 5508: an ICMP error about a masqueraded flow goes back to the peer,
/// quoted packet translated, checksums exact; fragmentation-needed included,
/// so path-MTU discovery works through the tunnel.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmp_errors_about_masqueraded_flows_are_translated_back() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        dp.overlay(&udp(ALICE, OTHER_HOST, 5353, 53, b"a"));
        let (_, out) = dp.overlay(&udp(BOB, OTHER_HOST, 5353, 53, b"b"));
        let bob_external = checked(&out).2;
        assert_ne!(bob_external, 5353);
        // What a LAN router quotes: our packet as it left, masqueraded.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4(RP_LAN, OTHER_HOST, 63)
            .udp(bob_external, 53)
            .write(&mut quoted, b"b")
            .unwrap();
        quoted.truncate(28);
        let mut error = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([198, 51, 100, 254], RP_LAN, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1200,
                },
            ))
            .write(&mut error, &quoted)
            .unwrap();
        // XDP leaves it to TC, which translates and sends it to Bob.
        assert_eq!(dp.lan(&error).0, XDP_PASS);
        let (verdict, out) = dp.lan_tc(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, dst, _, _) = checked(&out); // outer IP and ICMP checksums exact
        assert_eq!(dst, ip(BOB));
        let inner = etherparse::Ipv4HeaderSlice::from_slice(&out[ETH_LEN + 28..]).unwrap();
        assert_eq!(inner.source(), BOB, "quoted source translated");
        assert_eq!(inner.destination(), OTHER_HOST);
        let header = inner.to_header();
        assert_eq!(
            header.calc_header_checksum(),
            header.header_checksum,
            "quoted IP checksum"
        );
        let sport = u16::from_be_bytes([out[ETH_LEN + 48], out[ETH_LEN + 49]]);
        assert_eq!(sport, 5353, "quoted source port translated");
        // An error quoting nothing we track is the kernel's.
        let mut stray = error.clone();
        stray[ETH_LEN + 28 + 20] ^= 0xff; // another source port
        assert_eq!(dp.lan_tc(&stray).0, TC_ACT_OK);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmpv6_packet_too_big_reaches_the_peer() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let (alice6, wiki6, rp6) = (
            v6("2001:db8:100::2"),
            v6("2001:db8:1::5"),
            v6("2001:db8:1::1"),
        );
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(alice6, wiki6, 64)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        assert_eq!(dp.overlay(&syn).0, TC_ACT_REDIRECT);
        let mut quoted = Vec::new();
        PacketBuilder::ipv6(rp6, wiki6, 63)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut quoted, &[])
            .unwrap();
        quoted.truncate(48);
        let mut error = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(v6("2001:db8:1::fe"), rp6, 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut error, &quoted)
            .unwrap();
        let (verdict, out) = dp.lan_tc(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, dst, _, _) = checked(&out); // ICMPv6 checksum over the new pseudo-header
        assert_eq!(dst, IpAddr::from(alice6));
        let inner = etherparse::Ipv6HeaderSlice::from_slice(&out[ETH_LEN + 48..]).unwrap();
        assert_eq!(inner.source(), alice6, "quoted source translated");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn syn_mss_is_clamped_to_the_overlay_mtu() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        dp.set_config(DatapathConfig {
            mss_clamp: 1240,
            ..DatapathConfig::default()
        });
        let syn = |mss: u16| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(ALICE, WIKI, 64)
                .tcp(40070 + mss % 7, 443, 1, 65535)
                .syn()
                .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(mss)])
                .unwrap()
                .write(&mut f, &[])
                .unwrap();
            f
        };
        let mss_of = |frame: &[u8]| {
            let p = SlicedPacket::from_ethernet(frame).unwrap();
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!()
            };
            t.options_iterator()
                .find_map(|o| match o {
                    Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                    _ => None,
                })
                .unwrap()
        };
        let (verdict, out) = dp.overlay(&syn(1460));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        checked(&out); // checksums still exact
        assert_eq!(mss_of(&out), 1240);
        let (_, out) = dp.overlay(&syn(1200));
        assert_eq!(mss_of(&out), 1200, "a smaller MSS is left alone");
    });
}

/// LRU evictions are not reported by the kernel; they are derived from the
/// counted inserts and removals. A full table evicts, and says how much.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_full_conntrack_table_evicts_and_the_evictions_are_counted() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::with_sizes(&base_config(extra, false), &[(map_names::CONNTRACK, 1024)]);
        const FLOWS: u16 = 3000;
        for port in 0..FLOWS {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, 10_000 + port, 53, b"x"))
                    .0,
                TC_ACT_REDIRECT
            );
        }
        let live = dp.flows().len() as u64;
        assert!(live <= 1024, "{live}");
        let events = dp.ebpf.map(map_names::CT_EVENTS).unwrap();
        let gc = dp.ebpf.map(map_names::CT_GC).unwrap();
        let acct = stats::ct_accounting(events, gc, live).unwrap();
        assert_eq!(acct.inserts, u64::from(FLOWS));
        assert_eq!(acct.removals, 0);
        assert_eq!(acct.evictions, u64::from(FLOWS) - live);
        assert!(acct.evictions >= u64::from(FLOWS) - 1024);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn default_deny_and_every_match_type() {
    in_netns(|| {
        let extra = r#"
[[policies]]
name = "dev-lan-ranges"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"
port_ranges = [{ start = 8000, end = 8080 }]

[[policies]]
name = "dev-lan-all"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "all"

[[policies]]
name = "no-ssh"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "tcp"
ports = [22]
action = "drop"
"#;
        let mut dp = Dp::new(&base_config(extra, true));
        // Wiki: only TCP 443 (via its group), and whatever the /24 grants.
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40001, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        // The /24's "all" grants ICMP and any port; the drop still wins for 22.
        assert_eq!(
            dp.overlay(&tcp(ALICE, OTHER_HOST, 40002, 80, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&udp(BOB, OTHER_HOST, 40003, 8080, b"x")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, OTHER_HOST, 40004, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40005, 22, "S", &[])).0,
            TC_ACT_SHOT,
            "nested /32 inherits the drop"
        );
        assert_eq!(dp.drops(DropReason::PolicyDrop), 2);
        // Sales has no policy at all: default deny.
        assert_eq!(
            dp.overlay(&tcp(CAROL_SALES, WIKI, 40006, 443, "S", &[])).0,
            TC_ACT_SHOT
        );
        // Not a resource.
        assert_eq!(
            dp.overlay(&tcp(ALICE, [203, 0, 113, 7], 40007, 443, "S", &[]))
                .0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::NoPolicy), 2);
        // An overlay source that is no peer.
        assert_eq!(
            dp.overlay(&tcp([100, 64, 9, 9], WIKI, 40008, 443, "S", &[]))
                .0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::UnknownSource), 1);
        assert_eq!(
            dp.resource(1).denied.packets,
            2,
            "wiki: carol and the ssh drop"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn port_ranges_are_inclusive_at_both_ends() {
    in_netns(|| {
        let extra = r#"
[[policies]]
name = "range"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"
port_ranges = [{ start = 8000, end = 8080 }]
"#;
        let mut dp = Dp::new(&base_config(extra, true));
        for (port, want) in [
            (7999, TC_ACT_SHOT),
            (8000, TC_ACT_REDIRECT),
            (8080, TC_ACT_REDIRECT),
            (8081, TC_ACT_SHOT),
        ] {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, 5000 + port, port, b"p"))
                    .0,
                want,
                "port {port}"
            );
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn input_chain_needs_a_peer_policy() {
    in_netns(|| {
        let lan_ssh = r#"
[[policies]]
name = "lan-ssh"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "tcp"
ports = [22]
"#;
        let mut dp = Dp::new(&base_config(lan_ssh, true));
        // The /24 resource contains the routing peer's LAN address, yet the
        // resource policy never opens the routing peer itself.
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_LAN, 40010, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_OVERLAY, 40011, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        let peer_ssh = format!(
            "{lan_ssh}\n[[policies]]\nname = \"ssh-to-gw\"\nkind = \"peer\"\nsources = [\"Development\"]\ndestinations = [\"Gateways\"]\nprotocol = \"tcp\"\nports = [22]\n"
        );
        dp.install(&base_config(&peer_ssh, true));
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_LAN, 40012, 22, "S", &[])).0,
            TC_ACT_OK,
            "delivered locally"
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_OVERLAY, 40013, 22, "S", &[])).0,
            TC_ACT_OK
        );
        assert_eq!(
            dp.overlay(&tcp(CAROL_SALES, RP_LAN, 40014, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert!(
            dp.flows().is_empty(),
            "the input chain is not forwarded, so not NATed"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn lan_initiated_traffic_to_the_overlay_is_dropped() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        assert_eq!(dp.lan(&tcp(WIKI, ALICE, 443, 40000, "S", &[])).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::LanUnsolicited), 1);
        // LAN traffic to the routing peer itself is the host's business.
        assert_eq!(dp.lan(&tcp(WIKI, RP_LAN, 5555, 22, "S", &[])).0, XDP_PASS);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn nat_preserves_ports_and_resolves_collisions_endpoint_independently() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let (_, out) = dp.overlay(&udp(ALICE, OTHER_HOST, 45353, 53, b"a"));
        assert_eq!(checked(&out).2, 45353, "port preserved inside the pool");
        // Bob uses the same source port: he must get another one.
        let (_, out) = dp.overlay(&udp(BOB, OTHER_HOST, 45353, 53, b"b"));
        let bob_port = checked(&out).2;
        let cfg = DatapathConfig::default();
        assert!(
            (cfg.snat_port_min..=cfg.snat_port_max).contains(&bob_port),
            "{bob_port}"
        );
        // Alice to another remote keeps her mapping (endpoint-independent).
        let (_, out) = dp.overlay(&udp(ALICE, WIKI, 45353, 53, b"c"));
        assert_eq!(checked(&out).2, 45353);
        // Replies reach the right peer.
        let (_, out) = dp.lan_tc(&udp(OTHER_HOST, RP_LAN, 53, bob_port, b"r"));
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(BOB), 53, 45353));
        let (_, out) = dp.lan_tc(&udp(OTHER_HOST, RP_LAN, 53, 45353, b"r"));
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(ALICE), 53, 45353));
    });
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

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmp_echo_is_translated_both_ways() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"ping\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"icmp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let (verdict, out) = dp.overlay(&icmp_echo(ALICE, OTHER_HOST, 40777, false));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(RP_LAN), ip(OTHER_HOST), 40777, 40777));
        // Bob pings with the same identifier: remapped.
        let (_, out) = dp.overlay(&icmp_echo(BOB, OTHER_HOST, 40777, false));
        let bob_id = checked(&out).2;
        assert_ne!(bob_id, 40777);
        let (verdict, out) = dp.lan_tc(&icmp_echo(OTHER_HOST, RP_LAN, bob_id, true));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(BOB), 40777, 40777));
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn ipv6_flows_are_masqueraded_with_exact_checksums() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let alice6: [u8; 16] = "2001:db8:100::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let wiki6: [u8; 16] = "2001:db8:1::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(alice6, wiki6, 64)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        let (verdict, out) = dp.overlay(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (src, dst, sport, dport) = checked(&out);
        assert_eq!(src, "2001:db8:1::1".parse::<IpAddr>().unwrap());
        assert_eq!((dst, sport, dport), (IpAddr::from(wiki6), 41000, 443));
        assert_eq!(out[ETH_LEN + 7], 63, "hop limit decremented");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn masquerade_off_keeps_the_overlay_source() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", false));
        let (verdict, out) = dp.overlay(&tcp(ALICE, WIKI, 40020, 443, "S", &[]));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(ALICE), ip(WIKI), 40020, 443));
        // The LAN routes the reply back to us; conntrack lets it through.
        let (verdict, out) = dp.lan_tc(&tcp(WIKI, ALICE, 443, 40020, "SA", &[]));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40020));
        assert_eq!(dp.flows()[0].1.state, CT_TCP_ESTABLISHED);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_policy_change_cuts_established_flows() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40030, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 40031, 53, b"q")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(dp.flows().len(), 2);
        // Remove the UDP policy: its flow is cut in both directions, the TCP flow lives.
        dp.install(&base_config("", true));
        assert_eq!(
            dp.lan(&udp(OTHER_HOST, RP_LAN, 53, 40031, b"r")).0,
            XDP_DROP
        );
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 40031, 53, b"q")).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40030, 443, "A", b"more")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(dp.drops(DropReason::PolicyRevoked), 1);
        assert_eq!(
            dp.drops(DropReason::NoPolicy),
            1,
            "after the cut it is a new, denied flow"
        );
        assert_eq!(dp.flows().len(), 1);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn expired_flows_need_policy_again() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", false));
        dp.set_config(DatapathConfig {
            tcp_transitory_ns: 1_000_000, // 1 ms
            ..DatapathConfig::default()
        });
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40040, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The SYN_SENT entry expired: the "reply" is now LAN-initiated.
        assert_eq!(dp.lan(&tcp(WIKI, ALICE, 443, 40040, "SA", &[])).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::LanUnsolicited), 1);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn valid_ipv4_is_counted_exactly_per_hook() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let frame = udp(WIKI, RP_LAN, 5353, 40000, &[7u8; 100]);
        assert_eq!(dp.lan(&frame).0, XDP_PASS);
        assert_eq!(dp.lan(&frame).0, XDP_PASS);
        let snap = stats::read_loaded(&dp.ebpf).unwrap();
        let lan = snap.hook(Hook::LanIngress);
        assert_eq!((lan.packets, lan.bytes), (2, 2 * frame.len() as u64));
        assert_eq!(snap.hook(Hook::OverlayIngress).packets, 0);
        assert!(snap.drops.iter().all(|d| d.packets == 0), "{snap:?}");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn non_ip_frames_pass_untouched() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let mut arp = Vec::from([0xffu8; 6]);
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(dp.lan(&arp).0, XDP_PASS);
        assert_eq!(dp.overlay(&arp).0, TC_ACT_OK);
    });
}

/// Each malformed variant is dropped and counted under `malformed`, bytes included.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn malformed_ipv4_is_dropped_and_counted() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let good = udp(ALICE, WIKI, 1000, 443, &[1u8; 32]);
        let truncated_ip = good[..ETH_LEN + 12].to_vec();
        let mut bad_ihl = good.clone();
        bad_ihl[ETH_LEN] = 0x44;
        let mut long_total = good.clone();
        long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        let mut bad_version = good.clone();
        bad_version[ETH_LEN] = 0x55;
        let mut truncated_udp = good[..ETH_LEN + 20 + 4].to_vec();
        truncated_udp[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&24u16.to_be_bytes());
        let cases = [
            truncated_ip,
            bad_ihl,
            long_total,
            bad_version,
            truncated_udp,
        ];
        let (mut packets, mut bytes) = (0, 0);
        for (i, frame) in cases.iter().enumerate() {
            assert_eq!(dp.lan(frame).0, XDP_DROP, "case {i} on the LAN");
            (packets, bytes) = (packets + 1, bytes + frame.len() as u64);
            // The kernel's skb test run refuses frames shorter than an IPv4
            // header (EINVAL), so the TC path sees the others only.
            if frame.len() >= ETH_LEN + 20 {
                assert_eq!(dp.overlay(frame).0, TC_ACT_SHOT, "case {i} on the overlay");
                (packets, bytes) = (packets + 1, bytes + frame.len() as u64);
            }
        }
        let snap = stats::read_loaded(&dp.ebpf).unwrap();
        let malformed = snap.drop(DropReason::Malformed);
        assert_eq!((malformed.packets, malformed.bytes), (packets, bytes));
        assert!(dp.flows().is_empty());
    });
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    let header = &mut frame[ETH_LEN..ETH_LEN + 20];
    header[10] = 0;
    header[11] = 0;
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !((folded & 0xffff) + (folded >> 16)) as u16;
    header[10..12].copy_from_slice(&check.to_be_bytes());
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

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn fragments_are_dropped_with_their_own_reason() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let mut more_fragments = udp(ALICE, WIKI, 1000, 443, &[1u8; 64]);
        more_fragments[ETH_LEN + 6] = 0x20; // MF
        fix_ipv4_checksum(&mut more_fragments);
        let mut later_fragment = udp(ALICE, WIKI, 1000, 443, &[1u8; 64]);
        later_fragment[ETH_LEN + 7] = 0x10; // offset 16 * 8
        fix_ipv4_checksum(&mut later_fragment);
        let v6 = udp_v6(&[2u8; 16]);
        let mut frag6 = v6[..ETH_LEN + 40].to_vec();
        frag6[ETH_LEN + 6] = 44;
        frag6.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 42]);
        frag6.extend_from_slice(&v6[ETH_LEN + 40..]);
        let payload_len = (frag6.len() - ETH_LEN - 40) as u16;
        frag6[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
        for frame in [&more_fragments, &later_fragment, &frag6] {
            assert_eq!(dp.lan(frame).0, XDP_DROP);
            assert_eq!(dp.overlay(frame).0, TC_ACT_SHOT);
        }
        assert_eq!(dp.drops(DropReason::Fragment), 6);
        assert_eq!(dp.drops(DropReason::Malformed), 0);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn ipv6_extension_headers_are_walked() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let v6 = udp_v6(&[3u8; 8]);
        let mut hbh = v6[..ETH_LEN + 40].to_vec();
        hbh[ETH_LEN + 6] = 0;
        hbh.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        hbh.extend_from_slice(&v6[ETH_LEN + 40..]);
        let payload_len = (hbh.len() - ETH_LEN - 40) as u16;
        hbh[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
        // Parsed through to UDP: policy then denies UDP to the wiki.
        assert_eq!(dp.overlay(&hbh).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::NoPolicy), 1);
        let mut truncated = hbh.clone();
        truncated[ETH_LEN + 41] = 8; // 72 bytes of options
        assert_eq!(dp.overlay(&truncated).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::Malformed), 1);
    });
}

mod fail_closed;
mod fuzz;

/// Every program in the object, the benchmark's included, passes the
/// verifier: a program no test loads could otherwise break unseen.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn every_program_in_the_object_passes_the_verifier() {
    in_netns(|| {
        let mut ebpf = datapath::load(None, datapath::log_level_for(false), &[]).expect("load");
        let mut loaded = 0;
        for (name, program) in ebpf.programs_mut() {
            let result = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => panic!("{name}: a program type we do not attach"),
            };
            result.unwrap_or_else(|e| panic!("{name} fails the verifier: {e}"));
            loaded += 1;
        }
        // 5 data path programs and 4 benchmark ones.
        assert_eq!(loaded, 9);
    });
}
