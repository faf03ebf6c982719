//! LAN → overlay: replies of tracked flows (reverse NAT, redirect into the
//! overlay), ICMP errors about them, and what must not reach the overlay.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    programs::{TcContext, XdpContext},
};
use routing_peer_common::{
    AddrKey, CtEntry, CtKey, DatapathConfig, DropReason, Family, Handoff, NatEndpoint,
    CT_FLAG_MASQUERADE, EVENT_FROM_LAN, FRAG_LOCAL, FRAG_REPLY, HOLD_FROM_LAN,
};

use crate::{
    clock, config, conntrack,
    conntrack::Direction,
    counters,
    counters::ResourceEvent,
    ctx::Mangle,
    flow::{is_icmp, revalidate},
    forward,
    forward::{Fib, To},
    frag, icmp, nat,
    nat::Side,
    parse::{Packet, FRAG_NONE},
    policy,
};

/// A reply of a tracked flow, found from the LAN side.
pub struct Reply {
    key: CtKey,
    entry: *mut CtEntry,
}

/// LAN → overlay, shared by both LAN hooks: is this the reply of a tracked
/// flow (no policy needed), a LAN-initiated packet toward the overlay
/// (dropped), or none of our business (`None`)?
#[inline(always)]
pub fn lan_classify(
    pkt: &Packet,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<Option<Reply>, DropReason> {
    let family = Family::of(pkt.ipv6);
    let external = NatEndpoint {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: family as u8,
    };
    let peer_endpoint = nat::reverse(&external).unwrap_or(external);
    let key = CtKey::new(
        family,
        pkt.proto,
        (peer_endpoint.addr, peer_endpoint.port),
        (pkt.src, if is_icmp(pkt.proto) { 0 } else { pkt.sport }),
    );
    let Some(entry) = conntrack::lookup(&key, now, cfg) else {
        if to_peer(pkt, cfg) {
            return Err(DropReason::LanUnsolicited);
        }
        return Ok(None);
    };
    revalidate(entry, &key, None, cfg)?;
    if !conntrack::rst_acceptable(entry, Direction::Reply, pkt) {
        return Err(DropReason::RstOutOfWindow);
    }
    Ok(Some(Reply { key, entry }))
}

/// Whether a LAN packet is addressed to an overlay peer.
#[inline(always)]
pub fn to_peer(pkt: &Packet, cfg: &DatapathConfig) -> bool {
    policy::peer(
        cfg.active_slot,
        &AddrKey::new(Family::of(pkt.ipv6), pkt.dst),
    )
    .is_some()
}

/// Accounts a reply and translates it back to the peer's endpoint.
#[inline(always)]
pub fn lan_translate<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    reply: &Reply,
    now: u64,
) -> Result<(), DropReason> {
    // Flow and resource bytes are IP bytes, the same on L2 and L3 hooks.
    conntrack::update(reply.entry, Direction::Reply, pkt, now);
    // SAFETY: map value pointer, valid for this run.
    let (resource_id, flags) = unsafe { ((*reply.entry).resource_id, (*reply.entry).flags) };
    counters::count_resource(resource_id, ResourceEvent::Reply, pkt.l3_len);
    if flags & CT_FLAG_MASQUERADE != 0 {
        nat::rewrite(
            ctx,
            pkt,
            Side::Destination,
            reply.key.peer,
            reply.key.peer_port,
        )?;
    }
    Ok(())
}

/// Where the reply goes once translated: what the FIB is asked about.
#[inline(always)]
pub fn reply_to(reply: &Reply) -> To {
    To {
        addr: reply.key.peer,
        port: reply.key.peer_port,
    }
}

/// XDP on the LAN: early drops, and the whole reply path where XDP can
/// redirect (an L2 overlay). Elsewhere (a TUN overlay) the frame goes on
/// untouched to the TC program, which translates with the skb helpers:
/// frames from virtual devices may carry partial checksums that only the
/// skb knows about.
#[inline(always)]
pub fn lan_xdp(ctx: &XdpContext, pkt: &Packet) -> Result<u32, DropReason> {
    let Some(cfg) = config::current() else {
        return Ok(xdp_action::XDP_PASS);
    };
    // ICMP errors: TC translates them, skb checksums and all. Fragments:
    // TC records and follows verdicts, and holds.
    if nat::is_icmp_error(pkt) || pkt.frag != FRAG_NONE {
        return Ok(xdp_action::XDP_PASS);
    }
    let now = clock::now();
    let Some(reply) = lan_classify(pkt, cfg, now)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    if pkt.ttl <= 1 {
        return Ok(xdp_action::XDP_PASS);
    }
    // SAFETY: reading the frame's ingress ifindex.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Fib::Forward(route) = forward::lookup_xdp(ctx, pkt, &reply_to(&reply), ifindex) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !forward::xdp_redirect_allowed(route.ifindex()) || nat::checksum_is_partial(ctx, pkt) {
        return Ok(xdp_action::XDP_PASS);
    }
    lan_translate(ctx, pkt, &reply, now)?;
    forward::decrement_ttl(ctx, pkt)?;
    Ok(forward::xdp_redirect(ctx, &route).unwrap_or(xdp_action::XDP_PASS))
}

/// `lan_tc` in a frame of its own, beside `later` and `icmp_error` (see
/// `overlay_tc_entry`).
#[inline(never)]
pub fn lan_tc_entry(ctx: &TcContext, pkt: &Packet) -> i32 {
    counters::verdict_or_drop(ctx, pkt, EVENT_FROM_LAN, lan_tc(ctx, pkt))
}

/// `lan_icmp_error` in a frame of its own (see `lan_tc_entry`).
#[inline(never)]
pub fn icmp_error(ctx: &TcContext, pkt: &Packet) -> i32 {
    let verdict = match config::current() {
        Some(cfg) => lan_icmp_error(ctx, pkt, cfg, clock::now()),
        None => {
            counters::count_handoff(Handoff::LanOther, pkt.l3_len);
            Ok(TC_ACT_OK)
        }
    };
    counters::verdict_or_drop(ctx, pkt, EVENT_FROM_LAN, verdict)
}

/// TC ingress on the LAN: translate replies and redirect them to the
/// overlay without the IP stack (an L3 overlay gets no L2 header).
#[inline(always)]
pub fn lan_tc(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    let Some(cfg) = config::current() else {
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    let now = clock::now();
    let Some(reply) = lan_classify(pkt, cfg, now)? else {
        // The kernel's (to the routing peer itself, or routed elsewhere):
        // so are the fragments after this one.
        frag::record(pkt, FRAG_LOCAL, &CtKey::default(), None, cfg)?;
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    frag::record(pkt, FRAG_REPLY, &reply.key, Some(reply.entry), cfg)?;
    let (route, too_big) = tc_route_to_overlay(ctx, pkt, &reply_to(&reply))?;
    if too_big {
        if pkt.df {
            // Answered with an ICMP error that quotes the packet as the
            // host sent it; the packet itself is not forwarded.
            counters::count_drop(DropReason::ReplyTooBig, pkt.l3_len);
            crate::events::dropped(pkt, DropReason::ReplyTooBig, EVENT_FROM_LAN);
            return Ok(icmp::send_too_big(ctx, pkt, route.mtu()).unwrap_or(TC_ACT_SHOT));
        }
        lan_translate(ctx, pkt, &reply, now)?;
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    lan_translate(ctx, pkt, &reply, now)?;
    forward::decrement_ttl(ctx, pkt)?;
    forward::redirect_tc(ctx, &route, pkt.ipv6, true)
}

/// A later fragment from the LAN: its first fragment's flow and
/// translation toward the peer, or the kernel's when the first was; one
/// whose first has not come goes around the hold when it is addressed to
/// a peer or to the routing peer (a masqueraded reply, or its own traffic:
/// the kernel's once it has made its passes). Called beside `lan_tc`, not
/// from it, and not inlined: the two frames are never on the stack together.
#[inline(never)]
pub fn later(ctx: &TcContext, pkt: &Packet) -> i32 {
    counters::verdict_or_drop(ctx, pkt, EVENT_FROM_LAN, try_later(ctx, pkt))
}

#[inline(always)]
fn try_later(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    let Some(cfg) = config::current() else {
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    let now = clock::now();
    let Some(first) = frag::follow(pkt, now, cfg)? else {
        if to_peer(pkt, cfg) {
            return frag::hold(ctx, pkt, true, HOLD_FROM_LAN, cfg);
        }
        // SAFETY: reading the skb's ingress ifindex.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        if matches!(
            forward::lookup_tc(ctx, pkt, &To::dst_of(pkt), ifindex),
            Fib::Local
        ) {
            match frag::hold(ctx, pkt, true, HOLD_FROM_LAN, cfg) {
                Err(DropReason::FragmentOrphan) => {}
                held => return held,
            }
        }
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    if first.verdict == FRAG_LOCAL {
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    if first.verdict != FRAG_REPLY {
        return Err(DropReason::Fragment);
    }
    let entry = conntrack::lookup(&first.flow, now, cfg).ok_or(DropReason::FragmentOrphan)?;
    let to = To {
        addr: first.flow.peer,
        port: 0,
    };
    let (route, too_big) = tc_route_to_overlay(ctx, pkt, &to)?;
    if too_big && pkt.df {
        return Err(DropReason::ReplyTooBig);
    }
    conntrack::count_fragment(entry, Direction::Reply, pkt, now);
    // SAFETY: map value pointer, valid for this run.
    let (resource_id, masq) = unsafe {
        (
            (*entry).resource_id,
            (*entry).flags & CT_FLAG_MASQUERADE != 0,
        )
    };
    counters::count_resource(resource_id, ResourceEvent::Reply, pkt.l3_len);
    if masq {
        // The IP header only: the transport checksum is the first fragment's.
        nat::rewrite(ctx, pkt, Side::Destination, first.flow.peer, pkt.dport)?;
    }
    if too_big {
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    forward::decrement_ttl(ctx, pkt)?;
    forward::redirect_tc(ctx, &route, pkt.ipv6, true)
}

/// TC on the LAN: the route of a translated reply (to `to`) toward the
/// overlay, and whether the packet is over its MTU. An expiring TTL or no
/// route is a drop: the kernel would answer with the peer's address, or
/// deliver a packet addressed to our LAN address to ourselves.
#[inline(always)]
pub fn tc_route_to_overlay(
    ctx: &TcContext,
    pkt: &Packet,
    to: &To,
) -> Result<(forward::Route, bool), DropReason> {
    if pkt.ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match forward::lookup_tc(ctx, pkt, to, ifindex) {
        Fib::Forward(route) => Ok((route, false)),
        Fib::TooBig(route) => Ok((route, true)),
        Fib::Local | Fib::Unroutable => Err(DropReason::NoRoute),
    }
}

/// An ICMP error about one of our flows (fragmentation needed or packet
/// too big, for path-MTU discovery through the tunnel; unreachable; time
/// exceeded) goes back to the peer, translated if masqueraded (RFC 5508).
/// One toward the overlay that quotes no tracked flow is dropped; others
/// (about the routing peer's own traffic) are the kernel's.
#[inline(always)]
fn lan_icmp_error(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<i32, DropReason> {
    let addressed_to_peer = to_peer(pkt, cfg);
    let Some(q) = nat::quoted(ctx, pkt) else {
        if addressed_to_peer {
            return Err(DropReason::LanUnsolicited);
        }
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    let family = Family::of(pkt.ipv6);
    let external = NatEndpoint {
        addr: q.src,
        port: q.sport,
        proto: q.proto,
        family: family as u8,
    };
    let Some(peer) = nat::reverse(&external) else {
        // Not masqueraded: it must quote a tracked flow of the peer it is
        // addressed to, and goes to the peer as it is.
        if !addressed_to_peer {
            counters::count_handoff(Handoff::LanOther, pkt.l3_len);
            return Ok(TC_ACT_OK);
        }
        let quoted_flow = CtKey::new(family, q.proto, (q.src, q.sport), (q.dst, q.dport));
        let Some(entry) = conntrack::lookup(&quoted_flow, now, cfg) else {
            return Err(DropReason::LanUnsolicited);
        };
        // The error goes to the peer that sent the quoted packet.
        if pkt.dst != q.src {
            return Err(DropReason::LanUnsolicited);
        }
        return icmp_to_overlay(ctx, pkt, &To::dst_of(pkt), entry);
    };
    let key = CtKey::new(family, q.proto, (peer.addr, peer.port), (q.dst, q.dport));
    let Some(entry) = conntrack::lookup(&key, now, cfg) else {
        // About a mapping no flow uses: addressed to our own LAN address.
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    nat::translate_icmp_error(ctx, pkt, &q, peer.addr, peer.port)?;
    let to = To {
        addr: peer.addr,
        port: pkt.dport,
    };
    icmp_to_overlay(ctx, pkt, &to, entry)
}

/// Sends an ICMP error (already translated) to the peer at `to`.
#[inline(always)]
pub fn icmp_to_overlay(
    ctx: &TcContext,
    pkt: &Packet,
    to: &To,
    entry: *mut CtEntry,
) -> Result<i32, DropReason> {
    let (route, too_big) = tc_route_to_overlay(ctx, pkt, to)?;
    if too_big {
        return Err(DropReason::ReplyTooBig);
    }
    // SAFETY: map value pointer, valid for this run.
    let resource_id = unsafe { (*entry).resource_id };
    counters::count_resource(resource_id, ResourceEvent::Reply, pkt.l3_len);
    forward::decrement_ttl(ctx, pkt)?;
    forward::redirect_tc(ctx, &route, pkt.ipv6, true)
}
