//! Fragments. A datagram's first fragment carries the transport header: it
//! goes through policy, conntrack and NAT like any packet, and its verdict
//! is recorded here under (source, destination, identification, protocol).
//! The fragments after it take that verdict: the same flow, the same
//! address translation (of the IP header only: the transport checksum
//! lives in the first fragment), the same counters.
//!
//! A later fragment that arrives before its first goes around the hold, a
//! veth pair of the daemon's with a netem delay, and comes back to
//! `rp_hold` until the first has been seen, for a bounded number of passes;
//! then it is dropped as an orphan. Nothing is forwarded blind.
//!
//! Attacks: a later fragment that would overwrite the inspected transport
//! header, or a second, different first fragment, poisons the datagram
//! (RFC 1858, 3128, 5722): it and every fragment after it are dropped. A
//! first fragment too short for its transport header is dropped in
//! `parse`. Entries are never refreshed: they count as absent once older
//! than the configured timeout, and the map is an LRU, so nobody can fill
//! it to deny others for longer than that.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use routing_peer_common::{
    CtEntry, CtKey, DatapathConfig, DropReason, Family, FragEntry, FragEvent, FragKey, FRAG_DENIED,
    FRAG_POISONED, HOLD_MAC, HOLD_MARK, HOLD_MARK_MASK,
};

use crate::{
    clock,
    ctx::Mangle,
    forward,
    parse::{Packet, FRAG_FIRST, FRAG_LATER},
};

/// Datagrams by default; the daemon sizes it (`fragments.max_datagrams`).
const MAX_DATAGRAMS: u32 = 8192;

/// A key and an entry being written, per CPU: off the 512-byte stack.
#[repr(C)]
struct Scratch {
    key: FragKey,
    value: FragEntry,
}

// Maps.
/// A datagram's first-fragment verdict, by (source, destination, id, protocol).
#[map]
static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(MAX_DATAGRAMS, 0);
/// Per CPU: fragment events (`FragEvent`).
#[map]
static FRAG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FragEvent::COUNT, 0);
/// Per CPU: the key and entry `record` writes.
#[map]
static FRAG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(event: FragEvent) {
    if let Some(n) = FRAG_STATS.get_ptr_mut(event as u32) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
fn key_of(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.frag_proto,
        family: Family::of(pkt.ipv6) as u8,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn fresh(entry: &FragEntry, now: u64, cfg: &DatapathConfig) -> bool {
    now.saturating_sub(entry.created_ns) <= cfg.frag_timeout_ns
}

/// Records a first fragment's `verdict` for the fragments after it. A
/// datagram already recorded with another flow had a different first
/// fragment: it is poisoned. `entry` is its flow's conntrack entry, which
/// counts fragmented datagrams (null: none). Only first fragments pay for
/// the call; not inlined, so its frame is not the fast path's.
#[inline(always)]
pub fn record(
    pkt: &Packet,
    verdict: u8,
    flow: &CtKey,
    entry: Option<*mut CtEntry>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    if pkt.frag != FRAG_FIRST {
        return Ok(());
    }
    record_first(
        pkt,
        verdict,
        flow,
        entry.unwrap_or(core::ptr::null_mut()),
        cfg,
    )
}

// Borrowed, the key and entry stay in the scratch; by value they would be
// copied onto the stack this function exists to spare.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn record_first(
    pkt: &Packet,
    verdict: u8,
    flow: &CtKey,
    entry: *mut CtEntry,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    let now = clock::now();
    let scratch = FRAG_SCRATCH
        .get_ptr_mut(0)
        .ok_or(DropReason::FragmentOrphan)?;
    // SAFETY: this CPU's slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    scratch.key = key_of(pkt);
    if let Some(old) = FRAGS.get_ptr_mut(&scratch.key) {
        // SAFETY: map value pointer, valid for this program run.
        let old = unsafe { &mut *old };
        if fresh(old, now, cfg) {
            if old.verdict == FRAG_POISONED {
                return Err(DropReason::FragmentOverlap);
            }
            if !same_flow(&old.flow, flow) || old.verdict != verdict {
                old.verdict = FRAG_POISONED;
                return Err(DropReason::FragmentOverlap);
            }
            return Ok(()); // a duplicate of the first fragment
        }
    }
    scratch.value.created_ns = now;
    scratch.value.flow = *flow;
    scratch.value.verdict = verdict;
    scratch.value.l4_end = pkt.l4_end;
    if FRAGS
        .insert(&scratch.key, &scratch.value, BPF_NOEXIST as u64)
        .is_ok()
    {
        count(FragEvent::Inserted);
    } else {
        // An expired entry under the same key: replaced.
        let _ = FRAGS.insert(&scratch.key, &scratch.value, BPF_ANY as u64);
    }
    count(FragEvent::Tracked);
    if !entry.is_null() {
        // SAFETY: map value pointer, valid for this program run; a lost
        // increment between CPUs only undercounts a statistic.
        unsafe { (*entry).fragmented += 1 };
    }
    Ok(())
}

/// Field by field: comparing the whole keys would copy both to the stack.
#[inline(always)]
fn same_flow(a: &CtKey, b: &CtKey) -> bool {
    a.peer == b.peer
        && a.remote == b.remote
        && a.peer_port == b.peer_port
        && a.remote_port == b.remote_port
        && a.proto == b.proto
}

/// `verdict`, after recording a dropped first fragment's datagram as
/// denied.
#[inline(always)]
pub fn deny_if_dropped(pkt: &Packet, verdict: i32) -> i32 {
    if verdict == TC_ACT_SHOT {
        deny(pkt);
    }
    verdict
}

/// A first fragment that was dropped: the fragments after it are too.
#[inline(always)]
pub fn deny(pkt: &Packet) {
    if pkt.frag == FRAG_FIRST {
        deny_first(pkt);
    }
}

#[inline(never)]
fn deny_first(pkt: &Packet) {
    let now = clock::now();
    let value = FragEntry {
        created_ns: now,
        verdict: FRAG_DENIED,
        ..FragEntry::default()
    };
    let key = key_of(pkt);
    // Never un-poison a datagram.
    if let Some(old) = FRAGS.get_ptr(key) {
        // SAFETY: map value pointer, valid for this program run.
        if unsafe { (*old).verdict } == FRAG_POISONED {
            return;
        }
    }
    if FRAGS.insert(key, value, BPF_ANY as u64).is_ok() {
        count(FragEvent::Inserted);
    }
}

/// The verdict a later fragment takes from its first; `None` when the
/// first has not been seen (or its verdict has expired).
#[inline(always)]
pub fn follow(
    pkt: &Packet,
    now: u64,
    cfg: &DatapathConfig,
) -> Result<Option<&'static FragEntry>, DropReason> {
    let key = key_of(pkt);
    let Some(entry) = FRAGS.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: map value pointer, valid for this program run.
    let entry = unsafe { &mut *entry };
    if !fresh(entry, now, cfg) {
        return Ok(None);
    }
    match entry.verdict {
        FRAG_POISONED => return Err(DropReason::FragmentOverlap),
        FRAG_DENIED => return Err(DropReason::Fragment),
        _ => {}
    }
    if pkt.frag_offset < entry.l4_end {
        entry.verdict = FRAG_POISONED;
        return Err(DropReason::FragmentOverlap);
    }
    count(FragEvent::Followed);
    Ok(Some(entry))
}

/// Whether `pkt` is a later fragment, which has no transport header.
#[inline(always)]
pub fn is_later(pkt: &Packet) -> bool {
    pkt.frag == FRAG_LATER
}

/// The skb's mark, when it is a held fragment's.
#[inline(always)]
pub fn hold_mark(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading the skb's mark.
    let mark = unsafe { (*ctx.skb.skb).mark };
    (mark & HOLD_MARK_MASK == HOLD_MARK).then_some(mark)
}

/// Passes a held fragment has made so far, from its mark.
#[inline(always)]
fn passes(ctx: &TcContext) -> u32 {
    hold_mark(ctx).map_or(0, |mark| mark & 0xff)
}

/// Sends a later fragment whose first has not been seen around the hold,
/// to come back through `rp_hold` as if it arrived again from `from`
/// (`HOLD_FROM_OVERLAY` or `HOLD_FROM_LAN`); an orphan once it has made
/// its passes (or when there is no hold).
#[inline(always)]
pub fn hold(
    ctx: &TcContext,
    pkt: &Packet,
    l2: bool,
    from: u32,
    cfg: &DatapathConfig,
) -> Result<i32, DropReason> {
    let passes = passes(ctx);
    if cfg.hold_ifindex == 0 || passes >= cfg.hold_passes {
        return Err(DropReason::FragmentOrphan);
    }
    if !l2 {
        forward::push_l2_header(ctx, pkt.ipv6)?;
    }
    // Addressed to the hold's receiving end, so that it takes the frame.
    let mac = u32::from_ne_bytes([HOLD_MAC[0], HOLD_MAC[1], HOLD_MAC[2], HOLD_MAC[3]]);
    ctx.store_u32(0, mac)?;
    ctx.store_u16(4, u16::from_ne_bytes([HOLD_MAC[4], HOLD_MAC[5]]))?;
    ctx.set_mark(HOLD_MARK | (from << 8) | (passes + 1));
    count(FragEvent::Held);
    // SAFETY: plain helper call.
    let rc = unsafe { bpf_redirect(cfg.hold_ifindex, 0) } as i32;
    if rc != TC_ACT_REDIRECT {
        return Err(DropReason::FragmentOrphan);
    }
    Ok(rc)
}
