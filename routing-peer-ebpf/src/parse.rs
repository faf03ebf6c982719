//! Header parsing and validation. Anything that fails here is dropped with a
//! counted reason; nothing malformed reaches policy, conntrack or NAT.

use core::mem::size_of;

use routing_peer_common::{DropReason, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

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

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

#[repr(C)]
struct Ipv6ExtHdr {
    next_hdr: u8,
    len: u8,
}

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    pub doff_flags: u16,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub id: u16,
    pub seq: u16,
}

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

/// What policy and conntrack need to know about a valid IP packet.
/// Addresses are kept in network byte order; IPv4 uses `addr[0]` only.
#[derive(Clone, Copy)]
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
}

/// `Ok(None)` is a valid non-IP frame (ARP, LLDP, …) that the stack should see.
#[inline(always)]
pub fn parse_packet(frame: &Frame) -> Result<Option<Packet>, DropReason> {
    let (ethertype, l3_offset) = if frame.l2 {
        let eth: *const EthHdr = frame.ptr_at(0)?;
        (u16::from_be(unsafe { (*eth).proto }), size_of::<EthHdr>())
    } else {
        // An L3 device carries the IP version in the first nibble. Both
        // versions' headers are at least an IPv4 header long; a one-byte
        // bound would be folded by LLVM into a form the verifier rejects.
        let first: *const Ipv4Hdr = frame.ptr_at(0)?;
        match unsafe { (*first).version_ihl } >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            _ => return Err(DropReason::Malformed),
        }
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3_offset).map(Some),
        ETH_P_IPV6 => parse_ipv6(frame, l3_offset).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, l3_offset: usize) -> Result<Packet, DropReason> {
    let ip: *const Ipv4Hdr = frame.ptr_at(l3_offset)?;
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
    // MF set or a non-zero offset: a fragment.
    if frag_off & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    let l4_offset = l3_offset + header_len;
    let (sport, dport, tcp_flags, icmp_type) = parse_l4(frame, l4_offset, proto)?;
    Ok(Packet {
        ipv6: false,
        l3_offset,
        l4_offset,
        l3_len: tot_len,
        proto,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        sport,
        dport,
        ttl,
        tcp_flags,
        icmp_type,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3_offset: usize) -> Result<Packet, DropReason> {
    let ip: *const Ipv6Hdr = frame.ptr_at(l3_offset)?;
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
    if vtc_flow >> 28 != 6 || l3_offset + size_of::<Ipv6Hdr>() + payload_len > frame.len() {
        return Err(DropReason::Malformed);
    }
    let mut l4_offset = l3_offset + size_of::<Ipv6Hdr>();
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next_hdr {
            IPV6_FRAGMENT => return Err(DropReason::Fragment),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: *const Ipv6ExtHdr = frame.ptr_at(l4_offset)?;
                let (next, len) = unsafe { ((*ext).next_hdr, (*ext).len) };
                next_hdr = next;
                l4_offset += (len as usize + 1) * 8;
            }
            _ => break,
        }
    }
    if matches!(
        next_hdr,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
    ) {
        // More extension headers than we walk: refuse rather than skip policy.
        return Err(DropReason::Malformed);
    }
    let (sport, dport, tcp_flags, icmp_type) = parse_l4(frame, l4_offset, next_hdr)?;
    Ok(Packet {
        ipv6: true,
        l3_offset,
        l4_offset,
        l3_len: size_of::<Ipv6Hdr>() + payload_len,
        proto: next_hdr,
        src,
        dst,
        sport,
        dport,
        ttl,
        tcp_flags,
        icmp_type,
    })
}

/// (source port, destination port, TCP flags, ICMP type). Other protocols carry no
/// ports and match port-less rules only.
#[inline(always)]
fn parse_l4(frame: &Frame, l4_offset: usize, proto: u8) -> Result<(u16, u16, u8, u8), DropReason> {
    match proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = frame.ptr_at(l4_offset)?;
            let (source, dest, doff_flags) =
                unsafe { ((*tcp).source, (*tcp).dest, u16::from_be((*tcp).doff_flags)) };
            if ((doff_flags >> 12) as usize) * 4 < size_of::<TcpHdr>() {
                return Err(DropReason::Malformed);
            }
            Ok((
                u16::from_be(source),
                u16::from_be(dest),
                doff_flags as u8,
                0,
            ))
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = frame.ptr_at(l4_offset)?;
            let (source, dest) = unsafe { ((*udp).source, (*udp).dest) };
            Ok((u16::from_be(source), u16::from_be(dest), 0, 0))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp: *const IcmpHdr = frame.ptr_at(l4_offset)?;
            let (kind, id) = unsafe { ((*icmp).kind, u16::from_be((*icmp).id)) };
            let echo = if proto == IPPROTO_ICMP {
                kind == ICMP_ECHO_REQUEST || kind == ICMP_ECHO_REPLY
            } else {
                kind == ICMPV6_ECHO_REQUEST || kind == ICMPV6_ECHO_REPLY
            };
            let id = if echo { id } else { 0 };
            Ok((id, id, 0, kind))
        }
        _ => Ok((0, 0, 0, 0)),
    }
}
