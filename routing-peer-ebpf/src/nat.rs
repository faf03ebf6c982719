//! Masquerade: endpoint-independent SNAT (RFC 4787) of the overlay source to
//! the egress LAN address, and the reverse translation of replies.
//!
//! A mapping is a pair of LRU entries, peer endpoint → external endpoint and
//! back, both created with BPF_NOEXIST so CPUs racing for a port can't both
//! win. The configured range is the pool: the peer's own port is kept when
//! it lies in the range and is free; otherwise the range is scanned from a
//! random start until a free port turns up, so a port is found whenever one
//! is free (`bpf_loop`: bounded by the range, not by a retry count). ICMP
//! echo uses its identifier as the port.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, generated::bpf_loop},
    macros::map,
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use routing_peer_common::{
    DatapathConfig, DropReason, NatEndpoint, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    clock,
    ctx::Mangle,
    parse::{Packet, FRAG_LATER},
};

const MAX_MAPPINGS: u32 = 131072;

// Maps.
/// Masquerade mappings, peer endpoint → external endpoint.
#[map]
static NAT_FWD: LruHashMap<NatEndpoint, NatEndpoint> =
    LruHashMap::with_max_entries(MAX_MAPPINGS, crate::conntrack::LRU_FLAGS);
/// The same mappings the other way, external endpoint → peer endpoint.
#[map]
static NAT_REV: LruHashMap<NatEndpoint, NatEndpoint> =
    LruHashMap::with_max_entries(MAX_MAPPINGS, crate::conntrack::LRU_FLAGS);
/// Per CPU: the state of one pool scan, for the `bpf_loop` callback.
#[map]
static NAT_SCAN: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU, by pool (address, protocol): until when a scan that found the
/// pool full stands. New flows there fail at once in the meantime, so a
/// full pool costs one scan per CPU per second, not one per packet. A port
/// freed within that second (GC frees mappings after two idle passes, 20 s)
/// waits for the next scan.
#[map]
static NAT_FULL: LruPerCpuHashMap<NatEndpoint, u64> = LruPerCpuHashMap::with_max_entries(1024, 0);
/// Per CPU: scans of the whole pool started (they are what a full pool costs).
#[map]
static NAT_SCANS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Pool ports that sockets of the routing peer hold (services, clients
/// that bound their port), written by the daemon: never handed out. Key:
/// protocol << 16 | port.
#[map]
static NAT_RESERVED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn same(a: &NatEndpoint, b: &NatEndpoint) -> bool {
    a.addr == b.addr && a.port == b.port && a.proto == b.proto && a.family == b.family
}

/// Claims `external` for `peer` if it is free or already `peer`'s.
/// `fwd_current`: `NAT_FWD` already maps `peer` to `external`, so it is not
/// written again (an LRU update allocates a node and frees the old one
/// even for the same value: a third of a reused mapping's cost).
#[inline(always)]
fn claim(peer: &NatEndpoint, external: &NatEndpoint, fwd_current: bool) -> bool {
    if NAT_REV.insert(external, peer, BPF_NOEXIST as u64).is_err() {
        // SAFETY: copied out at once.
        match unsafe { NAT_REV.get(external) } {
            Some(owner) if same(owner, peer) => {}
            _ => return false,
        }
    }
    if !fwd_current {
        let _ = NAT_FWD.insert(peer, external, 0);
    }
    true
}

/// The state of one port scan. Per CPU, not on the stack: the fast path
/// above leaves no room for it.
#[repr(C)]
struct Scan {
    peer: NatEndpoint,
    external: NatEndpoint,
    min: u32,
    span: u32,
    start: u32,
    found: u32,
}

const FULL_BACKOFF_NS: u64 = 1_000_000_000;

/// Whether `external` is free of the routing peer's own sockets.
#[inline(always)]
fn not_reserved(external: &NatEndpoint) -> bool {
    let key = ((external.proto as u32) << 16) | external.port as u32;
    // SAFETY: a lookup in a map of plain integers.
    unsafe { NAT_RESERVED.get(key).is_none() }
}

/// One step of the scan: tries the `index`-th port after the random start.
/// Returns 1 (stop) once a port is claimed.
extern "C" fn scan_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scan) = NAT_SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let scan = unsafe { &mut *scan };
    if scan.span == 0 {
        return 1;
    }
    let offset = scan.start.wrapping_add(index as u32) % scan.span;
    scan.external.port = (scan.min + offset) as u16;
    if not_reserved(&scan.external) && claim(&scan.peer, &scan.external, false) {
        scan.found = 1;
        return 1;
    }
    0
}

#[inline(always)]
fn in_range(port: u16, cfg: &DatapathConfig) -> bool {
    port >= cfg.snat_port_min && port <= cfg.snat_port_max
}

/// The external endpoint for `peer` on `nat_addr`, reusing its mapping.
#[inline(always)]
pub fn snat_mapping(
    peer: &NatEndpoint,
    nat_addr: &[u32; 4],
    cfg: &DatapathConfig,
) -> Result<NatEndpoint, DropReason> {
    let scan = NAT_SCAN.get_ptr_mut(0).ok_or(DropReason::NatExhausted)?;
    // SAFETY: this CPU's slot, used by one program run at a time.
    unsafe {
        (*scan).peer = *peer;
        (*scan).external = NatEndpoint {
            addr: *nat_addr,
            port: peer.port,
            proto: peer.proto,
            family: peer.family,
        };
    }
    if allocate(cfg) == 0 {
        return Err(DropReason::NatExhausted);
    }
    // SAFETY: as above.
    Ok(unsafe { (*scan).external })
}

/// Finds the external endpoint for the peer endpoint in `NAT_SCAN`, on
/// the address already there; 1 when found (left in `NAT_SCAN`). Not
/// inlined, so its frame does not add to the fast path's, with its state
/// per CPU and one argument: LLVM would split a struct argument into more
/// registers than a BPF call has.
#[inline(never)]
fn allocate(cfg: &DatapathConfig) -> u32 {
    let Some(scan) = NAT_SCAN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let scan = unsafe { &mut *scan };
    // SAFETY: copied out at once.
    if let Some(existing) = unsafe { NAT_FWD.get(scan.peer).copied() } {
        // LRU may have evicted the reverse half; re-claiming restores it.
        if existing.addr == scan.external.addr
            && in_range(existing.port, cfg)
            && not_reserved(&existing)
            && claim(&scan.peer, &existing, true)
        {
            scan.external = existing;
            return 1;
        }
    }
    if in_range(scan.peer.port, cfg)
        && not_reserved(&scan.external)
        && claim(&scan.peer, &scan.external, false)
    {
        return 1;
    }
    // A pool found full a moment ago is not scanned again for every new
    // flow: that would cost a whole scan per packet to a peer opening
    // flows on a full pool.
    let pool = NatEndpoint {
        addr: scan.external.addr,
        port: 0,
        proto: scan.peer.proto,
        family: scan.peer.family,
    };
    let now = clock::now();
    // SAFETY: copied out at once.
    if let Some(until) = unsafe { NAT_FULL.get(pool).copied() } {
        if now < until {
            return 0;
        }
    }
    count_full_scan();
    let span = (cfg.snat_port_max as u32 + 1).saturating_sub(cfg.snat_port_min as u32);
    scan.min = cfg.snat_port_min as u32;
    scan.span = span;
    // SAFETY: plain helper call.
    scan.start = unsafe { bpf_get_prandom_u32() };
    scan.found = 0;
    // SAFETY: bpf_loop calls `scan_step` at most `span` (≤ 65536) times;
    // the step finds its state in NAT_SCAN.
    unsafe {
        bpf_loop(span, scan_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    if scan.found == 0 {
        let _ = NAT_FULL.insert(pool, now + FULL_BACKOFF_NS, 0);
    }
    scan.found
}

#[inline(always)]
fn count_full_scan() {
    if let Some(c) = NAT_SCANS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
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
    // A later fragment's transport checksum is in the first fragment.
    if pkt.frag == FRAG_LATER {
        return None;
    }
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
) -> Result<(), DropReason> {
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

/// Whether a TCP or UDP checksum is a partial one (CHECKSUM_PARTIAL: the
/// pseudo-header sum only, the rest left to offload). A frame from a
/// virtual device can carry one, and XDP, which has no skb to tell, would
/// corrupt it by an incremental update: such frames go to TC. A full
/// checksum equals the pseudo-header sum by chance once in 65536; that
/// frame takes the TC path too, which handles both.
#[inline(always)]
pub fn checksum_is_partial<C: Mangle>(ctx: &C, pkt: &Packet) -> bool {
    // (offset of 4 bytes inside the header that hold the checksum, which half)
    let (at, high) = match pkt.proto {
        IPPROTO_TCP => (pkt.l4_offset + 16, false),
        IPPROTO_UDP => (pkt.l4_offset + 4, true),
        _ => return false,
    };
    let Ok(word) = ctx.load_u32(at) else {
        return false;
    };
    let b = word.to_ne_bytes();
    let check = if high {
        u16::from_ne_bytes([b[2], b[3]])
    } else {
        u16::from_ne_bytes([b[0], b[1]])
    };
    if pkt.proto == IPPROTO_UDP && check == 0 {
        return false; // no checksum at all
    }
    let l4_len = (pkt.l3_len - (pkt.l4_offset - pkt.l3_offset)) as u16;
    // One's-complement sum of the pseudo-header, in 16-bit words as stored.
    let words = if pkt.ipv6 { 4 } else { 1 };
    let mut sum: u32 = 0;
    for i in 0..4 {
        if i < words {
            sum += (pkt.src[i] & 0xffff) + (pkt.src[i] >> 16);
            sum += (pkt.dst[i] & 0xffff) + (pkt.dst[i] >> 16);
        }
    }
    sum += u16::from_ne_bytes([0, pkt.proto]) as u32;
    sum += u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16 == check
}

/// Clamps the MSS of a TCP SYN so segments fit the overlay MTU. Every common
/// stack sends MSS as the first option, and only there is it looked for:
/// a bounded option walk costs more verifier budget than it is worth.
#[inline(always)]
pub fn clamp_mss<C: Mangle>(ctx: &C, pkt: &Packet, clamp: u16) -> Result<(), DropReason> {
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
) -> Result<(), DropReason> {
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
