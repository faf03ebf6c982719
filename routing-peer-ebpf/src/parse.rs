//! Header parsing and validation. Anything that fails here is dropped with a
//! counted reason; nothing malformed reaches policy, conntrack or NAT.
//!
//! Checked: what the kernel's `ip_rcv`/`ipv6_rcv` check (version, header
//! length, header checksum, IPv4 options' lengths, total length against the
//! frame) and what L4 needs (every header inside the IP datagram, the UDP
//! length, the TCP data offset). Each check reads a bounded number of
//! words, so the cost does not depend on the packet.

use core::mem::size_of;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use routing_peer_common::{DropReason, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub use crate::headers::*;
use crate::{
    headers::{Ipv6ExtHdr, Ipv6FragHdr},
    options::ipv4_options_ok,
};

// Maps.
/// The packet being decided, per CPU: on the 512-byte stack it would
/// crowd out the fast path (LLVM keeps several copies of it there).
#[map]
static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up; a bound the verifier can see.
const IPV6_MAX_EXT_HEADERS: usize = 4;
const IPV4_MAX_HEADER_WORDS: usize = 15;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Not a fragment (or an IPv6 atomic fragment, RFC 6946).
pub const FRAG_NONE: u8 = 0;
/// The first fragment: it carries the transport header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: payload only.
pub const FRAG_LATER: u8 = 2;

/// The bytes of one packet as the hook sees them.
pub struct Frame {
    start: usize,
    end: usize,
    /// Length on the wire; for an skb this includes non-linear data.
    wire_len: usize,
    l2: bool,
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize, wire_len: usize, l2: bool) -> Self {
        Self {
            start,
            end,
            wire_len,
            l2,
        }
    }

    /// Bytes on the wire: what counters account and IP lengths are checked against.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.wire_len
    }

    /// A bounds-checked pointer to a `T` at `offset`, as the verifier demands.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Result<*mut T, DropReason> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return Err(DropReason::Malformed);
        }
        Ok(at as *mut T)
    }
}

/// The furthest the transport header may start: TC pulls 192 bytes, and
/// a bound lets XDP writes mask offsets the verifier cannot otherwise see.
pub const MAX_L4_OFFSET: usize = 256;

/// What policy and conntrack need to know about a valid IP packet.
/// Addresses are kept in network byte order; IPv4 uses `addr[0]` only.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    pub ipv6: bool,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// IP total length (IPv6: header plus payload).
    pub l3_len: usize,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Host byte order. ICMP echo carries its identifier in both ports;
    /// other ICMP messages have none.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP type (IPv4 and IPv6); 0 for other protocols.
    pub icmp_type: u8,
    /// IPv4 Don't Fragment; IPv6 is never fragmented on the way.
    pub df: bool,
    /// TCP sequence and acknowledgement numbers (host order), window; 0 otherwise.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_win: u16,
    /// L4 payload bytes (TCP: after the options).
    pub l4_payload: u16,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER`.
    pub frag: u8,
    /// The protocol a fragment's datagram is keyed by (IPv6: the fragment
    /// header's next header), and its identification.
    pub frag_proto: u8,
    pub frag_id: u32,
    /// A fragment's offset in its datagram, in bytes.
    pub frag_offset: u16,
    /// A first fragment: where its transport header ends, in datagram bytes.
    pub l4_end: u16,
}

/// The fragment fields of a `Packet`.
#[derive(Clone, Copy, Default)]
struct Frag {
    kind: u8,
    proto: u8,
    id: u32,
    offset: u16,
    /// Where the fragmentable part starts in the frame.
    start: usize,
}

/// What the transport header tells.
#[derive(Clone, Copy, Default)]
struct L4 {
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
    tcp_seq: u32,
    tcp_ack: u32,
    tcp_win: u16,
    payload: u16,
    /// The transport header's length.
    header: u16,
}

/// `Ok(None)` is a valid non-IP frame (ARP, LLDP, …) that the stack should see.
#[inline(always)]
pub fn parse_packet(frame: &Frame) -> Result<Option<&'static Packet>, DropReason> {
    match parse_frame(frame) {
        IS_IP => {
            let slot = PACKET.get_ptr(0).ok_or(DropReason::Malformed)?;
            // SAFETY: this CPU's slot, filled by `parse_frame` just now.
            Ok(Some(unsafe { &*slot }))
        }
        NOT_IP => Ok(None),
        code => Err(DropReason::ALL
            .get((-code - 1) as usize)
            .copied()
            .unwrap_or(DropReason::Malformed)),
    }
}

const IS_IP: i64 = 1;
const NOT_IP: i64 = 0;

/// Fills this CPU's packet slot: `IS_IP`, `NOT_IP`, or a drop reason as
/// −(reason + 1). Not inlined: a plain integer comes back, and its frame is
/// gone before the packet is decided (the deciding path needs the stack).
#[inline(never)]
fn parse_frame(frame: &Frame) -> i64 {
    let Some(slot) = PACKET.get_ptr_mut(0) else {
        return -(DropReason::Malformed as i64 + 1);
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let pkt = unsafe { &mut *slot };
    match parse_into(frame, pkt) {
        Ok(true) => IS_IP,
        Ok(false) => NOT_IP,
        Err(reason) => -(reason as i64 + 1),
    }
}

/// Fills `pkt`; `false` for a non-IP frame.
#[inline(always)]
fn parse_into(frame: &Frame, pkt: &mut Packet) -> Result<bool, DropReason> {
    let (ethertype, l3_offset) = if frame.l2 {
        let eth: *const EthHdr = frame.ptr_at(0)?;
        // SAFETY: bounds checked by `ptr_at`.
        (u16::from_be(unsafe { (*eth).proto }), size_of::<EthHdr>())
    } else {
        // An L3 device carries the IP version in the first nibble. Both
        // versions' headers are at least an IPv4 header long; a one-byte
        // bound would be folded by LLVM into a form the verifier rejects.
        let first: *const Ipv4Hdr = frame.ptr_at(0)?;
        // SAFETY: bounds checked by `ptr_at`.
        match unsafe { (*first).version_ihl } >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            _ => return Err(DropReason::Malformed),
        }
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3_offset, pkt).map(|_| true),
        ETH_P_IPV6 => parse_ipv6(frame, l3_offset, pkt).map(|_| true),
        _ => Ok(false),
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, l3_offset: usize, pkt: &mut Packet) -> Result<(), DropReason> {
    let ip: *const Ipv4Hdr = frame.ptr_at(l3_offset)?;
    // SAFETY: `ptr_at` checked the whole header is inside the frame.
    let (version_ihl, tot_len, frag_off, ttl, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).frag_off),
            (*ip).ttl,
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
        )
    };
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4
        || header_len < size_of::<Ipv4Hdr>()
        || tot_len < header_len
        || l3_offset + tot_len > frame.len()
    {
        return Err(DropReason::Malformed);
    }
    ipv4_checksum_ok(frame, l3_offset, header_len)?;
    if header_len > size_of::<Ipv4Hdr>() {
        ipv4_options_ok(frame, l3_offset, header_len)?;
    }
    let l4_offset = l3_offset + header_len;
    // SAFETY: bounds checked by `ptr_at` above.
    let id = u16::from_be(unsafe { (*ip).id });
    let frag = ipv4_frag(frag_off, id, proto, l4_offset);
    let l4 = parse_l4(frame, l4_offset, l3_offset + tot_len, proto, &frag)?;
    // Field by field: a struct literal is built on the stack, then copied.
    pkt.ipv6 = false;
    pkt.l3_offset = l3_offset;
    pkt.l4_offset = l4_offset;
    pkt.l3_len = tot_len;
    pkt.proto = proto;
    pkt.src = [src, 0, 0, 0];
    pkt.dst = [dst, 0, 0, 0];
    pkt.ttl = ttl;
    pkt.df = frag_off & IP_DF != 0;
    set_l4(pkt, &l4, &frag, l4_offset);
    Ok(())
}

/// The transport and fragment fields both families share, written in place.
#[inline(always)]
fn set_l4(pkt: &mut Packet, l4: &L4, frag: &Frag, l4_offset: usize) {
    pkt.sport = l4.sport;
    pkt.dport = l4.dport;
    pkt.tcp_flags = l4.tcp_flags;
    pkt.icmp_type = l4.icmp_type;
    pkt.tcp_seq = l4.tcp_seq;
    pkt.tcp_ack = l4.tcp_ack;
    pkt.tcp_win = l4.tcp_win;
    pkt.l4_payload = l4.payload;
    pkt.frag = frag.kind;
    pkt.frag_proto = frag.proto;
    pkt.frag_id = frag.id;
    pkt.frag_offset = frag.offset;
    pkt.l4_end = (l4_offset - frag.start) as u16 + l4.header;
}

/// MF set or a non-zero offset: a fragment.
#[inline(always)]
fn ipv4_frag(frag_off: u16, id: u16, proto: u8, l4_offset: usize) -> Frag {
    if frag_off & (IP_MF | IP_OFFSET) == 0 {
        return Frag::default();
    }
    let offset = (frag_off & IP_OFFSET) * 8;
    Frag {
        kind: if offset == 0 { FRAG_FIRST } else { FRAG_LATER },
        proto,
        id: id as u32,
        offset,
        start: l4_offset,
    }
}

/// The smallest transport header of `proto`: a later fragment starting
/// inside it would overwrite what the policy inspected.
#[inline(always)]
fn min_l4_header(proto: u8) -> u16 {
    match proto {
        IPPROTO_TCP => size_of::<TcpHdr>() as u16,
        IPPROTO_UDP => size_of::<UdpHdr>() as u16,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => size_of::<IcmpHdr>() as u16,
        _ => 0,
    }
}

/// The IPv4 header checksum, as `ip_rcv` verifies it: the one's-complement
/// sum of the header's 16-bit words is all ones.
#[inline(always)]
fn ipv4_checksum_ok(frame: &Frame, l3_offset: usize, header_len: usize) -> Result<(), DropReason> {
    let words = header_len / 4;
    let mut sum: u64 = 0;
    // Bounded by the largest IHL, so the verifier sees the loop end.
    for i in 0..IPV4_MAX_HEADER_WORDS {
        if i >= words {
            break;
        }
        let w: *const u32 = frame.ptr_at(l3_offset + 4 * i)?;
        // SAFETY: bounds checked by `ptr_at`; the header may be unaligned.
        sum += unsafe { w.read_unaligned() } as u64;
    }
    // Folding the 32-bit sum of 32-bit words gives the 16-bit word sum.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let mut s16 = (sum & 0xffff) + (sum >> 16);
    s16 = (s16 & 0xffff) + (s16 >> 16);
    if s16 as u16 != 0xffff {
        return Err(DropReason::Malformed);
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3_offset: usize, pkt: &mut Packet) -> Result<(), DropReason> {
    let ip: *const Ipv6Hdr = frame.ptr_at(l3_offset)?;
    // SAFETY: `ptr_at` checked the whole header is inside the frame.
    let (vtc_flow, payload_len, mut next_hdr, ttl, src, dst) = unsafe {
        (
            u32::from_be((*ip).vtc_flow),
            u16::from_be((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).hop_limit,
            (*ip).src,
            (*ip).dst,
        )
    };
    let l3_end = l3_offset + size_of::<Ipv6Hdr>() + payload_len;
    if vtc_flow >> 28 != 6 || l3_end > frame.len() {
        return Err(DropReason::Malformed);
    }
    let mut l4_offset = l3_offset + size_of::<Ipv6Hdr>();
    let mut frag = Frag::default();
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next_hdr {
            // A later fragment's payload is no header chain.
            _ if frag.kind == FRAG_LATER => break,
            IPV6_FRAGMENT if frag.kind != FRAG_NONE => return Err(DropReason::Malformed),
            IPV6_FRAGMENT => {
                let fh: *const Ipv6FragHdr = frame.ptr_at(l4_offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let (next, offset_flags, id) = unsafe {
                    (
                        (*fh).next_hdr,
                        u16::from_be((*fh).offset_flags),
                        u32::from_be((*fh).id),
                    )
                };
                l4_offset += size_of::<Ipv6FragHdr>();
                if l4_offset > l3_end {
                    return Err(DropReason::Malformed);
                }
                let offset = offset_flags & 0xfff8;
                // Offset 0 without M is an atomic fragment: a whole datagram.
                if offset != 0 || offset_flags & 1 != 0 {
                    frag = Frag {
                        kind: if offset == 0 { FRAG_FIRST } else { FRAG_LATER },
                        proto: next,
                        id,
                        offset,
                        start: l4_offset,
                    };
                }
                next_hdr = next;
            }
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: *const Ipv6ExtHdr = frame.ptr_at(l4_offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let (next, len) = unsafe { ((*ext).next_hdr, (*ext).len) };
                next_hdr = next;
                l4_offset += (len as usize + 1) * 8;
                // Each extension header lies inside the payload.
                if l4_offset > l3_end {
                    return Err(DropReason::Malformed);
                }
            }
            _ => break,
        }
    }
    if frag.kind != FRAG_LATER
        && matches!(
            next_hdr,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
        )
    {
        // More extension headers than we walk: refuse rather than skip policy.
        return Err(DropReason::Malformed);
    }
    if frag.kind == FRAG_NONE {
        frag.start = l4_offset;
    }
    let l4 = parse_l4(frame, l4_offset, l3_end, next_hdr, &frag)?;
    // Field by field: a struct literal is built on the stack, then copied.
    pkt.ipv6 = true;
    pkt.l3_offset = l3_offset;
    pkt.l4_offset = l4_offset;
    pkt.l3_len = size_of::<Ipv6Hdr>() + payload_len;
    pkt.proto = next_hdr;
    pkt.src = src;
    pkt.dst = dst;
    pkt.ttl = ttl;
    pkt.df = true;
    set_l4(pkt, &l4, &frag, l4_offset);
    Ok(())
}

/// The transport header, which must lie inside the IP datagram
/// (`l4_offset..l3_end`). Other protocols carry no ports and match
/// port-less rules only. A later fragment has none; one that starts inside
/// the smallest header of its protocol overlaps it (RFC 1858, 3128). A
/// first fragment must hold the whole header; its UDP length is the
/// datagram's, longer than the fragment.
#[inline(always)]
fn parse_l4(
    frame: &Frame,
    l4_offset: usize,
    l3_end: usize,
    proto: u8,
    frag: &Frag,
) -> Result<L4, DropReason> {
    if l4_offset > l3_end || l4_offset > MAX_L4_OFFSET {
        return Err(DropReason::Malformed);
    }
    let segment = l3_end - l4_offset;
    if frag.kind == FRAG_LATER {
        if frag.offset < min_l4_header(frag.proto) {
            return Err(DropReason::FragmentOverlap);
        }
        return Ok(L4::default());
    }
    let first = frag.kind == FRAG_FIRST;
    if first && segment < min_l4_header(proto) as usize {
        return Err(DropReason::FragmentTiny);
    }
    match proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = frame.ptr_at(l4_offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let (source, dest, doff_flags, seq, ack, win) = unsafe {
                (
                    (*tcp).source,
                    (*tcp).dest,
                    u16::from_be((*tcp).doff_flags),
                    (*tcp).seq,
                    (*tcp).ack_seq,
                    (*tcp).window,
                )
            };
            let header = ((doff_flags >> 12) as usize) * 4;
            if first && header > segment {
                return Err(DropReason::FragmentTiny);
            }
            if header < size_of::<TcpHdr>() || header > segment {
                return Err(DropReason::Malformed);
            }
            Ok(L4 {
                sport: u16::from_be(source),
                dport: u16::from_be(dest),
                tcp_flags: doff_flags as u8,
                tcp_seq: u32::from_be(seq),
                tcp_ack: u32::from_be(ack),
                tcp_win: u16::from_be(win),
                payload: (segment - header) as u16,
                header: header as u16,
                ..L4::default()
            })
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = frame.ptr_at(l4_offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let (source, dest, len) = unsafe { ((*udp).source, (*udp).dest, (*udp).len) };
            let len = u16::from_be(len) as usize;
            if len < size_of::<UdpHdr>() || (len > segment && !first) {
                return Err(DropReason::Malformed);
            }
            Ok(L4 {
                sport: u16::from_be(source),
                dport: u16::from_be(dest),
                payload: (len - size_of::<UdpHdr>()) as u16,
                header: size_of::<UdpHdr>() as u16,
                ..L4::default()
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if segment < size_of::<IcmpHdr>() {
                return Err(DropReason::Malformed);
            }
            let icmp: *const IcmpHdr = frame.ptr_at(l4_offset)?;
            // SAFETY: bounds checked by `ptr_at`.
            let (kind, id) = unsafe { ((*icmp).kind, u16::from_be((*icmp).id)) };
            let echo = if proto == IPPROTO_ICMP {
                kind == ICMP_ECHO_REQUEST || kind == ICMP_ECHO_REPLY
            } else {
                kind == ICMPV6_ECHO_REQUEST || kind == ICMPV6_ECHO_REPLY
            };
            let id = if echo { id } else { 0 };
            Ok(L4 {
                sport: id,
                dport: id,
                icmp_type: kind,
                header: size_of::<IcmpHdr>() as u16,
                ..L4::default()
            })
        }
        _ => Ok(L4::default()),
    }
}
