//! Masquerade: endpoint-independent SNAT (RFC 4787) of the overlay source to
//! the egress LAN address, and the reverse translation of replies.
//!
//! A mapping is a pair of LRU entries, peer endpoint → external endpoint and
//! back, both created with BPF_NOEXIST so CPUs racing for a port can't both
//! win. The peer's own port is kept when free; otherwise random ports in the
//! configured range are tried a bounded number of times. ICMP echo uses its
//! identifier as the port.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, macros::map, maps::LruHashMap,
};
use routing_peer_common::{
    DatapathConfig, DropReason, NatEndpoint, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{ctx::Mangle, parse::Packet};

const MAX_MAPPINGS: u32 = 131072;
/// Random ports tried after the preserved one; bounded for the verifier.
const PORT_RETRIES: u32 = 16;

#[map]
static NAT_FWD: LruHashMap<NatEndpoint, NatEndpoint> =
    LruHashMap::with_max_entries(MAX_MAPPINGS, 0);
#[map]
static NAT_REV: LruHashMap<NatEndpoint, NatEndpoint> =
    LruHashMap::with_max_entries(MAX_MAPPINGS, 0);

#[inline(always)]
fn same(a: &NatEndpoint, b: &NatEndpoint) -> bool {
    a.addr == b.addr && a.port == b.port && a.proto == b.proto && a.family == b.family
}

/// Claims `external` for `peer` if it is free or already `peer`'s.
#[inline(always)]
fn claim(peer: &NatEndpoint, external: &NatEndpoint) -> bool {
    if NAT_REV.insert(external, peer, BPF_NOEXIST as u64).is_err() {
        // SAFETY: copied out at once.
        match unsafe { NAT_REV.get(external) } {
            Some(owner) if same(owner, peer) => {}
            _ => return false,
        }
    }
    let _ = NAT_FWD.insert(peer, external, 0);
    true
}

/// The external endpoint for `peer` on `nat_addr`, reusing its mapping.
#[inline(always)]
pub fn snat_mapping(
    peer: &NatEndpoint,
    nat_addr: [u32; 4],
    cfg: &DatapathConfig,
) -> Result<NatEndpoint, DropReason> {
    // SAFETY: copied out at once.
    if let Some(existing) = unsafe { NAT_FWD.get(peer).copied() } {
        // LRU may have evicted the reverse half; re-claiming restores it.
        if existing.addr == nat_addr && claim(peer, &existing) {
            return Ok(existing);
        }
    }
    let mut external = NatEndpoint {
        addr: nat_addr,
        port: peer.port,
        proto: peer.proto,
        family: peer.family,
    };
    if claim(peer, &external) {
        return Ok(external);
    }
    let span = (cfg.snat_port_max as u32).saturating_sub(cfg.snat_port_min as u32) + 1;
    for _ in 0..PORT_RETRIES {
        // SAFETY: plain helper call.
        let random = unsafe { bpf_get_prandom_u32() };
        external.port = cfg.snat_port_min + (random % span) as u16;
        if claim(peer, &external) {
            return Ok(external);
        }
    }
    Err(DropReason::NatExhausted)
}

/// The peer endpoint behind an external one, for a reply.
#[inline(always)]
pub fn reverse(external: &NatEndpoint) -> Option<NatEndpoint> {
    // SAFETY: copied out at once.
    unsafe { NAT_REV.get(external).copied() }
}

pub enum Side {
    Source,
    Destination,
}

/// Where the L4 checksum lives, and whether it covers the pseudo-header.
#[inline(always)]
fn l4_checksum(pkt: &Packet) -> Option<(usize, bool)> {
    match pkt.proto {
        IPPROTO_TCP => Some((pkt.l4_offset + 16, true)),
        IPPROTO_UDP => Some((pkt.l4_offset + 6, true)),
        IPPROTO_ICMP => Some((pkt.l4_offset + 2, false)),
        IPPROTO_ICMPV6 => Some((pkt.l4_offset + 2, true)),
        _ => None,
    }
}

/// Rewrites one side's address and port (host order), fixing every checksum.
#[inline(always)]
pub fn rewrite<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    side: Side,
    addr: [u32; 4],
    port: u16,
) -> Result<(), ()> {
    let udp = pkt.proto == IPPROTO_UDP;
    let l4 = l4_checksum(pkt);
    let (old_addr, old_port) = match side {
        Side::Source => (pkt.src, pkt.sport),
        Side::Destination => (pkt.dst, pkt.dport),
    };
    if pkt.ipv6 {
        let base = pkt.l3_offset + if matches!(side, Side::Source) { 8 } else { 24 };
        for i in 0..4 {
            if old_addr[i] != addr[i] {
                ctx.store_u32(base + 4 * i, addr[i])?;
                if let Some((csum, true)) = l4 {
                    ctx.l4_csum(csum, old_addr[i], addr[i], 4, true, udp)?;
                }
            }
        }
    } else if old_addr[0] != addr[0] {
        let at = pkt.l3_offset + if matches!(side, Side::Source) { 12 } else { 16 };
        ctx.store_u32(at, addr[0])?;
        ctx.l3_csum(pkt.l3_offset + 10, old_addr[0], addr[0], 4)?;
        if let Some((csum, true)) = l4 {
            ctx.l4_csum(csum, old_addr[0], addr[0], 4, true, udp)?;
        }
    }
    if old_port != port {
        let at = match pkt.proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                pkt.l4_offset + if matches!(side, Side::Source) { 0 } else { 2 }
            }
            // The echo identifier stands for both ports.
            IPPROTO_ICMP | IPPROTO_ICMPV6 => pkt.l4_offset + 4,
            _ => return Ok(()),
        };
        let (from, to) = (old_port.to_be() as u32, port.to_be() as u32);
        ctx.store_u16(at, port.to_be())?;
        if let Some((csum, _)) = l4 {
            ctx.l4_csum(csum, from, to, 2, false, udp)?;
        }
    }
    Ok(())
}

/// Clamps the MSS of a TCP SYN so segments fit the overlay MTU. Every common
/// stack sends MSS as the first option, and only there is it looked for:
/// a bounded option walk costs more verifier budget than it is worth.
#[inline(always)]
pub fn clamp_mss<C: Mangle>(ctx: &C, pkt: &Packet, clamp: u16) -> Result<(), ()> {
    const TCPOPT_MSS: u8 = 2;
    let at = pkt.l4_offset + 20;
    let Ok(first) = ctx.load_u32(at) else {
        return Ok(()); // no options
    };
    let bytes = first.to_ne_bytes();
    if bytes[0] != TCPOPT_MSS || bytes[1] != 4 {
        return Ok(());
    }
    let mss = u16::from_be_bytes([bytes[2], bytes[3]]);
    if mss <= clamp {
        return Ok(());
    }
    let from = u16::from_ne_bytes([bytes[2], bytes[3]]) as u32;
    let to = clamp.to_be() as u32;
    ctx.store_u16(at + 2, clamp.to_be())?;
    ctx.l4_csum(pkt.l4_offset + 16, from, to, 2, false, false)
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;
/// ICMPv6 errors are types 1 (unreachable), 2 (packet too big), 3 (time
/// exceeded) and 4 (parameter problem).
const ICMPV6_ERROR_MAX: u8 = 4;

#[inline(always)]
pub fn is_icmp_error(pkt: &Packet) -> bool {
    if pkt.ipv6 {
        pkt.proto == IPPROTO_ICMPV6 && (1..=ICMPV6_ERROR_MAX).contains(&pkt.icmp_type)
    } else {
        pkt.proto == IPPROTO_ICMP
            && matches!(
                pkt.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
            )
    }
}

/// The packet an ICMP error quotes: the one we sent, from the masquerade
/// endpoint to the remote.
pub struct Quoted {
    pub inner_ip: usize,
    /// Where the quoted transport header starts.
    pub inner_l4: usize,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Host order; the echo identifier for ICMP.
    pub sport: u16,
    pub dport: u16,
}

#[inline(always)]
fn load_addr<C: Mangle>(ctx: &C, at: usize, v6: bool) -> Option<[u32; 4]> {
    if !v6 {
        return Some([ctx.load_u32(at).ok()?, 0, 0, 0]);
    }
    Some([
        ctx.load_u32(at).ok()?,
        ctx.load_u32(at + 4).ok()?,
        ctx.load_u32(at + 8).ok()?,
        ctx.load_u32(at + 12).ok()?,
    ])
}

#[inline(always)]
pub fn quoted<C: Mangle>(ctx: &C, pkt: &Packet) -> Option<Quoted> {
    let inner_ip = pkt.l4_offset + 8;
    let (proto, src, dst, inner_l4) = if pkt.ipv6 {
        // No extension headers in the quoted packet: ours never has any.
        let proto = ctx.load_u32(inner_ip + 4).ok()?.to_ne_bytes()[2];
        (
            proto,
            load_addr(ctx, inner_ip + 8, true)?,
            load_addr(ctx, inner_ip + 24, true)?,
            inner_ip + 40,
        )
    } else {
        if ctx.load_u32(inner_ip).ok()?.to_ne_bytes()[0] != 0x45 {
            return None; // options in the quoted header: not ours
        }
        let proto = ctx.load_u32(inner_ip + 8).ok()?.to_ne_bytes()[1];
        (
            proto,
            load_addr(ctx, inner_ip + 12, false)?,
            load_addr(ctx, inner_ip + 16, false)?,
            inner_ip + 20,
        )
    };
    let ports = ctx.load_u32(inner_l4).ok()?.to_ne_bytes();
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let id = ctx.load_u32(inner_l4 + 4).ok()?.to_ne_bytes();
            (u16::from_be_bytes([id[0], id[1]]), 0)
        }
        _ => return None,
    };
    Some(Quoted {
        inner_ip,
        inner_l4,
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// RFC 5508: rewrites an ICMP error about a masqueraded flow back to the
/// peer: the outer destination, and the quoted packet's source address and
/// port, keeping the quoted IPv4 checksum and the ICMP checksum exact
/// (ICMPv6's covers the pseudo-header, so the outer address counts there).
#[inline(always)]
pub fn translate_icmp_error<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    q: &Quoted,
    peer_addr: [u32; 4],
    peer_port: u16,
) -> Result<(), ()> {
    let icmp_csum = pkt.l4_offset + 2;
    if pkt.ipv6 {
        for (i, &word) in peer_addr.iter().enumerate() {
            if pkt.dst[i] != word {
                ctx.store_u32(pkt.l3_offset + 24 + 4 * i, word)?;
                ctx.l4_csum(icmp_csum, pkt.dst[i], word, 4, true, false)?;
            }
            if q.src[i] != word {
                ctx.store_u32(q.inner_ip + 8 + 4 * i, word)?;
                ctx.l4_csum(icmp_csum, q.src[i], word, 4, false, false)?;
            }
        }
    } else {
        // Outer destination: IP checksum only (ICMPv4 has no pseudo-header).
        ctx.store_u32(pkt.l3_offset + 16, peer_addr[0])?;
        ctx.l3_csum(pkt.l3_offset + 10, pkt.dst[0], peer_addr[0], 4)?;
        // Quoted source address and its header checksum, and the ICMP
        // checksum over both changes.
        let inner_csum_at = q.inner_ip + 10;
        let old = ctx.load_u32(inner_csum_at)?.to_ne_bytes();
        let old_inner_csum = u16::from_ne_bytes([old[0], old[1]]);
        ctx.store_u32(q.inner_ip + 12, peer_addr[0])?;
        ctx.l4_csum(icmp_csum, q.src[0], peer_addr[0], 4, false, false)?;
        let new_inner_csum = crate::ctx::csum_update(old_inner_csum, q.src[0], peer_addr[0], 4);
        ctx.store_u16(inner_csum_at, new_inner_csum)?;
        ctx.l4_csum(
            icmp_csum,
            old_inner_csum as u32,
            new_inner_csum as u32,
            2,
            false,
            false,
        )?;
    }
    if peer_port != q.sport {
        let at = if matches!(q.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            q.inner_l4 + 4
        } else {
            q.inner_l4
        };
        ctx.store_u16(at, peer_port.to_be())?;
        ctx.l4_csum(
            icmp_csum,
            q.sport.to_be() as u32,
            peer_port.to_be() as u32,
            2,
            false,
            false,
        )?;
    }
    Ok(())
}
