//! The routing peer's kernel data path.
//!
//! One file per concern, in the order a packet meets them: `parse` validates
//! headers, `policy` names the source and destination and decides,
//! `conntrack` remembers allowed flows, `nat` masquerades, `forward` routes
//! and redirects, `icmp` answers what the kernel would get wrong, `counters`
//! accounts for every verdict. `overlay` and `lan` put them together for each
//! direction (`flow` holds what both share); the entry points below only
//! parse, dispatch and count.
#![no_std]
#![no_main]
// Inline BPF assembly, for atomic counter adds.
#![feature(asm_experimental_arch)]

#[cfg(feature = "bench")]
mod bench;
mod clock;
mod config;
mod conntrack;
mod counters;
mod ctx;
mod events;
mod flow;
mod forward;
mod frag;
mod headers;
mod icmp;
mod lan;
mod nat;
mod options;
mod overlay;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use routing_peer_common::{
    DropReason, Handoff, Hook, EVENT_FROM_LAN, EVENT_FROM_OVERLAY, HOLD_FROM_LAN,
};

use crate::{
    lan::lan_xdp,
    overlay::overlay_xdp,
    parse::{parse_packet, Frame},
};

/// Headers we may read: Ethernet, IPv6 with extension headers, TCP with options.
const TC_PULL_LEN: u32 = 192;

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
        Ok(Some(pkt)) if frag::is_later(pkt) => Ok(overlay::later(ctx, pkt, l2)),
        Ok(Some(pkt)) => Ok(frag::deny_if_dropped(
            pkt,
            overlay::overlay_tc_entry(ctx, pkt, l2),
        )),
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
        Ok(Some(pkt)) => Ok(overlay_xdp_frame(&ctx, pkt)),
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
    // Where XDP runs, it has counted, and dropped what is malformed.
    if !config::lan_xdp_attached() {
        counters::count_hook(Hook::LanIngress, len);
    }
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, true);
    let verdict = match parse_packet(&frame) {
        Ok(Some(pkt)) if frag::is_later(pkt) => Ok(lan::later(&ctx, pkt)),
        Ok(Some(pkt)) if nat::is_icmp_error(pkt) => Ok(lan::icmp_error(&ctx, pkt)),
        Ok(Some(pkt)) => Ok(frag::deny_if_dropped(pkt, lan::lan_tc_entry(&ctx, pkt))),
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

/// TC ingress on the hold's receiving end: a fragment that went around
/// the hold comes back, and is decided as if it arrived again where it
/// first did. Anything else here is not ours: dropped.
#[classifier]
pub fn rp_hold(ctx: TcContext) -> i32 {
    if ctx.data_end() - ctx.data() < ctx.len().min(TC_PULL_LEN) as usize {
        let _ = ctx.pull_data(ctx.len().min(TC_PULL_LEN));
    }
    let len = ctx.len() as usize;
    let Some(mark) = frag::hold_mark(&ctx) else {
        return TC_ACT_SHOT;
    };
    let frame = Frame::new(ctx.data(), ctx.data_end(), len, true);
    let verdict = match parse_packet(&frame) {
        // Only later fragments go around the hold.
        Ok(Some(pkt)) if !frag::is_later(pkt) => Err(DropReason::Malformed),
        Ok(Some(pkt)) if (mark >> 8) & 0xf == HOLD_FROM_LAN => Ok(lan::later(&ctx, pkt)),
        Ok(Some(pkt)) => Ok(overlay::later(&ctx, pkt, true)),
        Ok(None) => Err(DropReason::Malformed),
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
        Ok(Some(pkt)) => Ok(lan_xdp_frame(&ctx, pkt)),
        Ok(None) => Ok(xdp_action::XDP_PASS),
        Err(reason) => Err(reason),
    };
    verdict.unwrap_or_else(|reason| {
        drop_packet(&ctx, reason, len);
        xdp_action::XDP_DROP
    })
}

/// The XDP paths in frames of their own, beside the parser's: together
/// with the parser's and its option walk's, they would pass 512 bytes on
/// kernels that round every frame up to 32 bytes (6.1). Drops are counted
/// here.
#[inline(never)]
fn overlay_xdp_frame(ctx: &XdpContext, pkt: &parse::Packet) -> u32 {
    overlay_xdp(ctx, pkt).unwrap_or_else(|reason| {
        drop_packet(ctx, reason, ctx.data_end() - ctx.data());
        events::dropped(pkt, reason, EVENT_FROM_OVERLAY);
        xdp_action::XDP_DROP
    })
}

#[inline(never)]
fn lan_xdp_frame(ctx: &XdpContext, pkt: &parse::Packet) -> u32 {
    lan_xdp(ctx, pkt).unwrap_or_else(|reason| {
        drop_packet(ctx, reason, ctx.data_end() - ctx.data());
        events::dropped(pkt, reason, EVENT_FROM_LAN);
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
