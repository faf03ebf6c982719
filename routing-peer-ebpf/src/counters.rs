//! Per-CPU counters: lock-free on the hot path, summed by user space.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use routing_peer_common::{DropReason, Hook, PacketCounter};

#[map]
static HOOK_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(Hook::COUNT, 0);

#[map]
static DROP_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<PacketCounter>, index: u32, bytes: usize) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_hook(hook: Hook, bytes: usize) {
    bump(&HOOK_STATS, hook as u32, bytes);
}

#[inline(always)]
pub fn count_drop(reason: DropReason, bytes: usize) {
    bump(&DROP_STATS, reason as u32, bytes);
}
