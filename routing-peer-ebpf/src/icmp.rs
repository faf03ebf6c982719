//! ICMP errors the routing peer sends itself: fragmentation needed (IPv4)
//! and packet too big (IPv6) to a LAN host whose reply does not fit the
//! overlay. The kernel cannot send them for us: it would quote the packet
//! after translation (the peer's overlay address, leaked onto the LAN, and
//! a port the LAN host never used), so path-MTU discovery would fail. The
//! error quotes the packet as the host sent it, and the packet itself
//! becomes the error: truncated to the quote, grown by the new headers,
//! and sent back out of the interface it came in on.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{
        bpf_redirect,
        generated::{bpf_csum_diff, bpf_skb_adjust_room, bpf_skb_change_tail},
    },
    programs::TcContext,
};
use routing_peer_common::{IPPROTO_ICMP, IPPROTO_ICMPV6};

use crate::parse::Packet;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const ICMP_LEN: usize = 8;
/// What the error quotes: the IP header and the first 8 bytes after it.
const QUOTE_V4: usize = IPV4_LEN + 8;
const QUOTE_V6: usize = IPV6_LEN + 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of 32-bit words as stored (folds to the 16-bit sum).
#[inline(always)]
fn sum_words(words: &[u32]) -> u64 {
    words.iter().map(|w| *w as u64).sum()
}

/// Turns the skb into the error and sends it back where it came from.
/// `mtu` is the overlay's. Only packets whose quote is a plain header
/// (no IPv4 options, no IPv6 extension headers) are answered; the caller
/// drops the rest with the same counted reason.
#[inline(always)]
pub fn send_too_big(ctx: &TcContext, pkt: &Packet, mtu: u32) -> Result<i32, ()> {
    let header = pkt.l4_offset - pkt.l3_offset;
    if pkt.l3_offset != ETH_LEN
        || (!pkt.ipv6 && header != IPV4_LEN)
        || (pkt.ipv6 && header != IPV6_LEN)
    {
        return Err(());
    }
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    let quote = if pkt.ipv6 { QUOTE_V6 } else { QUOTE_V4 };
    let outer = if pkt.ipv6 { IPV6_LEN } else { IPV4_LEN } + ICMP_LEN;
    // SAFETY: helper calls on our own skb; they check lengths themselves.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + quote) as u32, 0) != 0 {
            return Err(());
        }
        if bpf_skb_adjust_room(ctx.skb.skb, outer as i32, BPF_ADJ_ROOM_MAC, 0) != 0 {
            return Err(());
        }
    }
    // Back to the sender: its MAC is now the destination.
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).map_err(|_| ())?;
    if pkt.ipv6 {
        write_v6(ctx, pkt, mtu)?;
    } else {
        write_v4(ctx, pkt, mtu)?;
    }
    // SAFETY: reading the skb's ingress ifindex; plain helper call.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

#[inline(always)]
fn write_v4(ctx: &TcContext, pkt: &Packet, mtu: u32) -> Result<(), ()> {
    let total = (IPV4_LEN + ICMP_LEN + QUOTE_V4) as u16;
    // From the address the host sent to (ours), back to the host.
    let mut ip: [u32; 5] = [
        u32::from_ne_bytes([0x45, 0, (total >> 8) as u8, total as u8]),
        0,
        u32::from_ne_bytes([64, IPPROTO_ICMP, 0, 0]),
        pkt.dst[0],
        pkt.src[0],
    ];
    let check = !fold(sum_words(&ip));
    let [c0, c1] = check.to_ne_bytes();
    ip[2] = u32::from_ne_bytes([64, IPPROTO_ICMP, c0, c1]);
    ctx.store(ETH_LEN, &ip, 0).map_err(|_| ())?;
    let mtu = mtu.min(0xffff) as u16;
    let icmp: [u32; 2] = [
        u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0]),
        u32::from_ne_bytes([0, 0, (mtu >> 8) as u8, mtu as u8]),
    ];
    let at = ETH_LEN + IPV4_LEN;
    ctx.store(at, &icmp, 0).map_err(|_| ())?;
    let sum = icmp_sum(ctx, at, ICMP_LEN + QUOTE_V4, 0)?;
    ctx.store(at + 2, &(!fold(sum)), 0).map_err(|_| ())
}

#[inline(always)]
fn write_v6(ctx: &TcContext, pkt: &Packet, mtu: u32) -> Result<(), ()> {
    let payload = (ICMP_LEN + QUOTE_V6) as u16;
    let mut ip = [0u32; 10];
    ip[0] = u32::from_ne_bytes([0x60, 0, 0, 0]);
    ip[1] = u32::from_ne_bytes([(payload >> 8) as u8, payload as u8, IPPROTO_ICMPV6, 64]);
    ip[2..6].copy_from_slice(&pkt.dst);
    ip[6..10].copy_from_slice(&pkt.src);
    ctx.store(ETH_LEN, &ip, 0).map_err(|_| ())?;
    let icmp: [u32; 2] = [
        u32::from_ne_bytes([ICMPV6_PKT_TOOBIG, 0, 0, 0]),
        mtu.to_be(),
    ];
    let at = ETH_LEN + IPV6_LEN;
    ctx.store(at, &icmp, 0).map_err(|_| ())?;
    // The pseudo-header: both addresses, the length and the next header.
    let pseudo = sum_words(&ip[2..10])
        + u32::from_ne_bytes([0, 0, (payload >> 8) as u8, payload as u8]) as u64
        + u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]) as u64;
    let sum = icmp_sum(ctx, at, ICMP_LEN + QUOTE_V6, pseudo)?;
    ctx.store(at + 2, &(!fold(sum)), 0).map_err(|_| ())
}

/// The sum over `len` bytes at `at` (the ICMP message, checksum zero),
/// plus `seed`.
#[inline(always)]
fn icmp_sum(ctx: &TcContext, at: usize, len: usize, seed: u64) -> Result<u64, ()> {
    let start = ctx.data() + at;
    // Direct access: the verifier needs the whole range inside the packet.
    if start + len > ctx.data_end() {
        return Err(());
    }
    // SAFETY: `start..start + len` lies inside the packet, checked above;
    // `len` is a multiple of 4, as the helper requires.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, start as *mut u32, len as u32, 0) };
    if sum < 0 {
        return Err(());
    }
    Ok(sum as u64 + seed)
}
