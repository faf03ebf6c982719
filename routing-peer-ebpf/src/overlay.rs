//! Overlay → LAN: the source peer, the input chain, conntrack or policy,
//! masquerade and the forward decision, for both overlay hooks.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    programs::{TcContext, XdpContext},
};
use routing_peer_common::{
    AddrKey, CtEntry, DatapathConfig, DropReason, Family, Handoff, NatEndpoint, PeerValue,
    CT_FLAG_MASQUERADE, DEST_SELF, EVENT_FROM_OVERLAY, FRAG_FORWARD, FRAG_LOCAL, HOLD_FROM_OVERLAY,
    IPPROTO_TCP, SELF_KEY, TCP_RST, TCP_SYN,
};

use crate::{
    clock, config, conntrack,
    conntrack::Direction,
    counters,
    counters::ResourceEvent,
    ctx::Mangle,
    events,
    flow::{forward_key, policy_port, revalidate},
    forward,
    forward::{Fib, To},
    frag, nat,
    nat::Side,
    parse::{Packet, FRAG_NONE},
    policy,
    policy::Verdict,
};

/// The input chain: a packet to one of the routing peer's own addresses
/// (the FIB says local, whatever the address and interface) is decided by
/// peer policies only. An address the compiler listed carries its own
/// class (the overlay address also allows DNS); any other local address
/// gets the class of the routing peer's LAN addresses (`SELF_KEY`).
#[inline(always)]
pub fn input_chain(pkt: &Packet, peer: &PeerValue, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let slot = cfg.active_slot;
    let listed = policy::dest(slot, &AddrKey::new(Family::of(pkt.ipv6), pkt.dst));
    let dst_class = match listed {
        Some(d) if d.flags & DEST_SELF != 0 => d.dst_class,
        _ => {
            policy::dest(slot, &SELF_KEY)
                .ok_or(DropReason::NoPolicy)?
                .dst_class
        }
    };
    let port = policy_port(pkt.proto, pkt.dport);
    match policy::decide(slot, peer.src_class, dst_class, pkt.proto, port) {
        Verdict::Accept(_) => Ok(()),
        Verdict::Drop(rule_id) => {
            events::note(pkt, peer.peer_id, 0, rule_id);
            Err(DropReason::PolicyDrop)
        }
        Verdict::NoMatch => {
            events::note(pkt, peer.peer_id, 0, 0);
            Err(DropReason::NoPolicy)
        }
    }
}

/// Policy for a packet no flow covers; on accept, the new flow's entry is
/// left in this CPU's conntrack scratch for the caller to insert.
/// `nat_src` is the masquerade address of the route; with none, an allowed
/// packet has nowhere to go. Not inlined: its own stack frame keeps the
/// fast path (established flows) inside the 512-byte stack; hence also at
/// most five arguments, and no pointer returned (the verifier would not
/// know it as a map value any more).
#[inline(never)]
pub fn new_flow(
    pkt: &Packet,
    peer: &PeerValue,
    nat_src: Option<&[u32; 4]>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let family = Family::of(pkt.ipv6);
    let now = clock::now();
    let slot = cfg.active_slot;
    let dest = policy::dest(slot, &AddrKey::new(family, pkt.dst)).ok_or(DropReason::NoPolicy)?;
    // An address the compiler knew as ours that the FIB no longer calls
    // local: never forwarded.
    if dest.flags & DEST_SELF != 0 {
        return Err(DropReason::NoPolicy);
    }
    let port = policy_port(pkt.proto, pkt.dport);
    let rule_id = match policy::decide(slot, peer.src_class, dest.dst_class, pkt.proto, port) {
        Verdict::Accept(rule_id) => rule_id,
        Verdict::Drop(rule_id) => {
            counters::count_resource(dest.resource_id, ResourceEvent::Denied, pkt.l3_len);
            events::note(pkt, peer.peer_id, dest.resource_id, rule_id);
            return Err(DropReason::PolicyDrop);
        }
        Verdict::NoMatch => {
            counters::count_resource(dest.resource_id, ResourceEvent::Denied, pkt.l3_len);
            events::note(pkt, peer.peer_id, dest.resource_id, 0);
            return Err(DropReason::NoPolicy);
        }
    };
    let nat_src = *nat_src.ok_or(DropReason::NoRoute)?;
    // A lone RST opens nothing: there is no connection to reset.
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_RST != 0 {
        return Err(DropReason::RstOutOfWindow);
    }
    let entry = conntrack::scratch().ok_or(DropReason::CtFull)?;
    entry.first_seen_ns = now;
    entry.last_seen_ns = now;
    entry.state = conntrack::initial_state(pkt.proto, pkt.tcp_flags);
    entry.peer_id = peer.peer_id;
    entry.resource_id = dest.resource_id;
    entry.rule_id = rule_id;
    entry.policy_gen = cfg.policy_gen;
    entry.nat_port = pkt.sport;
    if policy::masquerade(slot, &dest, rule_id) {
        // The caller maps a port: called from here, the port scan's frame
        // would stack on this one.
        entry.nat_addr = nat_src;
        entry.flags |= CT_FLAG_MASQUERADE;
    }
    Ok(())
}

/// Gives a new masqueraded flow (in the conntrack scratch) its external
/// endpoint on the masquerade address `new_flow` left there.
#[inline(always)]
pub fn map_new_flow(pkt: &Packet, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let entry = conntrack::scratch_entry().ok_or(DropReason::CtFull)?;
    if entry.flags & CT_FLAG_MASQUERADE == 0 {
        return Ok(());
    }
    let peer_endpoint = NatEndpoint {
        addr: pkt.src,
        port: pkt.sport,
        proto: pkt.proto,
        family: Family::of(pkt.ipv6) as u8,
    };
    let external = nat::snat_mapping(&peer_endpoint, &entry.nat_addr, cfg)?;
    entry.nat_addr = external.addr;
    entry.nat_port = external.port;
    Ok(())
}

/// Overlay → LAN, shared by both overlay hooks: conntrack or policy, the
/// RST check, accounting. Returns the flow, allowed and accounted. A flow
/// tracked under the current policy generation needs no peer lookup: its
/// source was a peer then, and any change of peers is a new generation
/// (whose first packet re-checks the flow, peer included).
#[inline(always)]
pub fn overlay_flow(
    pkt: &Packet,
    nat_src: Option<[u32; 4]>,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<*mut CtEntry, DropReason> {
    let key = forward_key(pkt);
    let entry = match conntrack::lookup(&key, now, cfg) {
        Some(entry) => {
            revalidate(entry, &key, None, cfg)?;
            if nat_src.is_none() {
                return Err(DropReason::NoRoute);
            }
            entry
        }
        None => {
            let peer = source_peer(pkt, cfg)?;
            new_flow(pkt, &peer, nat_src.as_ref(), cfg)?;
            map_new_flow(pkt, cfg)?;
            let tracked = conntrack::create_from_scratch(&key).ok_or(DropReason::CtFull)?;
            // SAFETY: map value pointer, valid for this run.
            let resource_id = unsafe { (*tracked).resource_id };
            counters::count_resource(resource_id, ResourceEvent::NewFlow, 0);
            tracked
        }
    };
    if !conntrack::rst_acceptable(entry, Direction::Forward, pkt) {
        return Err(DropReason::RstOutOfWindow);
    }
    conntrack::update(entry, Direction::Forward, pkt, now);
    // SAFETY: map value pointer, valid for this run.
    let resource_id = unsafe { (*entry).resource_id };
    counters::count_resource(resource_id, ResourceEvent::Forward, pkt.l3_len);
    Ok(entry)
}

/// Masquerade and MSS clamping for a packet of a tracked flow.
#[inline(always)]
pub fn overlay_translate<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    entry: *mut CtEntry,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    // SAFETY: map value pointer, valid for this run.
    let (flags, nat_addr, nat_port) =
        unsafe { ((*entry).flags, (*entry).nat_addr, (*entry).nat_port) };
    if flags & CT_FLAG_MASQUERADE != 0 {
        nat::rewrite(ctx, pkt, Side::Source, nat_addr, nat_port)?;
    }
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN != 0 && cfg.mss_clamp != 0 {
        // IPv6 headers are 20 bytes longer than IPv4's.
        let clamp = if pkt.ipv6 {
            cfg.mss_clamp.saturating_sub(20)
        } else {
            cfg.mss_clamp
        };
        nat::clamp_mss(ctx, pkt, clamp)?;
    }
    Ok(())
}

#[inline(always)]
pub fn source_peer(pkt: &Packet, cfg: &DatapathConfig) -> Result<PeerValue, DropReason> {
    policy::peer(
        cfg.active_slot,
        &AddrKey::new(Family::of(pkt.ipv6), pkt.src),
    )
    .ok_or(DropReason::UnknownSource)
}

/// `overlay_tc` in a frame of its own, beside `later` and `frag::deny`:
/// together in the entry point's frame, with a callee's, they would pass
/// 512 bytes.
#[inline(never)]
pub fn overlay_tc_entry(ctx: &TcContext, pkt: &Packet, l2: bool) -> i32 {
    counters::verdict_or_drop(ctx, pkt, EVENT_FROM_OVERLAY, overlay_tc(ctx, pkt, l2))
}

/// TC on the overlay: everything, for any overlay (WireGuard is L3).
/// Every packet ends forwarded, delivered under the input chain, handed
/// to the kernel for a counted reason after policy, or dropped.
#[inline(always)]
pub fn overlay_tc(ctx: &TcContext, pkt: &Packet, l2: bool) -> Result<i32, DropReason> {
    let cfg = config::current().ok_or(DropReason::NoPolicy)?;
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (route, too_big) = match forward::lookup_tc(ctx, pkt, &To::dst_of(pkt), ifindex) {
        Fib::Local => {
            let peer = source_peer(pkt, cfg)?;
            input_chain(pkt, &peer, cfg)?;
            frag::record(pkt, FRAG_LOCAL, &forward_key(pkt), None, cfg)?;
            counters::count_handoff(Handoff::Local, pkt.l3_len);
            return Ok(TC_ACT_OK);
        }
        Fib::Unroutable => {
            let now = clock::now();
            overlay_flow(pkt, None, cfg, now)?;
            return Err(DropReason::NoRoute);
        }
        Fib::Forward(route) => (route, false),
        Fib::TooBig(route) => (route, true),
    };
    let now = clock::now();
    let entry = overlay_flow(pkt, Some(route.src()), cfg, now)?;
    frag::record(pkt, FRAG_FORWARD, &forward_key(pkt), Some(entry), cfg)?;
    // The kernel answers these with an ICMP error quoting the packet as
    // the peer sent it, so they go untranslated, and are not forwarded.
    if pkt.ttl <= 1 {
        counters::count_handoff(Handoff::TtlExpired, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    if too_big && pkt.df {
        counters::count_handoff(Handoff::FragNeeded, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    overlay_translate(ctx, pkt, entry, cfg)?;
    if too_big {
        // IPv4 without DF: translated, and fragmented by the kernel.
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    forward::decrement_ttl(ctx, pkt)?;
    forward::redirect_tc(ctx, &route, pkt.ipv6, l2)
}

/// A later fragment from a peer: its first fragment's verdict, flow and
/// translation, or the hold until that has come. Called beside
/// `overlay_tc`, not from it, and not inlined: the two frames are never
/// on the stack together.
#[inline(never)]
pub fn later(ctx: &TcContext, pkt: &Packet, l2: bool) -> i32 {
    counters::verdict_or_drop(ctx, pkt, EVENT_FROM_OVERLAY, try_later(ctx, pkt, l2))
}

#[inline(always)]
fn try_later(ctx: &TcContext, pkt: &Packet, l2: bool) -> Result<i32, DropReason> {
    let cfg = config::current().ok_or(DropReason::NoPolicy)?;
    source_peer(pkt, cfg)?;
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match forward::lookup_tc(ctx, pkt, &To::dst_of(pkt), ifindex) {
        Fib::Local => try_later_local(ctx, pkt, l2, cfg),
        Fib::Unroutable => Err(DropReason::NoRoute),
        Fib::Forward(route) => try_later_forward(ctx, pkt, &route, u32::from(l2), cfg),
        Fib::TooBig(route) => try_later_forward(ctx, pkt, &route, u32::from(l2) | 2, cfg),
    }
}

/// Toward the LAN. `flags`: bit 0, an L2 overlay; bit 1, over the egress MTU.
#[inline(always)]
fn try_later_forward(
    ctx: &TcContext,
    pkt: &Packet,
    route: &forward::Route,
    flags: u32,
    cfg: &DatapathConfig,
) -> Result<i32, DropReason> {
    let (l2, too_big) = (flags & 1 != 0, flags & 2 != 0);
    let now = clock::now();
    let Some(first) = frag::follow(pkt, now, cfg)? else {
        return frag::hold(ctx, pkt, l2, HOLD_FROM_OVERLAY, cfg);
    };
    if first.verdict != FRAG_FORWARD {
        return Err(DropReason::Fragment);
    }
    let entry = conntrack::lookup(&first.flow, now, cfg).ok_or(DropReason::FragmentOrphan)?;
    conntrack::count_fragment(entry, Direction::Forward, pkt, now);
    // SAFETY: map value pointer, valid for this run.
    let (resource_id, masq, nat_addr) = unsafe {
        (
            (*entry).resource_id,
            (*entry).flags & CT_FLAG_MASQUERADE != 0,
            (*entry).nat_addr,
        )
    };
    counters::count_resource(resource_id, ResourceEvent::Forward, pkt.l3_len);
    if pkt.ttl <= 1 {
        counters::count_handoff(Handoff::TtlExpired, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    if too_big && pkt.df {
        counters::count_handoff(Handoff::FragNeeded, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    if masq {
        // The IP header only: the transport checksum is the first fragment's.
        nat::rewrite(ctx, pkt, Side::Source, nat_addr, pkt.sport)?;
    }
    if too_big {
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    forward::decrement_ttl(ctx, pkt)?;
    forward::redirect_tc(ctx, route, pkt.ipv6, l2)
}

/// To the routing peer itself: delivered (the kernel reassembles it) when
/// its first fragment was.
#[inline(always)]
fn try_later_local(
    ctx: &TcContext,
    pkt: &Packet,
    l2: bool,
    cfg: &DatapathConfig,
) -> Result<i32, DropReason> {
    let now = clock::now();
    let Some(first) = frag::follow(pkt, now, cfg)? else {
        return frag::hold(ctx, pkt, l2, HOLD_FROM_OVERLAY, cfg);
    };
    if first.verdict != FRAG_LOCAL {
        return Err(DropReason::Fragment);
    }
    counters::count_handoff(Handoff::Local, pkt.l3_len);
    Ok(TC_ACT_OK)
}

/// XDP on an L2 overlay: the whole forward path without an skb, where the
/// egress takes XDP redirects and the frame is one XDP can translate.
/// Anything else passes untouched to TC, which decides it.
#[inline(always)]
pub fn overlay_xdp(ctx: &XdpContext, pkt: &Packet) -> Result<u32, DropReason> {
    let Some(cfg) = config::current() else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Fragments are TC's: it records and follows verdicts, and holds.
    if pkt.ttl <= 1 || pkt.frag != FRAG_NONE {
        return Ok(xdp_action::XDP_PASS);
    }
    // SAFETY: reading the frame's ingress ifindex.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Fib::Forward(route) = forward::lookup_xdp(ctx, pkt, &To::dst_of(pkt), ifindex) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !forward::xdp_redirect_allowed(route.ifindex()) || nat::checksum_is_partial(ctx, pkt) {
        return Ok(xdp_action::XDP_PASS);
    }
    let now = clock::now();
    let entry = overlay_flow(pkt, Some(route.src()), cfg, now)?;
    overlay_translate(ctx, pkt, entry, cfg)?;
    forward::decrement_ttl(ctx, pkt)?;
    Ok(forward::xdp_redirect(ctx, &route).unwrap_or(xdp_action::XDP_PASS))
}
