//! The routing peer's kernel data path.
//!
//! One file per concern, in the order a packet meets them: `parse` validates
//! headers, `counters` accounts for every verdict. Entry points stay thin.
#![no_std]
#![no_main]

mod counters;
mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use routing_peer_common::Hook;

use crate::parse::{parse_packet, Frame};

#[inline(always)]
fn process<C: EbpfContext>(ctx: &C, frame: Frame, hook: Hook) -> bool {
    counters::count_hook(hook, frame.len());
    match parse_packet(&frame) {
        Ok(_packet) => true,
        Err(reason) => {
            counters::count_drop(reason, frame.len());
            // Off unless the daemon runs with --verbose-datapath (AYA_LOG_LEVEL).
            debug!(ctx, "drop: reason {} len {}", reason as u32, frame.len());
            false
        }
    }
}

/// Headers we may read: Ethernet, IPv6 with extension headers, TCP with options.
const TC_PULL_LEN: u32 = 192;

#[inline(always)]
fn tc_verdict(ctx: &TcContext, l2: bool) -> i32 {
    // GSO/GRO skbs may hold headers outside the linear area; pull them in.
    if ctx.data_end() - ctx.data() < ctx.len().min(TC_PULL_LEN) as usize {
        let _ = ctx.pull_data(ctx.len().min(TC_PULL_LEN));
    }
    let frame = Frame::new(ctx.data(), ctx.data_end(), ctx.len() as usize, l2);
    if process(ctx, frame, Hook::OverlayIngress) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// TC ingress on an L3 overlay device (WireGuard or TUN): packets start at the IP header.
#[classifier]
pub fn rp_overlay_l3(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, false)
}

/// TC ingress on an L2 overlay stand-in (veth), so benchmarks can leave WireGuard out.
#[classifier]
pub fn rp_overlay_l2(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, true)
}

/// XDP on the LAN interface.
#[xdp]
pub fn rp_lan_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(
        ctx.data(),
        ctx.data_end(),
        ctx.data_end() - ctx.data(),
        true,
    );
    if process(&ctx, frame, Hook::LanIngress) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
