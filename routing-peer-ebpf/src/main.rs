//! The routing peer's kernel data path.
//!
//! One file per concern, in the order a packet meets them: `parse` validates
//! headers, `policy` names the source and destination and decides,
//! `conntrack` remembers allowed flows, `nat` masquerades, `forward` routes
//! and redirects, `counters` accounts for every verdict. The entry points
//! below only sequence them.
#![no_std]
#![no_main]
// Inline BPF assembly, for atomic counter adds.
#![feature(asm_experimental_arch)]

mod bench;
mod config;
mod conntrack;
mod counters;
mod ctx;
mod forward;
mod icmp;
mod nat;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use routing_peer_common::{
    AddrKey, CtEntry, CtKey, DatapathConfig, DropReason, Handoff, Hook, NatEndpoint, PeerValue,
    CT_FLAG_MASQUERADE, DEST_SELF, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    SELF_KEY, TCP_RST, TCP_SYN,
};

use crate::{
    conntrack::Direction,
    counters::ResourceEvent,
    ctx::Mangle,
    forward::{Fib, To},
    nat::Side,
    parse::{parse_packet, Frame, Packet},
    policy::Verdict,
};

/// Headers we may read: Ethernet, IPv6 with extension headers, TCP with options.
const TC_PULL_LEN: u32 = 192;

#[inline(always)]
fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// The port policy matches on: the destination port for TCP and UDP, none otherwise.
#[inline(always)]
fn policy_port(proto: u8, port: u16) -> u16 {
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        port
    } else {
        0
    }
}

#[inline(always)]
fn forward_key(pkt: &Packet) -> CtKey {
    CtKey {
        peer: pkt.src,
        remote: pkt.dst,
        peer_port: pkt.sport,
        remote_port: if is_icmp(pkt.proto) { 0 } else { pkt.dport },
        proto: pkt.proto,
        family: forward::family(pkt.ipv6) as u8,
        _pad: [0; 2],
    }
}

/// Re-checks a tracked flow against the current policy when it changed.
/// A flow the new policy no longer allows is removed and its packet dropped.
#[inline(always)]
fn revalidate(
    entry: *mut CtEntry,
    key: &CtKey,
    src_class: Option<u32>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    // SAFETY: map value pointer, valid for this run.
    if unsafe { (*entry).policy_gen } == cfg.policy_gen {
        return Ok(());
    }
    let slot = cfg.active_slot;
    let family = key.family as u32;
    let src_class = match src_class {
        Some(c) => Some(c),
        None => policy::peer(
            slot,
            &AddrKey {
                family,
                addr: key.peer,
            },
        )
        .map(|p| p.src_class),
    };
    let dest = policy::dest(
        slot,
        &AddrKey {
            family,
            addr: key.remote,
        },
    );
    if let (Some(src_class), Some(dest)) = (src_class, dest) {
        let port = policy_port(key.proto, key.remote_port);
        if let Verdict::Accept(rule_id) =
            policy::decide(slot, src_class, dest.dst_class, key.proto, port)
        {
            if dest.flags & DEST_SELF == 0 {
                // SAFETY: as above.
                unsafe {
                    (*entry).rule_id = rule_id;
                    (*entry).resource_id = dest.resource_id;
                    (*entry).policy_gen = cfg.policy_gen;
                }
                return Ok(());
            }
        }
    }
    conntrack::remove(key);
    Err(DropReason::PolicyRevoked)
}

/// The input chain: a packet to one of the routing peer's own addresses
/// (the FIB says local, whatever the address and interface) is decided by
/// peer policies only. An address the compiler listed carries its own
/// class (the overlay address also allows DNS); any other local address
/// gets the class of the routing peer's LAN addresses (`SELF_KEY`).
#[inline(always)]
fn input_chain(pkt: &Packet, peer: &PeerValue, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let slot = cfg.active_slot;
    let listed = policy::dest(
        slot,
        &AddrKey {
            family: forward::family(pkt.ipv6),
            addr: pkt.dst,
        },
    );
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
        Verdict::Drop => Err(DropReason::PolicyDrop),
        Verdict::NoMatch => Err(DropReason::NoPolicy),
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
fn new_flow(
    pkt: &Packet,
    peer: &PeerValue,
    nat_src: Option<&[u32; 4]>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let family = forward::family(pkt.ipv6);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let slot = cfg.active_slot;
    let dest = policy::dest(
        slot,
        &AddrKey {
            family,
            addr: pkt.dst,
        },
    )
    .ok_or(DropReason::NoPolicy)?;
    // An address the compiler knew as ours that the FIB no longer calls
    // local: never forwarded.
    if dest.flags & DEST_SELF != 0 {
        return Err(DropReason::NoPolicy);
    }
    let port = policy_port(pkt.proto, pkt.dport);
    let rule_id = match policy::decide(slot, peer.src_class, dest.dst_class, pkt.proto, port) {
        Verdict::Accept(rule_id) => rule_id,
        Verdict::Drop => {
            counters::count_resource(dest.resource_id, ResourceEvent::Denied, pkt.l3_len);
            return Err(DropReason::PolicyDrop);
        }
        Verdict::NoMatch => {
            counters::count_resource(dest.resource_id, ResourceEvent::Denied, pkt.l3_len);
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
fn map_new_flow(pkt: &Packet, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let entry = conntrack::scratch_entry().ok_or(DropReason::CtFull)?;
    if entry.flags & CT_FLAG_MASQUERADE == 0 {
        return Ok(());
    }
    let peer_endpoint = NatEndpoint {
        addr: pkt.src,
        port: pkt.sport,
        proto: pkt.proto,
        family: forward::family(pkt.ipv6) as u8,
    };
    let external = nat::snat_mapping(&peer_endpoint, &entry.nat_addr, cfg)?;
    entry.nat_addr = external.addr;
    entry.nat_port = external.port;
    Ok(())
}

/// Overlay → LAN, shared by both overlay hooks: conntrack or policy, the
/// RST check, accounting. Returns the flow, allowed and accounted.
#[inline(always)]
fn overlay_flow(
    pkt: &Packet,
    peer: &PeerValue,
    nat_src: Option<[u32; 4]>,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<*mut CtEntry, DropReason> {
    let key = forward_key(pkt);
    let entry = match conntrack::lookup(&key, now, cfg) {
        Some(entry) => {
            revalidate(entry, &key, Some(peer.src_class), cfg)?;
            if nat_src.is_none() {
                return Err(DropReason::NoRoute);
            }
            entry
        }
        None => {
            new_flow(pkt, peer, nat_src.as_ref(), cfg)?;
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
fn overlay_translate<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    entry: *mut CtEntry,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    // SAFETY: map value pointer, valid for this run.
    let (flags, nat_addr, nat_port) =
        unsafe { ((*entry).flags, (*entry).nat_addr, (*entry).nat_port) };
    if flags & CT_FLAG_MASQUERADE != 0 {
        nat::rewrite(ctx, pkt, Side::Source, nat_addr, nat_port)
            .map_err(|_| DropReason::Malformed)?;
    }
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN != 0 && cfg.mss_clamp != 0 {
        // IPv6 headers are 20 bytes longer than IPv4's.
        let clamp = if pkt.ipv6 {
            cfg.mss_clamp.saturating_sub(20)
        } else {
            cfg.mss_clamp
        };
        nat::clamp_mss(ctx, pkt, clamp).map_err(|_| DropReason::Malformed)?;
    }
    Ok(())
}

#[inline(always)]
fn source_peer(pkt: &Packet, cfg: &DatapathConfig) -> Result<PeerValue, DropReason> {
    policy::peer(
        cfg.active_slot,
        &AddrKey {
            family: forward::family(pkt.ipv6),
            addr: pkt.src,
        },
    )
    .ok_or(DropReason::UnknownSource)
}

/// TC on the overlay: everything, for any overlay (WireGuard is L3).
/// Every packet ends forwarded, delivered under the input chain, handed
/// to the kernel for a counted reason after policy, or dropped.
#[inline(always)]
fn overlay_tc(ctx: &TcContext, pkt: &Packet, l2: bool) -> Result<i32, DropReason> {
    let cfg = config::current().ok_or(DropReason::NoPolicy)?;
    let peer = source_peer(pkt, &cfg)?;
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (route, too_big) = match forward::lookup_tc(ctx, pkt, &To::dst_of(pkt), ifindex) {
        Fib::Local => {
            input_chain(pkt, &peer, &cfg)?;
            counters::count_handoff(Handoff::Local, pkt.l3_len);
            return Ok(TC_ACT_OK);
        }
        Fib::Unroutable => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            overlay_flow(pkt, &peer, None, &cfg, now)?;
            return Err(DropReason::NoRoute);
        }
        Fib::Forward(route) => (route, false),
        Fib::TooBig(route) => (route, true),
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = overlay_flow(pkt, &peer, Some(route.src()), &cfg, now)?;
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
    overlay_translate(ctx, pkt, entry, &cfg)?;
    if too_big {
        // IPv4 without DF: translated, and fragmented by the kernel.
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    if !l2 {
        forward::push_l2_header(ctx, pkt.ipv6).map_err(|_| DropReason::Malformed)?;
    }
    Ok(forward::redirect_neigh(&route, pkt.ipv6))
}

/// XDP on an L2 overlay: the whole forward path without an skb, where the
/// egress takes XDP redirects and the frame is one XDP can translate.
/// Anything else passes untouched to TC, which decides it.
#[inline(always)]
fn overlay_xdp(ctx: &XdpContext, pkt: &Packet) -> Result<u32, DropReason> {
    let Some(cfg) = config::current() else {
        return Ok(xdp_action::XDP_PASS);
    };
    if pkt.ttl <= 1 {
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
    let peer = source_peer(pkt, &cfg)?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = overlay_flow(pkt, &peer, Some(route.src()), &cfg, now)?;
    overlay_translate(ctx, pkt, entry, &cfg)?;
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    Ok(forward::xdp_redirect(ctx, &route).unwrap_or(xdp_action::XDP_PASS))
}

/// A reply of a tracked flow, found from the LAN side.
struct Reply {
    key: CtKey,
    entry: *mut CtEntry,
}

/// LAN → overlay, shared by both LAN hooks: is this the reply of a tracked
/// flow (no policy needed), a LAN-initiated packet toward the overlay
/// (dropped), or none of our business (`None`)?
#[inline(always)]
fn lan_classify(pkt: &Packet, cfg: &DatapathConfig, now: u64) -> Result<Option<Reply>, DropReason> {
    let family = forward::family(pkt.ipv6);
    let external = NatEndpoint {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: family as u8,
    };
    let peer_endpoint = nat::reverse(&external).unwrap_or(external);
    let key = CtKey {
        peer: peer_endpoint.addr,
        remote: pkt.src,
        peer_port: peer_endpoint.port,
        remote_port: if is_icmp(pkt.proto) { 0 } else { pkt.sport },
        proto: pkt.proto,
        family: family as u8,
        _pad: [0; 2],
    };
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
fn to_peer(pkt: &Packet, cfg: &DatapathConfig) -> bool {
    policy::peer(
        cfg.active_slot,
        &AddrKey {
            family: forward::family(pkt.ipv6),
            addr: pkt.dst,
        },
    )
    .is_some()
}

/// Accounts a reply and translates it back to the peer's endpoint.
#[inline(always)]
fn lan_translate<C: Mangle>(
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
        )
        .map_err(|_| DropReason::Malformed)?;
    }
    Ok(())
}

/// Where the reply goes once translated: what the FIB is asked about.
#[inline(always)]
fn reply_to(reply: &Reply) -> To {
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
fn lan_xdp(ctx: &XdpContext, pkt: &Packet) -> Result<u32, DropReason> {
    let Some(cfg) = config::current() else {
        return Ok(xdp_action::XDP_PASS);
    };
    if nat::is_icmp_error(pkt) {
        return Ok(xdp_action::XDP_PASS); // TC translates them, skb checksums and all
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(reply) = lan_classify(pkt, &cfg, now)? else {
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
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    Ok(forward::xdp_redirect(ctx, &route).unwrap_or(xdp_action::XDP_PASS))
}

/// TC ingress on the LAN: translate replies and redirect them to the
/// overlay without the IP stack (an L3 overlay gets no L2 header).
#[inline(always)]
fn lan_tc(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    let Some(cfg) = config::current() else {
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if nat::is_icmp_error(pkt) {
        return lan_icmp_error(ctx, pkt, &cfg, now);
    }
    let Some(reply) = lan_classify(pkt, &cfg, now)? else {
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    let (route, too_big) = tc_route_to_overlay(ctx, pkt, &reply_to(&reply))?;
    if too_big {
        if pkt.df {
            // Answered with an ICMP error that quotes the packet as the
            // host sent it; the packet itself is not forwarded.
            counters::count_drop(DropReason::ReplyTooBig, pkt.l3_len);
            return Ok(icmp::send_too_big(ctx, pkt, route.mtu()).unwrap_or(TC_ACT_SHOT));
        }
        lan_translate(ctx, pkt, &reply, now)?;
        forward::mark_for_kernel(ctx);
        counters::count_handoff(Handoff::Fragmenting, pkt.l3_len);
        return Ok(TC_ACT_OK);
    }
    lan_translate(ctx, pkt, &reply, now)?;
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    Ok(forward::redirect_to(&route, pkt.ipv6))
}

/// TC on the LAN: the route of a translated reply (to `to`) toward the
/// overlay, and whether the packet is over its MTU. An expiring TTL or no
/// route is a drop: the kernel would answer with the peer's address, or
/// deliver a packet addressed to our LAN address to ourselves.
#[inline(always)]
fn tc_route_to_overlay(
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
    let family = forward::family(pkt.ipv6);
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
        let quoted_flow = CtKey {
            peer: q.src,
            remote: q.dst,
            peer_port: q.sport,
            remote_port: q.dport,
            proto: q.proto,
            family: family as u8,
            _pad: [0; 2],
        };
        let Some(entry) = conntrack::lookup(&quoted_flow, now, cfg) else {
            return Err(DropReason::LanUnsolicited);
        };
        // The error goes to the peer that sent the quoted packet.
        if pkt.dst != q.src {
            return Err(DropReason::LanUnsolicited);
        }
        return icmp_to_overlay(ctx, pkt, &To::dst_of(pkt), entry);
    };
    let key = CtKey {
        peer: peer.addr,
        remote: q.dst,
        peer_port: peer.port,
        remote_port: q.dport,
        proto: q.proto,
        family: family as u8,
        _pad: [0; 2],
    };
    let Some(entry) = conntrack::lookup(&key, now, cfg) else {
        // About a mapping no flow uses: addressed to our own LAN address.
        counters::count_handoff(Handoff::LanOther, pkt.l3_len);
        return Ok(TC_ACT_OK);
    };
    nat::translate_icmp_error(ctx, pkt, &q, peer.addr, peer.port)
        .map_err(|_| DropReason::Malformed)?;
    let to = To {
        addr: peer.addr,
        port: pkt.dport,
    };
    icmp_to_overlay(ctx, pkt, &to, entry)
}

/// Sends an ICMP error (already translated) to the peer at `to`.
#[inline(always)]
fn icmp_to_overlay(
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
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    Ok(forward::redirect_to(&route, pkt.ipv6))
}

#[inline(always)]
fn drop_packet<C: EbpfContext>(ctx: &C, reason: DropReason, len: usize) {
    counters::count_drop(reason, len);
    // Off unless the daemon runs with --verbose-datapath (AYA_LOG_LEVEL).
    debug!(ctx, "drop: reason {} len {}", reason as u32, len);
}

#[inline(always)]
fn tc_overlay(ctx: &TcContext, l2: bool) -> i32 {
    // GSO/GRO skbs may hold headers outside the linear area; pull them in.
    if ctx.data_end() - ctx.data() < ctx.len().min(TC_PULL_LEN) as usize {
        let _ = ctx.pull_data(ctx.len().min(TC_PULL_LEN));
    }
    let len = ctx.len() as usize;
    counters::count_hook(Hook::OverlayIngress, len);
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, l2);
    let verdict = match parse_packet(&frame) {
        Ok(Some(pkt)) => overlay_tc(ctx, pkt, l2),
        Ok(None) => {
            counters::count_handoff(Handoff::NonIp, len);
            Ok(TC_ACT_OK)
        }
        Err(reason) => Err(reason),
    };
    verdict.unwrap_or_else(|reason| {
        drop_packet(ctx, reason, len);
        TC_ACT_SHOT
    })
}

/// TC ingress on an L3 overlay device (WireGuard or TUN): packets start at the IP header.
#[classifier]
pub fn rp_overlay_l3(ctx: TcContext) -> i32 {
    tc_overlay(&ctx, false)
}

/// TC ingress on an L2 overlay stand-in (veth), so benchmarks can leave WireGuard out.
#[classifier]
pub fn rp_overlay_l2(ctx: TcContext) -> i32 {
    tc_overlay(&ctx, true)
}

/// XDP on an L2 overlay stand-in: the forward path without an skb.
#[xdp]
pub fn rp_overlay_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    counters::count_hook(Hook::OverlayXdp, len);
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, true);
    let verdict = match parse_packet(&frame) {
        Ok(Some(pkt)) => overlay_xdp(&ctx, pkt),
        Ok(None) => Ok(xdp_action::XDP_PASS),
        Err(reason) => Err(reason),
    };
    verdict.unwrap_or_else(|reason| {
        drop_packet(&ctx, reason, len);
        xdp_action::XDP_DROP
    })
}

/// TC ingress on the LAN interface: reply translation and redirect.
#[classifier]
pub fn rp_lan_tc(ctx: TcContext) -> i32 {
    if ctx.data_end() - ctx.data() < ctx.len().min(TC_PULL_LEN) as usize {
        let _ = ctx.pull_data(ctx.len().min(TC_PULL_LEN));
    }
    let len = ctx.len() as usize;
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, true);
    // XDP has already counted, and dropped what is malformed.
    let verdict = match parse_packet(&frame) {
        Ok(Some(pkt)) => lan_tc(&ctx, pkt),
        Ok(None) => {
            counters::count_handoff(Handoff::NonIp, len);
            Ok(TC_ACT_OK)
        }
        Err(reason) => Err(reason),
    };
    verdict.unwrap_or_else(|reason| {
        drop_packet(&ctx, reason, len);
        TC_ACT_SHOT
    })
}

/// XDP on the LAN interface.
#[xdp]
pub fn rp_lan_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    counters::count_hook(Hook::LanIngress, len);
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, true);
    let verdict = match parse_packet(&frame) {
        Ok(Some(pkt)) => lan_xdp(&ctx, pkt),
        Ok(None) => Ok(xdp_action::XDP_PASS),
        Err(reason) => Err(reason),
    };
    verdict.unwrap_or_else(|reason| {
        drop_packet(&ctx, reason, len);
        xdp_action::XDP_DROP
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
