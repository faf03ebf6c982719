//! Forwarding without the kernel IP stack: a FIB lookup, a TTL decrement and
//! a redirect. Anything the fast path can't do well (unknown route, packet
//! too big, TTL about to expire, unresolved neighbour on XDP) goes to the
//! kernel, which routes it or answers with the right ICMP error.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use routing_peer_common::{DropReason, FORWARD_MARK};

use crate::{ctx::Mangle, parse::Packet};

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;

// Maps.
/// L2 interfaces XDP may redirect into (each needs an XDP program on its
/// peer end for veth). Others get the kernel path.
#[map]
static XDP_REDIRECT_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);
/// Per CPU: the FIB lookup's parameters and result (`Route` points here).
#[map]
static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);
/// L3 devices (WireGuard, TUN) among the redirect targets: they take the
/// packet without an Ethernet header.
#[map]
static L3_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// A FIB result, kept in a per-CPU scratch slot: the 64-byte lookup
/// structure would not fit on the 512-byte BPF stack beside the fast path.
pub struct Route {
    params: *const bpf_fib_lookup,
    ipv6: bool,
}

/// The FIB scratch is zeroed as this many words: it must be exactly that.
const FIB_WORDS: usize = 8;
const _: () = assert!(size_of::<bpf_fib_lookup>() == FIB_WORDS * 8);

impl Route {
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        // SAFETY: the scratch slot is valid for this program run.
        unsafe { (*self.params).ifindex }
    }

    /// The address the kernel would use as source on this route: the
    /// masquerade address.
    #[inline(always)]
    pub fn src(&self) -> [u32; 4] {
        // SAFETY: as above; the helper filled our family's union member.
        unsafe {
            if self.ipv6 {
                (*self.params).__bindgen_anon_3.ipv6_src
            } else {
                [(*self.params).__bindgen_anon_3.ipv4_src, 0, 0, 0]
            }
        }
    }

    /// The next hop (the destination itself when on-link).
    #[inline(always)]
    pub fn nexthop(&self) -> [u32; 4] {
        // SAFETY: as above.
        unsafe {
            if self.ipv6 {
                (*self.params).__bindgen_anon_4.ipv6_dst
            } else {
                [(*self.params).__bindgen_anon_4.ipv4_dst, 0, 0, 0]
            }
        }
    }

    /// The egress device's MTU, as the lookup reported it.
    #[inline(always)]
    pub fn mtu(&self) -> u32 {
        // SAFETY: as above; the helper fills mtu_result on success and on
        // frag-needed.
        unsafe { (*self.params).__bindgen_anon_1.mtu_result as u32 }
    }

    #[inline(always)]
    fn macs(&self) -> ([u8; 6], [u8; 6]) {
        // SAFETY: as above.
        unsafe { ((*self.params).smac, (*self.params).dmac) }
    }
}

/// What the FIB says about a packet's destination.
pub enum Fib {
    /// Forward along this route.
    Forward(Route),
    /// Forward along this route, but the packet is over its MTU.
    TooBig(Route),
    /// One of this host's own addresses (or a broadcast): the input chain.
    Local,
    /// No route, or a blackhole, unreachable or prohibit route.
    Unroutable,
}

/// Where a packet goes: its own destination, or a reply's once translated.
pub struct To {
    pub addr: [u32; 4],
    pub port: u16,
}

impl To {
    #[inline(always)]
    pub fn dst_of(pkt: &Packet) -> Self {
        Self {
            addr: pkt.dst,
            port: pkt.dport,
        }
    }
}

/// Looks the destination up in the FIB as the kernel would forward it.
#[inline(always)]
fn fib_lookup<C: EbpfContext>(
    ctx: &C,
    pkt: &Packet,
    to: &To,
    in_ifindex: u32,
    skb: bool,
) -> (i64, Option<Route>) {
    // tot_len 0 leaves the MTU check to the skb helper (see `lookup_tc`).
    let tot_len = if skb { 0 } else { pkt.l3_len as u16 };
    let Some(params) = FIB_SCRATCH.get_ptr_mut(0) else {
        return (-1, None);
    };
    // SAFETY: per-CPU slot; all-zero is a valid bpf_fib_lookup. Zeroed as
    // eight words: a memset would become 64 single-byte stores.
    let p = unsafe {
        let words = params as *mut [u64; FIB_WORDS];
        for i in 0..FIB_WORDS {
            (*words)[i] = 0;
        }
        &mut *params
    };
    p.family = if pkt.ipv6 {
        AF_INET6_KERNEL
    } else {
        AF_INET_KERNEL
    };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport.to_be();
    p.dport = to.port.to_be();
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = in_ifindex;
    if pkt.ipv6 {
        p.__bindgen_anon_3.ipv6_src = pkt.src;
        p.__bindgen_anon_4.ipv6_dst = to.addr;
    } else {
        p.__bindgen_anon_3.ipv4_src = pkt.src[0];
        p.__bindgen_anon_4.ipv4_dst = to.addr[0];
    }
    // TC resolves neighbours in bpf_redirect_neigh; XDP needs them now.
    // The source is the masquerade address.
    let flags = if skb {
        BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH
    } else {
        BPF_FIB_LOOKUP_SRC
    };
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    (
        rc,
        Some(Route {
            params,
            ipv6: pkt.ipv6,
        }),
    )
}

#[inline(always)]
fn classify(rc: i64, route: Option<Route>) -> Fib {
    match (rc as u32, route) {
        (BPF_FIB_LKUP_RET_SUCCESS, Some(r)) => Fib::Forward(r),
        (BPF_FIB_LKUP_RET_FRAG_NEEDED, Some(r)) => Fib::TooBig(r),
        (BPF_FIB_LKUP_RET_NOT_FWDED, _) => Fib::Local,
        _ => Fib::Unroutable,
    }
}

/// XDP: the lookup with the MTU checked against the IP length.
#[inline(always)]
pub fn lookup_xdp(ctx: &XdpContext, pkt: &Packet, to: &To, in_ifindex: u32) -> Fib {
    let (rc, route) = fib_lookup(ctx, pkt, to, in_ifindex, false);
    classify(rc, route)
}

/// TC: the lookup, then the MTU check on the skb: a GSO skb is segmented
/// later and fits; any other packet must fit the egress MTU (the helper
/// alone allows a VLAN header's worth more).
#[inline(always)]
pub fn lookup_tc(ctx: &TcContext, pkt: &Packet, to: &To, in_ifindex: u32) -> Fib {
    let (rc, route) = fib_lookup(ctx, pkt, to, in_ifindex, true);
    match classify(rc, route) {
        // The helper checks the whole skb, L2 header included, against the
        // egress MTU plus the egress's own header: from an Ethernet LAN into
        // an L3 overlay it calls a packet of up to 10 bytes under the MTU
        // too big (every 1280-byte IPv6 packet into a 1280 overlay). The IP
        // length is what must fit; both answers carry the MTU.
        Fib::Forward(r) | Fib::TooBig(r) => {
            // SAFETY: reading the skb's GSO size; the route's MTU is in
            // the union member the helper filled.
            let (gso_size, mtu) = unsafe {
                (
                    (*ctx.skb.skb).gso_size,
                    (*r.params).__bindgen_anon_1.mtu_result,
                )
            };
            if gso_size == 0 && pkt.l3_len > mtu as usize {
                Fib::TooBig(r)
            } else {
                Fib::Forward(r)
            }
        }
        other => other,
    }
}

/// TC: redirect toward the route's device, the right way for its kind:
/// plain bpf_redirect for an L3 device (the kernel strips our L2 header),
/// the neighbour layer for an L2 one.
#[inline(always)]
pub fn redirect_to(route: &Route, ipv6: bool) -> i32 {
    // SAFETY: lookup in a map of plain integers.
    if unsafe { L3_IFACES.get(route.ifindex()).is_some() } {
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(route.ifindex(), 0) } as i32;
    }
    redirect_neigh(route, ipv6)
}

/// Decrements the TTL (hop limit). The caller has checked it is above 1.
#[inline(always)]
pub fn decrement_ttl<C: Mangle>(ctx: &C, pkt: &Packet) -> Result<(), DropReason> {
    if pkt.ipv6 {
        // No header checksum in IPv6.
        return ctx.store_u8(pkt.l3_offset + 7, pkt.ttl - 1);
    }
    // TTL and protocol share a 16-bit word, which the checksum covers.
    let from = u16::from_ne_bytes([pkt.ttl, pkt.proto]) as u32;
    let to = u16::from_ne_bytes([pkt.ttl - 1, pkt.proto]) as u32;
    ctx.store_u16(pkt.l3_offset + 8, to as u16)?;
    ctx.l3_csum(pkt.l3_offset + 10, from, to, 2)
}

/// TC on an L3 overlay (WireGuard, TUN): give the packet a placeholder
/// Ethernet header. bpf_redirect_neigh drops packets without one; it
/// replaces it with the real addresses from the neighbour table.
#[inline(always)]
pub fn push_l2_header(ctx: &TcContext, ipv6: bool) -> Result<(), DropReason> {
    // SAFETY: plain helper call on our skb.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_skb_change_head(ctx.skb.skb, 14, 0) };
    if rc != 0 {
        return Err(DropReason::Malformed);
    }
    let proto: u16 = if ipv6 { 0x86DD } else { 0x0800 };
    // Zeroed MACs: unicast, and overwritten by the neighbour layer.
    for offset in [0usize, 4, 8] {
        ctx.store_u32(offset, 0)?;
    }
    ctx.store_u16(12, proto.to_be())
}

/// TC: hand the packet to the egress device's neighbour layer, which writes
/// the L2 header for the next hop.
#[inline(always)]
pub fn redirect_neigh(route: &Route, ipv6: bool) -> i32 {
    // SAFETY: all-zero is a valid bpf_redir_neigh.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    if ipv6 {
        nh.nh_family = AF_INET6_KERNEL as u32;
        nh.__bindgen_anon_1.ipv6_nh = route.nexthop();
    } else {
        nh.nh_family = AF_INET_KERNEL as u32;
        nh.__bindgen_anon_1.ipv4_nh = route.nexthop()[0];
    }
    // SAFETY: nh is valid and correctly sized.
    unsafe {
        bpf_redirect_neigh(
            route.ifindex(),
            &mut nh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

#[inline(always)]
pub fn xdp_redirect_allowed(ifindex: u32) -> bool {
    // SAFETY: lookup in a map of plain integers.
    unsafe { XDP_REDIRECT_IFACES.get(ifindex).is_some() }
}

/// TC: hands a translated packet to the kernel to forward (it fragments
/// what we cannot), marked so the safety-net table lets it through.
#[inline(always)]
pub fn mark_for_kernel(ctx: &TcContext) {
    ctx.set_mark(FORWARD_MARK);
}

/// XDP: rewrite the Ethernet header and redirect. `None` means: let the
/// kernel forward it.
#[inline(always)]
pub fn xdp_redirect<C: Mangle>(ctx: &C, route: &Route) -> Option<u32> {
    let (s, d) = route.macs();
    for (i, pair) in [
        [d[0], d[1]],
        [d[2], d[3]],
        [d[4], d[5]],
        [s[0], s[1]],
        [s[2], s[3]],
        [s[4], s[5]],
    ]
    .iter()
    .enumerate()
    {
        ctx.store_u16(2 * i, u16::from_ne_bytes(*pair)).ok()?;
    }
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect(route.ifindex(), 0) } as u32)
}
