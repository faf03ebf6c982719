//! Benchmark-only programs: a packet generator for BPF_PROG_TEST_RUN live
//! frames, a counting sink, a pass-through (veth needs an XDP program on the
//! receiving end to take XDP_TX frames) and the stateless XDP- and
//! TC-redirect upper bounds. They are loaded only by `cargo xtask bench`.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use routing_peer_common::PacketCounter;

use crate::{
    ctx::Mangle,
    forward,
    parse::{EthHdr, Ipv4Hdr, Packet, ETH_P_IP},
};

const ETH_IP_LEN: usize = 14 + 20;

// Maps.
/// The generator's settings, indexed by the `GEN_*` constants below.
#[map]
static BENCH_GEN: Array<u32> = Array::with_max_entries(4, 0);
/// The frame's Ethernet + IPv4 + UDP headers (42 bytes, padded), written
/// by user space with a valid IPv4 checksum.
#[map]
static BENCH_TEMPLATE: Array<[u32; 11]> = Array::with_max_entries(1, 0);

/// Distinct flows the generator cycles through.
const GEN_FLOWS: u32 = 0;
/// 1: each datagram as three IPv4 fragments.
const GEN_FRAGMENTS: u32 = 1;
/// The first flow's number (two generators send distinct flows).
const GEN_FIRST: u32 = 2;
/// 1: the reply direction (the flow's port is the destination port).
const GEN_REPLY: u32 = 3;

/// A flow's two ports: the client's (40000 + up to 20000, inside the
/// default masquerade pool, so translation keeps it and replies can be
/// addressed to it) and the service's (10000 + up to 128, the policy's).
#[inline(always)]
fn flow_ports(flow: u32) -> (u16, u16) {
    (
        40_000 + (flow % 20_000) as u16,
        10_000 + ((flow / 20_000) % 128) as u16,
    )
}

fn setting(index: u32) -> u32 {
    BENCH_GEN.get(index).copied().unwrap_or(0)
}
/// Per CPU: the generator's next flow number.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU: packets and bytes the sink received.
#[map]
static BENCH_SINK: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(1, 0);

/// Writes the whole header of every live frame (the pages are recycled, and
/// the device under test rewrote MACs, TTL and addresses in place), cycles
/// the UDP ports through the flows, and transmits the frame.
#[xdp]
pub fn rp_bench_gen(ctx: XdpContext) -> u32 {
    let flows = setting(GEN_FLOWS).max(1);
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let Some(template) = BENCH_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    for (i, word) in template.iter().take(10).enumerate() {
        if ctx.store_u32(4 * i, *word).is_err() {
            return xdp_action::XDP_ABORTED;
        }
    }
    if ctx.store_u16(40, template[10] as u16).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    let first = setting(GEN_FIRST);
    if setting(GEN_FRAGMENTS) == 1 {
        return fragment(&ctx, n, first, flows);
    }
    let (client, service) = flow_ports(first.wrapping_add(n % flows));
    let (sport, dport) = if setting(GEN_REPLY) == 1 {
        (service, client)
    } else {
        (client, service)
    };
    let ok = ctx.store_u16(ETH_IP_LEN, sport.to_be()).is_ok()
        && ctx.store_u16(ETH_IP_LEN + 2, dport.to_be()).is_ok()
        // No UDP checksum (legal for IPv4): nothing to recompute per frame.
        && ctx.store_u16(ETH_IP_LEN + 6, 0).is_ok();
    if ok {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// Fragment mode: frame `n` is fragment `n % 3` of datagram `n / 3`, a
/// 4008-byte UDP datagram in 1480-byte pieces. The template is the first
/// fragment's headers; the fields that differ are written here, and the
/// IPv4 header checksum computed afresh.
#[inline(always)]
fn fragment(ctx: &XdpContext, n: u32, first: u32, flows: u32) -> u32 {
    const LAST_PAYLOAD: usize = 4008 - 2 * 1480;
    let ip = 14;
    let k = n % 3;
    let datagram = n / 3;
    let (frag_off, tot_len): (u16, u16) = match k {
        0 => (0x2000, 1500),
        1 => (0x2000 | 185, 1500),
        _ => (370, (20 + LAST_PAYLOAD) as u16),
    };
    let ok = ctx.store_u16(ip + 2, tot_len.to_be()).is_ok()
        && ctx.store_u16(ip + 4, (datagram as u16).to_be()).is_ok()
        && ctx.store_u16(ip + 6, frag_off.to_be()).is_ok()
        && ipv4_checksum(ctx, ip);
    if !ok {
        return xdp_action::XDP_ABORTED;
    }
    if k == 0 {
        let (client, _) = flow_ports(first.wrapping_add(datagram % flows));
        if ctx.store_u16(ip + 20, client.to_be()).is_err() {
            return xdp_action::XDP_ABORTED;
        }
    }
    if k == 2 {
        let shrink = (ctx.data_end() - ctx.data()) as i32 - (ip + 20 + LAST_PAYLOAD) as i32;
        // SAFETY: plain helper call on our frame.
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(ctx.ctx, -shrink) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    xdp_action::XDP_TX
}

/// Writes the checksum of the IPv4 header at `at` (no options).
#[inline(always)]
fn ipv4_checksum(ctx: &XdpContext, at: usize) -> bool {
    if ctx.store_u16(at + 10, 0).is_err() {
        return false;
    }
    // One bound for the whole header (per-word loads make LLVM compare
    // against `data_end + 1`, which the verifier refuses).
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + at + 20 > end {
        return false;
    }
    // SAFETY: the 20 header bytes lie inside the frame, checked above.
    let words = unsafe { ((start + at) as *const [u16; 10]).read_unaligned() };
    let mut sum: u32 = words.iter().map(|w| u32::from(*w)).sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ctx.store_u16(at + 10, !(sum as u16)).is_ok()
}

/// Counts and drops.
#[xdp]
pub fn rp_bench_sink(ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    xdp_action::XDP_DROP
}

/// Counts and drops at a device's TC egress: the sink of an L3 device
/// (TUN), where its reader (wireguard-go) would take the packet.
#[classifier]
pub fn rp_bench_tc_sink(ctx: TcContext) -> i32 {
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
    TC_ACT_SHOT
}

#[xdp]
pub fn rp_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The upper bound: FIB lookup and redirect, no policy, no state, and only
/// the parsing a stateless forwarder needs (Ethernet, an IPv4 header
/// without options, the ports): the full validation lives in the data path.
#[xdp]
pub fn rp_bench_redirect(ctx: XdpContext) -> u32 {
    let Some(pkt) = minimal_ipv4(ctx.data(), ctx.data_end(), 14) else {
        return xdp_action::XDP_PASS;
    };
    if pkt.ttl <= 1 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: reading the frame's ingress ifindex.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let forward::Fib::Forward(route) =
        forward::lookup_xdp(&ctx, &pkt, &forward::To::dst_of(&pkt), ifindex)
    else {
        return xdp_action::XDP_PASS;
    };
    if forward::decrement_ttl(&ctx, &pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    forward::xdp_redirect(&ctx, &route).unwrap_or(xdp_action::XDP_PASS)
}

/// The TC bound of the L3 overlay (at the TUN's ingress, as the overlay
/// program sits at `wg0`'s): the same stateless work as
/// `rp_bench_redirect` — FIB lookup with the neighbour, TTL, an Ethernet
/// header pushed, redirect — and nothing else. No TC program can forward
/// faster on this rig; it is the ceiling of the L3 rows.
#[classifier]
pub fn rp_bench_tc_redirect_l3(ctx: TcContext) -> i32 {
    tc_redirect(&ctx, false)
}

/// The same bound for replies, at the LAN's TC ingress into the TUN.
#[classifier]
pub fn rp_bench_tc_redirect_l2(ctx: TcContext) -> i32 {
    tc_redirect(&ctx, true)
}

#[inline(always)]
fn tc_redirect(ctx: &TcContext, l2_in: bool) -> i32 {
    let l3 = if l2_in { 14 } else { 0 };
    let Some(pkt) = minimal_ipv4(ctx.data(), ctx.data_end(), l3) else {
        return TC_ACT_OK;
    };
    if pkt.ttl <= 1 {
        return TC_ACT_OK;
    }
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let forward::Fib::Forward(route) =
        forward::lookup_tc(ctx, &pkt, &forward::To::dst_of(&pkt), ifindex)
    else {
        return TC_ACT_OK;
    };
    if forward::decrement_ttl(ctx, &pkt).is_err() {
        return TC_ACT_SHOT;
    }
    forward::redirect_tc(ctx, &route, false, l2_in).unwrap_or(TC_ACT_SHOT)
}

/// [Ethernet +] IPv4 (no options) + the first 4 bytes of L4 at `l3`
/// (0 or 14), or `None`.
#[inline(always)]
fn minimal_ipv4(start: usize, end: usize, l3: usize) -> Option<Packet> {
    // One bound for all we read: [14 +] 20 + 4 bytes.
    if start + l3 + 20 + 4 > end {
        return None;
    }
    let eth = start as *const EthHdr;
    let ip = (start + l3) as *const Ipv4Hdr;
    let ports = (start + l3 + 20) as *const [u16; 2];
    // SAFETY: all three lie inside the frame, checked above (the Ethernet
    // header only read when l3 is 14).
    unsafe {
        if (l3 == 14 && u16::from_be((*eth).proto) != ETH_P_IP) || (*ip).version_ihl != 0x45 {
            return None;
        }
        Some(Packet {
            l3_offset: l3,
            l4_offset: l3 + 20,
            l3_len: u16::from_be((*ip).tot_len) as usize,
            proto: (*ip).proto,
            src: [(*ip).src, 0, 0, 0],
            dst: [(*ip).dst, 0, 0, 0],
            sport: u16::from_be((*ports)[0]),
            dport: u16::from_be((*ports)[1]),
            ttl: (*ip).ttl,
            ..Packet::default()
        })
    }
}
