//! Per-CPU counters: lock-free on the hot path, summed by user space.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use routing_peer_common::{
    DropReason, Handoff, Hook, PacketCounter, ResourceCounters, MAX_RESOURCES,
};

// Maps.
/// Per CPU: packets and bytes each hook saw (`Hook`).
#[map]
static HOOK_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(Hook::COUNT, 0);
/// Per CPU: packets and bytes dropped, by reason (`DropReason`).
#[map]
static DROP_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);
/// Packets handed to the kernel, by reason: never without a counted reason.
#[map]
static HANDOFF_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(Handoff::COUNT, 0);
/// Indexed by resource id; ids stay below `MAX_RESOURCES` (the compiler).
#[map]
static RESOURCE_STATS: PerCpuArray<ResourceCounters> =
    PerCpuArray::with_max_entries(MAX_RESOURCES, 0);

#[inline(always)]
fn bump(counter: &mut PacketCounter, bytes: usize) {
    counter.packets += 1;
    counter.bytes += bytes as u64;
}

#[inline(always)]
pub fn count_hook(hook: Hook, bytes: usize) {
    if let Some(c) = HOOK_STATS.get_ptr_mut(hook as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        bump(unsafe { &mut *c }, bytes);
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason, bytes: usize) {
    if let Some(c) = DROP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: as above.
        bump(unsafe { &mut *c }, bytes);
    }
}

#[inline(always)]
pub fn count_handoff(reason: Handoff, bytes: usize) {
    if let Some(c) = HANDOFF_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: as above.
        bump(unsafe { &mut *c }, bytes);
    }
}

pub enum ResourceEvent {
    Forward,
    Reply,
    Denied,
    NewFlow,
}

#[inline(always)]
pub fn count_resource(resource_id: u32, event: ResourceEvent, bytes: usize) {
    let Some(c) = RESOURCE_STATS.get_ptr_mut(resource_id) else {
        return;
    };
    // SAFETY: as above.
    let c = unsafe { &mut *c };
    match event {
        ResourceEvent::Forward => bump(&mut c.forward, bytes),
        ResourceEvent::Reply => bump(&mut c.reply, bytes),
        ResourceEvent::Denied => bump(&mut c.denied, bytes),
        ResourceEvent::NewFlow => c.new_flows += 1,
    }
}

/// A TC verdict, or the drop of a packet for `reason`, counted: for
/// functions kept out of line, which return a plain verdict.
#[inline(always)]
pub fn verdict_or_drop(
    ctx: &aya_ebpf::programs::TcContext,
    pkt: &crate::parse::Packet,
    from: u8,
    verdict: Result<i32, DropReason>,
) -> i32 {
    verdict.unwrap_or_else(|reason| {
        count_drop(reason, ctx.len() as usize);
        crate::events::dropped(pkt, reason, from);
        aya_ebpf::bindings::TC_ACT_SHOT
    })
}
