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
    AddrKey, CtEntry, CtKey, DatapathConfig, DropReason, Hook, NatEndpoint, PeerValue,
    CT_FLAG_MASQUERADE, DEST_MASQUERADE, DEST_SELF, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, TCP_SYN,
};

use crate::{
    conntrack::Direction,
    counters::ResourceEvent,
    ctx::Mangle,
    forward::Route,
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
            // SAFETY: as above.
            unsafe {
                (*entry).rule_id = rule_id;
                (*entry).resource_id = dest.resource_id;
                (*entry).policy_gen = cfg.policy_gen;
            }
            return Ok(());
        }
    }
    conntrack::remove(key);
    Err(DropReason::PolicyRevoked)
}

enum NewFlow {
    Tracked(*mut CtEntry),
    /// The input chain allowed it: the kernel delivers it locally.
    ToSelf,
    /// Allowed, but no route here to masquerade on: the kernel decides.
    ToKernel,
}

/// Policy for a packet no flow covers; on accept, the flow is tracked.
#[inline(always)]
fn new_flow(
    pkt: &Packet,
    key: &CtKey,
    peer: &PeerValue,
    route: Option<&Route>,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<NewFlow, DropReason> {
    let slot = cfg.active_slot;
    let dest = policy::dest(
        slot,
        &AddrKey {
            family: key.family as u32,
            addr: pkt.dst,
        },
    )
    .ok_or(DropReason::NoPolicy)?;
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
    if dest.flags & DEST_SELF != 0 {
        return Ok(NewFlow::ToSelf);
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
    if dest.flags & DEST_MASQUERADE != 0 {
        let Some(route) = route else {
            return Ok(NewFlow::ToKernel);
        };
        let peer_endpoint = NatEndpoint {
            addr: pkt.src,
            port: pkt.sport,
            proto: pkt.proto,
            family: key.family,
        };
        let external = nat::snat_mapping(&peer_endpoint, route.src(), cfg)?;
        entry.nat_addr = external.addr;
        entry.nat_port = external.port;
        entry.flags |= CT_FLAG_MASQUERADE;
    }
    let tracked = conntrack::create(key, entry).ok_or(DropReason::CtFull)?;
    counters::count_resource(dest.resource_id, ResourceEvent::NewFlow, 0);
    Ok(NewFlow::Tracked(tracked))
}

/// Overlay → LAN, shared by both overlay hooks: the source peer, conntrack
/// or policy, accounting, masquerade. Returns `true` when the packet is a
/// tracked flow, translated and ready to forward along `route`; `false`
/// when it belongs to the kernel (the input chain, or no route here).
#[inline(always)]
fn overlay_process<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    route: Option<&Route>,
    cfg: &DatapathConfig,
) -> Result<bool, DropReason> {
    let family = forward::family(pkt.ipv6);
    let peer = policy::peer(
        cfg.active_slot,
        &AddrKey {
            family,
            addr: pkt.src,
        },
    )
    .ok_or(DropReason::UnknownSource)?;
    let key = forward_key(pkt);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = match conntrack::lookup(&key, now, cfg) {
        Some(entry) => {
            revalidate(entry, &key, Some(peer.src_class), cfg)?;
            entry
        }
        None => match new_flow(pkt, &key, &peer, route, cfg, now)? {
            NewFlow::Tracked(entry) => entry,
            NewFlow::ToSelf | NewFlow::ToKernel => return Ok(false),
        },
    };
    conntrack::update(
        entry,
        Direction::Forward,
        pkt.l3_len as u64,
        pkt.tcp_flags,
        now,
    );
    // SAFETY: map value pointer, valid for this run.
    let (resource_id, flags, nat_addr, nat_port) = unsafe {
        (
            (*entry).resource_id,
            (*entry).flags,
            (*entry).nat_addr,
            (*entry).nat_port,
        )
    };
    counters::count_resource(resource_id, ResourceEvent::Forward, pkt.l3_len);
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
    Ok(true)
}

/// TC on the overlay: everything, for any overlay (WireGuard is L3).
#[inline(always)]
fn overlay_tc(ctx: &TcContext, pkt: &Packet, l2: bool) -> Result<i32, DropReason> {
    let cfg = config::current().ok_or(DropReason::NoPolicy)?;
    // An expiring TTL goes to the kernel, which answers time-exceeded.
    let route = if pkt.ttl > 1 {
        // SAFETY: reading the skb's ingress ifindex.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        forward::lookup(ctx, pkt, ifindex, true)
    } else {
        None
    };
    if !overlay_process(ctx, pkt, route.as_ref(), &cfg)? {
        return Ok(TC_ACT_OK);
    }
    let Some(route) = route else {
        return Ok(TC_ACT_OK);
    };
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    if !l2 {
        forward::push_l2_header(ctx, pkt.ipv6).map_err(|_| DropReason::Malformed)?;
    }
    Ok(forward::redirect_neigh(&route, pkt.ipv6))
}

/// XDP on an L2 overlay: the whole forward path without an skb, where the
/// egress takes XDP redirects. Anything else passes untouched to TC.
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
    let Some(route) = forward::lookup(ctx, pkt, ifindex, false) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !forward::xdp_redirect_allowed(route.ifindex()) {
        return Ok(xdp_action::XDP_PASS);
    }
    if !overlay_process(ctx, pkt, Some(&route), &cfg)? {
        return Ok(xdp_action::XDP_PASS);
    }
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
        let to_overlay = policy::peer(
            cfg.active_slot,
            &AddrKey {
                family,
                addr: pkt.dst,
            },
        );
        return match to_overlay {
            Some(_) => Err(DropReason::LanUnsolicited),
            None => Ok(None),
        };
    };
    revalidate(entry, &key, None, cfg)?;
    Ok(Some(Reply { key, entry }))
}

/// Accounts a reply and translates it back to the peer's endpoint.
#[inline(always)]
fn lan_translate<C: Mangle>(
    ctx: &C,
    pkt: &Packet,
    reply: &Reply,
    now: u64,
) -> Result<Packet, DropReason> {
    // Flow and resource bytes are IP bytes, the same on L2 and L3 hooks.
    conntrack::update(
        reply.entry,
        Direction::Reply,
        pkt.l3_len as u64,
        pkt.tcp_flags,
        now,
    );
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
    Ok(Packet {
        dst: reply.key.peer,
        dport: reply.key.peer_port,
        ..*pkt
    })
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
    let translated = Packet {
        dst: reply.key.peer,
        dport: reply.key.peer_port,
        ..*pkt
    };
    // SAFETY: reading the frame's ingress ifindex.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(route) = forward::lookup(ctx, &translated, ifindex, false) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if !forward::xdp_redirect_allowed(route.ifindex()) {
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
        return Ok(TC_ACT_OK);
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if nat::is_icmp_error(pkt) {
        return lan_icmp_error(ctx, pkt, &cfg, now);
    }
    let Some(reply) = lan_classify(pkt, &cfg, now)? else {
        return Ok(TC_ACT_OK);
    };
    let translated = lan_translate(ctx, pkt, &reply, now)?;
    tc_send_to_overlay(ctx, pkt, &translated)
}

/// TC on the LAN: hands a translated reply to the overlay without the IP
/// stack; an expiring TTL or an unknown route goes to the kernel.
#[inline(always)]
fn tc_send_to_overlay(
    ctx: &TcContext,
    pkt: &Packet,
    translated: &Packet,
) -> Result<i32, DropReason> {
    if pkt.ttl <= 1 {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(route) = forward::lookup(ctx, translated, ifindex, true) else {
        return Ok(TC_ACT_OK);
    };
    forward::decrement_ttl(ctx, pkt).map_err(|_| DropReason::Malformed)?;
    Ok(forward::redirect_to(&route, pkt.ipv6))
}

/// An ICMP error about one of our masqueraded flows (fragmentation needed or
/// packet too big, for path-MTU discovery through the tunnel; unreachable;
/// time exceeded) goes back to the peer, translated (RFC 5508). Others are
/// the kernel's, unless they head for the overlay quoting no tracked flow.
#[inline(always)]
fn lan_icmp_error(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &DatapathConfig,
    now: u64,
) -> Result<i32, DropReason> {
    let Some(q) = nat::quoted(ctx, pkt) else {
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
        // addressed to, or it is LAN-initiated traffic toward the overlay.
        let quoted_flow = CtKey {
            peer: q.src,
            remote: q.dst,
            peer_port: q.sport,
            remote_port: q.dport,
            proto: q.proto,
            family: family as u8,
            _pad: [0; 2],
        };
        let to_peer = policy::peer(
            cfg.active_slot,
            &AddrKey {
                family,
                addr: pkt.dst,
            },
        )
        .is_some();
        if to_peer && conntrack::lookup(&quoted_flow, now, cfg).is_none() {
            return Err(DropReason::LanUnsolicited);
        }
        return Ok(TC_ACT_OK);
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
        return Ok(TC_ACT_OK);
    };
    // SAFETY: map value pointer, valid for this run.
    let resource_id = unsafe { (*entry).resource_id };
    counters::count_resource(resource_id, ResourceEvent::Reply, pkt.l3_len);
    nat::translate_icmp_error(ctx, pkt, &q, peer.addr, peer.port)
        .map_err(|_| DropReason::Malformed)?;
    let translated = Packet {
        dst: peer.addr,
        ..*pkt
    };
    tc_send_to_overlay(ctx, pkt, &translated)
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
        Ok(Some(pkt)) => overlay_tc(ctx, &pkt, l2),
        Ok(None) => Ok(TC_ACT_OK),
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
        Ok(Some(pkt)) => overlay_xdp(&ctx, &pkt),
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
        Ok(Some(pkt)) => lan_tc(&ctx, &pkt),
        Ok(None) => Ok(TC_ACT_OK),
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
        Ok(Some(pkt)) => lan_xdp(&ctx, &pkt),
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
