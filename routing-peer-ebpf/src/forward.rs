//! Forwarding without the kernel IP stack: a FIB lookup, a TTL decrement and
//! a redirect. Anything the fast path can't do well (unknown route, packet
//! too big, TTL about to expire, unresolved neighbour on XDP) goes to the
//! kernel, which routes it or answers with the right ICMP error.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        BPF_FIB_LOOKUP_SRC,
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
    /// The lookup found the next hop's neighbour: the MACs are valid.
    neigh: bool,
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

/// Looks the destination up in the FIB as the kernel would forward it,
/// into this CPU's scratch; the helper's return code. `tot_len` non-zero
/// has the helper check the IP length against the route's MTU.
#[inline(always)]
fn fib_lookup<C: EbpfContext>(
    ctx: &C,
    pkt: &Packet,
    to: &To,
    in_ifindex: u32,
    tot_len: u16,
    flags: u32,
) -> Option<(i64, *mut bpf_fib_lookup)> {
    let params = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; all-zero is a valid bpf_fib_lookup. Zeroed as
    // eight volatile words: LLVM turns a plain loop into a call to a
    // memset subprogram (3% of a packet's cost in the profile).
    let p = unsafe {
        let words = params as *mut u64;
        for i in 0..FIB_WORDS {
            words.add(i).write_volatile(0);
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
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    Some((rc, params))
}

/// XDP: the lookup with the MTU checked against the IP length, the
/// neighbour resolved (XDP writes the MACs), the source the masquerade
/// address. No neighbour is the kernel's business.
#[inline(always)]
pub fn lookup_xdp(ctx: &XdpContext, pkt: &Packet, to: &To, in_ifindex: u32) -> Fib {
    let tot_len = pkt.l3_len as u16;
    let Some((rc, params)) = fib_lookup(ctx, pkt, to, in_ifindex, tot_len, BPF_FIB_LOOKUP_SRC)
    else {
        return Fib::Unroutable;
    };
    let route = Route {
        params,
        ipv6: pkt.ipv6,
        neigh: true,
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Forward(route),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::TooBig(route),
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        _ => Fib::Unroutable,
    }
}

/// TC: one lookup with the IP length checked against the route's MTU (a
/// GSO skb is segmented later and is not checked) and the neighbour
/// looked up, so that a resolved next hop needs no neighbour layer at
/// redirect time. The helper's skb check is not used: it counts the L2
/// header against the egress MTU, so from an Ethernet LAN into an L3
/// overlay it called packets up to 10 bytes under the MTU too big.
#[inline(always)]
pub fn lookup_tc(ctx: &TcContext, pkt: &Packet, to: &To, in_ifindex: u32) -> Fib {
    // SAFETY: reading the skb's GSO size.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let tot_len = if gso { 0 } else { pkt.l3_len as u16 };
    let Some((rc, params)) = fib_lookup(ctx, pkt, to, in_ifindex, tot_len, BPF_FIB_LOOKUP_SRC)
    else {
        return Fib::Unroutable;
    };
    let route = |neigh| Route {
        params,
        ipv6: pkt.ipv6,
        neigh,
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Forward(route(true)),
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::Forward(route(false)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => lookup_too_big(ctx, pkt, to, in_ifindex),
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        _ => Fib::Unroutable,
    }
}

/// A packet over its route's MTU: the helper stopped before filling the
/// egress device and source, so look again without the check, keeping the
/// MTU the first lookup reported (what an ICMP error announces).
#[inline(always)]
fn lookup_too_big(ctx: &TcContext, pkt: &Packet, to: &To, in_ifindex: u32) -> Fib {
    let Some(params) = FIB_SCRATCH.get_ptr(0) else {
        return Fib::Unroutable;
    };
    // SAFETY: per-CPU slot the first lookup filled.
    let mtu = unsafe { (*params).__bindgen_anon_1.mtu_result };
    let flags = BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    let Some((rc, params)) = fib_lookup(ctx, pkt, to, in_ifindex, 0, flags) else {
        return Fib::Unroutable;
    };
    match rc as u32 {
        // The skb check may say either: the fields are filled in both.
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: as above.
            unsafe { (*params).__bindgen_anon_1.mtu_result = mtu };
            Fib::TooBig(Route {
                params,
                ipv6: pkt.ipv6,
                neigh: false,
            })
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        _ => Fib::Unroutable,
    }
}

/// TC: sends the packet out of the route's device. With the neighbour
/// known, the MACs are written here (after an Ethernet header is pushed
/// onto a packet from an L3 device, `l2_in` false) and the packet goes
/// straight to the device; an L3 device (WireGuard, TUN, whose neighbours
/// are address-less) has the kernel strip that header again. Without it,
/// an L3 device takes the packet as it is, and an L2 one gets it through
/// the neighbour layer, which resolves the next hop and writes the MACs.
#[inline(always)]
pub fn redirect_tc(
    ctx: &TcContext,
    route: &Route,
    ipv6: bool,
    l2_in: bool,
) -> Result<i32, DropReason> {
    let ifindex = route.ifindex();
    // SAFETY: lookup in a map of plain integers.
    if !route.neigh && unsafe { L3_IFACES.get(ifindex).is_some() } {
        // SAFETY: plain helper call.
        return Ok(unsafe { bpf_redirect(ifindex, 0) } as i32);
    }
    if !l2_in {
        push_l2_header(ctx, ipv6)?;
    }
    if !route.neigh {
        return Ok(redirect_neigh(route, ipv6));
    }
    write_macs(ctx, route).ok_or(DropReason::Malformed)?;
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
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
fn redirect_neigh(route: &Route, ipv6: bool) -> i32 {
    // Every field written (the whole IPv6 union member): no memset.
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET6_KERNEL as u32,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv6_nh: route.nexthop(),
        },
    };
    if !ipv6 {
        nh.nh_family = AF_INET_KERNEL as u32;
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
    write_macs(ctx, route)?;
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect(route.ifindex(), 0) } as u32)
}

/// The route's destination and source MACs into the Ethernet header.
#[inline(always)]
fn write_macs<C: Mangle>(ctx: &C, route: &Route) -> Option<()> {
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
    Some(())
}
