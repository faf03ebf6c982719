//! Flow and drop events for the daemon (`routing-peer observe`, the
//! exporters): a flow's start when it is created, its end when the data
//! path removes it (revoked, or replaced after it expired; GC reports the
//! rest), and drops aggregated per source, destination, protocol, port,
//! reason and side. Established packets never come here. Events are built
//! in the ring buffer or in per-CPU scratch: the stack has no room.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use routing_peer_common::{
    CtEntry, CtKey, DropAgg, DropKey, DropReason, EndReason, Event, EventKind, EventStat, Family,
    EVENTS_RING_BYTES, MAX_DROP_AGGREGATES,
};

use crate::{clock, parse::Packet};

// Maps.
/// Events for the daemon, 128 bytes each; full, an event is counted lost.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
/// Drops by `DropKey`: the packets counted, and the first one's event.
#[map]
static DROP_AGG: HashMap<DropKey, DropAgg> = HashMap::with_max_entries(MAX_DROP_AGGREGATES, 0);
/// Per CPU: events emitted, lost, aggregated, unaggregated (`EventStat`).
#[map]
static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventStat::COUNT, 0);
/// Per CPU: what the drop path knew of the packet it is dropping.
#[map]
static DROP_NOTE: PerCpuArray<DropNote> = PerCpuArray::with_max_entries(1, 0);
/// Per CPU: a drop aggregate's key and value under construction.
#[map]
static DROP_SCRATCH: PerCpuArray<DropScratch> = PerCpuArray::with_max_entries(1, 0);

/// Ids a drop path knew, for the packet with this source and destination.
#[repr(C)]
pub struct DropNote {
    src: [u32; 4],
    dst: [u32; 4],
    peer_id: u32,
    resource_id: u32,
    rule_id: u32,
    valid: u32,
}

#[repr(C)]
struct DropScratch {
    key: DropKey,
    agg: DropAgg,
}

/// The daemon is woken once per this many unread bytes, not per event:
/// a wakeup is an irq_work (a self-IPI), which costs more than the event.
/// The daemon drains every second anyway.
const WAKEUP_BYTES: u64 = 64 << 10;
/// One event in the ring: the event and the ring's 8-byte record header.
const RECORD_BYTES: u64 = core::mem::size_of::<Event>() as u64 + 8;

/// Wakes on the event that crosses each multiple of `WAKEUP_BYTES` unread
/// (it is reserved, so counted). Waking on every event past the mark sent
/// an IPI per event while the daemon was being scheduled: 4% of a new
/// flow's cost with both CPUs opening flows.
#[inline(always)]
fn submit_flags() -> u64 {
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if unread >= WAKEUP_BYTES && unread % WAKEUP_BYTES < RECORD_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn stat(which: EventStat) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(which as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *c += 1 };
    }
}

/// Remembers what a drop path knew (peer, resource, rule) for the event
/// the drop makes; only that packet's event takes it.
#[inline(always)]
pub fn note(pkt: &Packet, peer_id: u32, resource_id: u32, rule_id: u32) {
    if let Some(n) = DROP_NOTE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used within one program run.
        let n = unsafe { &mut *n };
        n.src = pkt.src;
        n.dst = pkt.dst;
        n.peer_id = peer_id;
        n.resource_id = resource_id;
        n.rule_id = rule_id;
        n.valid = 1;
    }
}

/// Zeroes an event in place, padding included, as words: a loop or a
/// struct literal would be a memset call or a 128-byte stack copy.
#[inline(always)]
fn clear(ev: *mut Event) {
    let words = ev as *mut u64;
    for i in 0..(core::mem::size_of::<Event>() / 8) {
        // SAFETY: `ev` points to a whole `Event`, 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

#[inline(always)]
fn fill_flow(ev: &mut Event, key: &CtKey, entry: &CtEntry, kind: EventKind) {
    ev.time_ns = clock::now();
    ev.first_seen_ns = entry.first_seen_ns;
    ev.forward = entry.forward;
    ev.reply = entry.reply;
    ev.src = key.peer;
    ev.dst = key.remote;
    ev.sport = key.peer_port;
    ev.dport = key.remote_port;
    ev.family = key.family;
    ev.proto = key.proto;
    ev.nat_addr = entry.nat_addr;
    ev.nat_port = entry.nat_port;
    ev.peer_id = entry.peer_id;
    ev.resource_id = entry.resource_id;
    ev.rule_id = entry.rule_id;
    ev.tcp_flags = entry.tcp_flags_forward;
    ev.kind = kind as u8;
}

/// A flow's start or end, into the ring buffer.
#[inline(never)]
pub fn flow(key: &CtKey, entry: *const CtEntry, kind: EventKind, reason: EndReason) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        stat(EventStat::Lost);
        return;
    };
    let ev = slot.as_mut_ptr();
    clear(ev);
    // SAFETY: `ev` is the reserved, zeroed event; `entry` a map value.
    unsafe {
        fill_flow(&mut *ev, key, &*entry, kind);
        (*ev).reason = reason as u8;
    }
    slot.submit(submit_flags());
    stat(EventStat::Emitted);
}

/// A dropped packet: counted into its aggregate; the first of one (or
/// one the table has no room for) is reported at once, the others by
/// the daemon, which reads the counts.
#[inline(never)]
// Keys and values by reference: they stay in the per-CPU scratch, where by
// value they would be copied onto the stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn dropped(pkt: &Packet, reason: DropReason, hook: u8) {
    let Some(s) = DROP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, used within one program run.
    let s = unsafe { &mut *s };
    s.key.src = pkt.src;
    s.key.dst = pkt.dst;
    s.key.dport = pkt.dport;
    s.key.proto = pkt.proto;
    s.key.reason = reason as u8;
    s.key.family = Family::of(pkt.ipv6) as u8;
    s.key.hook = hook;
    s.key._pad = [0; 2];
    let now = clock::now();
    if let Some(agg) = DROP_AGG.get_ptr_mut(&s.key) {
        // SAFETY: map value; the count is shared by all CPUs.
        unsafe {
            crate::conntrack::atomic_add(&mut (*agg).count, 1);
            (*agg).last_ns = now;
        }
        stat(EventStat::Aggregated);
        return;
    }
    clear(&mut s.agg.first);
    fill_drop(&mut s.agg.first, pkt, reason, hook, now);
    s.agg.count = 1;
    s.agg.last_ns = now;
    if DROP_AGG.insert(&s.key, &s.agg, BPF_NOEXIST as u64).is_err() {
        // Another CPU's first packet won the race: count into its aggregate.
        if let Some(agg) = DROP_AGG.get_ptr_mut(&s.key) {
            // SAFETY: as above.
            unsafe { crate::conntrack::atomic_add(&mut (*agg).count, 1) };
            stat(EventStat::Aggregated);
            return;
        }
        stat(EventStat::Unaggregated);
    }
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        stat(EventStat::Lost);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: the reserved event, written whole from the scratch copy.
    unsafe { core::ptr::copy_nonoverlapping(&s.agg.first as *const Event, ev, 1) };
    slot.submit(submit_flags());
    stat(EventStat::Emitted);
}

#[inline(always)]
fn fill_drop(ev: &mut Event, pkt: &Packet, reason: DropReason, hook: u8, now: u64) {
    ev.time_ns = now;
    ev.src = pkt.src;
    ev.dst = pkt.dst;
    ev.sport = pkt.sport;
    ev.dport = pkt.dport;
    ev.family = Family::of(pkt.ipv6) as u8;
    ev.proto = pkt.proto;
    ev.tcp_flags = pkt.tcp_flags;
    ev.kind = EventKind::Drop as u8;
    ev.reason = reason as u8;
    ev.hook = hook;
    ev.count = 1;
    if let Some(n) = DROP_NOTE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used within one program run.
        let n = unsafe { &mut *n };
        if n.valid != 0 && n.src == pkt.src && n.dst == pkt.dst {
            ev.peer_id = n.peer_id;
            ev.resource_id = n.resource_id;
            ev.rule_id = n.rule_id;
        }
        n.valid = 0;
    }
}

/// Fixed sizes, as the maps and the stack budget assume them.
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::size_of::<DropScratch>() == 184);
