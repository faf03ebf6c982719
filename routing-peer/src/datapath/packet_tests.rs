//! Packet tests: crafted frames through BPF_PROG_TEST_RUN, asserting the
//! verdict and the exact counters. Need root (CAP_BPF) like the daemon.

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use routing_peer_common::{program_names, DropReason, Hook};

use crate::{datapath, stats};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const OVERLAY_PEER: [u8; 4] = [100, 64, 0, 2];
const LAN_HOST: [u8; 4] = [198, 51, 100, 5];

fn load() -> Ebpf {
    let mut ebpf = datapath::load(None, datapath::log_level_for(false)).expect("load object");
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::LAN_XDP)
        .unwrap()
        .try_into()
        .unwrap();
    xdp.load().expect("XDP program passes the verifier");
    for name in [program_names::OVERLAY_L2, program_names::OVERLAY_L3] {
        let tc: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        tc.load().expect("TC program passes the verifier");
    }
    ebpf
}

fn run_xdp(ebpf: &mut Ebpf, frame: &[u8]) -> u32 {
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::LAN_XDP)
        .unwrap()
        .try_into()
        .unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    xdp.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
}

/// The kernel's skb test run always presents an Ethernet frame, so the TC
/// path is exercised through the L2 (veth stand-in) entry point.
fn run_tc_l2(ebpf: &mut Ebpf, frame: &[u8]) -> u32 {
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::OVERLAY_L2)
        .unwrap()
        .try_into()
        .unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    tc.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
}

fn udp_v4(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(LAN_HOST, OVERLAY_PEER, 64)
        .udp(5353, 40000)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

fn tcp_syn_v4() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(OVERLAY_PEER, LAN_HOST, 64)
        .tcp(40000, 443, 1, 65535)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

fn udp_v6(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let src = "2001:db8::2"
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

const ETH_LEN: usize = 14;

#[test]
fn valid_ipv4_passes_and_is_counted_exactly() {
    let mut ebpf = load();
    let frame = udp_v4(&[7u8; 100]);
    assert_eq!(run_xdp(&mut ebpf, &frame), XDP_PASS);
    assert_eq!(run_xdp(&mut ebpf, &frame), XDP_PASS);
    let snap = stats::read_loaded(&ebpf).unwrap();
    let lan = snap.hook(Hook::LanIngress);
    assert_eq!((lan.packets, lan.bytes), (2, 2 * frame.len() as u64));
    assert_eq!(snap.hook(Hook::OverlayIngress).packets, 0);
    assert!(snap.drops.iter().all(|d| d.packets == 0), "{snap:?}");
}

#[test]
fn tc_overlay_passes_tcp_and_ipv6() {
    let mut ebpf = load();
    let syn = tcp_syn_v4();
    let v6 = udp_v6(b"query");
    assert_eq!(run_tc_l2(&mut ebpf, &syn), TC_ACT_OK);
    assert_eq!(run_tc_l2(&mut ebpf, &v6), TC_ACT_OK);
    let snap = stats::read_loaded(&ebpf).unwrap();
    let overlay = snap.hook(Hook::OverlayIngress);
    assert_eq!(
        (overlay.packets, overlay.bytes),
        (2, (syn.len() + v6.len()) as u64)
    );
}

#[test]
fn non_ip_frames_pass_untouched() {
    let mut ebpf = load();
    let mut arp = Vec::from([0xffu8; 6]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run_xdp(&mut ebpf, &arp), XDP_PASS);
}

/// Each malformed variant is dropped and counted under `malformed`, bytes included.
#[test]
fn malformed_ipv4_is_dropped_and_counted() {
    let mut ebpf = load();
    let good = udp_v4(&[1u8; 32]);

    let truncated_ip = good[..ETH_LEN + 12].to_vec();
    let mut bad_ihl = good.clone();
    bad_ihl[ETH_LEN] = 0x44; // IHL 4 words: shorter than the fixed header
    let mut long_total = good.clone();
    long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
    let mut bad_version = good.clone();
    bad_version[ETH_LEN] = 0x55;
    let truncated_udp = good[..ETH_LEN + 20 + 4].to_vec();
    let mut truncated_udp_fixed_len = truncated_udp.clone();
    truncated_udp_fixed_len[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&24u16.to_be_bytes());

    let cases = [
        truncated_ip,
        bad_ihl,
        long_total,
        bad_version,
        truncated_udp_fixed_len,
    ];
    let mut bytes = 0;
    for (i, frame) in cases.iter().enumerate() {
        assert_eq!(run_xdp(&mut ebpf, frame), XDP_DROP, "case {i}");
        bytes += frame.len() as u64;
    }
    let snap = stats::read_loaded(&ebpf).unwrap();
    let malformed = snap.drop(DropReason::Malformed);
    assert_eq!(
        (malformed.packets, malformed.bytes),
        (cases.len() as u64, bytes)
    );
    assert_eq!(snap.drop(DropReason::Fragment).packets, 0);
}

#[test]
fn fragments_are_dropped_with_their_own_reason() {
    let mut ebpf = load();
    let mut more_fragments = udp_v4(&[1u8; 64]);
    more_fragments[ETH_LEN + 6] = 0x20; // MF
    fix_ipv4_checksum(&mut more_fragments);
    let mut later_fragment = udp_v4(&[1u8; 64]);
    later_fragment[ETH_LEN + 7] = 0x10; // offset 16 * 8
    fix_ipv4_checksum(&mut later_fragment);

    // IPv6 with a Fragment extension header in front of UDP.
    let v6 = udp_v6(&[2u8; 16]);
    let mut frag6 = v6[..ETH_LEN + 40].to_vec();
    frag6[ETH_LEN + 6] = 44; // next header: Fragment
    frag6.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 42]);
    frag6.extend_from_slice(&v6[ETH_LEN + 40..]);
    let payload_len = (frag6.len() - ETH_LEN - 40) as u16;
    frag6[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());

    for frame in [&more_fragments, &later_fragment, &frag6] {
        assert_eq!(run_xdp(&mut ebpf, frame), XDP_DROP);
    }
    assert_eq!(run_tc_l2(&mut ebpf, &frag6), TC_ACT_SHOT);
    let snap = stats::read_loaded(&ebpf).unwrap();
    assert_eq!(snap.drop(DropReason::Fragment).packets, 4);
    assert_eq!(snap.drop(DropReason::Malformed).packets, 0);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut ebpf = load();
    let v6 = udp_v6(&[3u8; 8]);
    // Hop-by-hop options (8 bytes, PadN) in front of UDP.
    let mut hbh = v6[..ETH_LEN + 40].to_vec();
    hbh[ETH_LEN + 6] = 0;
    hbh.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    hbh.extend_from_slice(&v6[ETH_LEN + 40..]);
    let payload_len = (hbh.len() - ETH_LEN - 40) as u16;
    hbh[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
    assert_eq!(run_xdp(&mut ebpf, &hbh), XDP_PASS);

    // The same header claiming more length than the packet has.
    let mut truncated = hbh.clone();
    truncated[ETH_LEN + 41] = 8; // 72 bytes of options
    assert_eq!(run_xdp(&mut ebpf, &truncated), XDP_DROP);
    let snap = stats::read_loaded(&ebpf).unwrap();
    assert_eq!(snap.drop(DropReason::Malformed).packets, 1);
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
