//! Connection tracking: one LRU entry per flow, keyed by its original
//! direction (peer → remote), holding state, per-direction counters, the NAT
//! mapping and the rule that allowed it.

use crate::{events, parse::Packet};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use routing_peer_common::{
    CtEntry, CtEvent, CtKey, DatapathConfig, EndReason, EventKind, CT_ICMP, CT_OTHER,
    CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_RESET, CT_TCP_SYN_SENT, CT_UDP_REPLIED,
    CT_UDP_UNREPLIED, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN,
};

const MAX_FLOWS: u32 = 262144;

/// The LRU maps' flags: the shared LRU lists, or per-CPU ones in the
/// benchmark's comparison object (feature `percpu-lru`).
pub const LRU_FLAGS: u32 = if cfg!(feature = "percpu-lru") {
    aya_ebpf::bindings::BPF_F_NO_COMMON_LRU
} else {
    0
};

// Maps.
/// Tracked flows by their overlay-side key; LRU, so a full table evicts.
#[map]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_FLOWS, LRU_FLAGS);
/// Per CPU: conntrack inserts and removals by kind (`CtEvent`), for evictions.
#[map]
static CT_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CtEvent::COUNT, 0);
/// Written by the daemon's GC; declared here so it is pinned with the rest.
#[map]
static CT_GC: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(1, 0);
/// Where a new entry is assembled: a 112-byte struct on the 512-byte BPF
/// stack does not fit beside everything else the fast path holds.
#[map]
static CT_SCRATCH: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count_event(event: CtEvent) {
    if let Some(c) = CT_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

const CT_ENTRY_WORDS: usize = core::mem::size_of::<CtEntry>() / 8;
// The scratch is zeroed word by word: the entry must be whole words.
const _: () = assert!(core::mem::size_of::<CtEntry>() == CT_ENTRY_WORDS * 8);

/// This CPU's scratch entry, zeroed.
#[inline(always)]
pub fn scratch() -> Option<&'static mut CtEntry> {
    let entry = CT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, used only within one program run. Zeroed as
    // volatile words: LLVM turns a plain loop into a call to the linker's
    // byte-by-byte memset.
    unsafe {
        let words = entry as *mut u64;
        for i in 0..CT_ENTRY_WORDS {
            words.add(i).write_volatile(0);
        }
        Some(&mut *entry)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Peer → remote.
    Forward,
    /// Remote → peer.
    Reply,
}

/// The live entry for `key`, or `None` when absent or expired.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64, cfg: &DatapathConfig) -> Option<*mut CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this program run.
    let (last_seen, state) = unsafe { ((*entry).last_seen_ns, (*entry).state) };
    if now.saturating_sub(last_seen) > cfg.timeout_ns(state) {
        return None;
    }
    Some(entry)
}

/// Records a new flow. Another CPU may have raced us to the same key; its
/// entry then stands and is returned.
#[inline(always)]
pub fn create(key: &CtKey, entry: &CtEntry) -> Option<*mut CtEntry> {
    // An expired entry may still sit under this key: it ends, replaced.
    if let Some(old) = CONNTRACK.get_ptr(key) {
        events::flow(key, old, EventKind::End, EndReason::Timeout);
    }
    remove(key);
    let inserted = CONNTRACK.insert(key, entry, BPF_NOEXIST as u64).is_ok();
    let created = CONNTRACK.get_ptr_mut(key)?;
    if inserted {
        count_event(CtEvent::Inserts);
        events::flow(key, created, EventKind::Start, EndReason::Timeout);
    }
    Some(created)
}

/// This CPU's scratch entry as `new_flow` left it.
#[inline(always)]
pub fn scratch_entry() -> Option<&'static mut CtEntry> {
    let entry = CT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used only within one program run.
    Some(unsafe { &mut *entry })
}

/// `create` with the entry `new_flow` left in this CPU's scratch.
#[inline(always)]
pub fn create_from_scratch(key: &CtKey) -> Option<*mut CtEntry> {
    let entry = CT_SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's slot, filled earlier in this program run.
    create(key, unsafe { &*entry })
}

#[inline(always)]
pub fn remove(key: &CtKey) {
    if CONNTRACK.remove(key).is_ok() {
        count_event(CtEvent::Removals);
    }
}

#[inline(always)]
pub fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    match proto {
        IPPROTO_TCP if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 => CT_TCP_SYN_SENT,
        // Picked up mid-stream (e.g. after a restart that lost state): established.
        IPPROTO_TCP => CT_TCP_ESTABLISHED,
        IPPROTO_UDP => CT_UDP_UNREPLIED,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => CT_ICMP,
        _ => CT_OTHER,
    }
}

#[inline(always)]
fn next_state(state: u8, dir: Direction, flags_seen_reply: u8, tcp_flags: u8) -> u8 {
    if tcp_flags & TCP_RST != 0 {
        return CT_TCP_RESET;
    }
    if tcp_flags & TCP_FIN != 0 {
        return CT_TCP_CLOSING;
    }
    match state {
        // The reply's SYN-ACK, or any ACK after it, establishes the flow.
        CT_TCP_SYN_SENT
            if (dir == Direction::Reply && tcp_flags & TCP_SYN != 0)
                || (dir == Direction::Forward && flags_seen_reply & TCP_SYN != 0) =>
        {
            CT_TCP_ESTABLISHED
        }
        CT_UDP_UNREPLIED if dir == Direction::Reply => CT_UDP_REPLIED,
        // A new SYN reopens a flow that had closed.
        CT_TCP_CLOSING | CT_TCP_RESET if tcp_flags & TCP_SYN != 0 => CT_TCP_SYN_SENT,
        s => s,
    }
}

/// `*target += value` as one BPF atomic instruction: flow counters are
/// shared by all CPUs. (The BPF target's `core` has no atomic RMW methods.)
#[inline(always)]
pub(crate) fn atomic_add(target: &mut u64, value: u64) {
    // SAFETY: `target` is a valid, aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {val}",
            ptr = in(reg) target as *mut u64,
            val = in(reg) value,
        );
    }
}

/// A later fragment of a tracked flow: counted, its state untouched (it
/// carries no transport header).
#[inline(always)]
pub fn count_fragment(entry: *mut CtEntry, dir: Direction, pkt: &Packet, now: u64) {
    // SAFETY: map value pointer; counters are added atomically.
    unsafe {
        let counter = match dir {
            Direction::Forward => &mut (*entry).forward,
            Direction::Reply => &mut (*entry).reply,
        };
        atomic_add(&mut counter.packets, 1);
        atomic_add(&mut counter.bytes, pkt.l3_len as u64);
        (*entry).last_seen_ns = now;
    }
}

/// RFC 5961's idea, as Linux conntrack does it: a RST counts only inside
/// the receiver's window. From direction `dir`, its sequence number must lie
/// between what the receiver last acknowledged and the further of the
/// receiver's window and what the sender has sent; a RST answering a SYN
/// must acknowledge it exactly. A blind RST lands there with a probability
/// of about window / 2^32. Where the receiver has sent nothing (a flow
/// picked up mid-stream), there is nothing to check against.
#[inline(always)]
pub fn rst_acceptable(entry: *const CtEntry, dir: Direction, pkt: &Packet) -> bool {
    if pkt.proto != IPPROTO_TCP || pkt.tcp_flags & TCP_RST == 0 {
        return true;
    }
    // SAFETY: map value pointer, valid for this program run.
    let (other_flags, other_ack, other_win, other_seq_end, own_seq_end) = unsafe {
        match dir {
            Direction::Forward => (
                (*entry).tcp_flags_reply,
                (*entry).ack_reply,
                (*entry).win_reply,
                (*entry).seq_end_reply,
                (*entry).seq_end_forward,
            ),
            Direction::Reply => (
                (*entry).tcp_flags_forward,
                (*entry).ack_forward,
                (*entry).win_forward,
                (*entry).seq_end_forward,
                (*entry).seq_end_reply,
            ),
        }
    };
    if other_flags & TCP_ACK != 0 {
        let offset = pkt.tcp_seq.wrapping_sub(other_ack);
        let in_flight = own_seq_end.wrapping_sub(other_ack);
        let window = if in_flight > other_win as u32 && in_flight < (1 << 30) {
            in_flight
        } else {
            other_win as u32
        };
        return offset <= window;
    }
    if other_flags & TCP_SYN != 0 {
        return pkt.tcp_flags & TCP_ACK != 0 && pkt.tcp_ack == other_seq_end;
    }
    true
}

/// The sequence number after a segment: SYN and FIN count one each.
#[inline(always)]
fn seq_end(pkt: &Packet) -> u32 {
    let mut len = pkt.l4_payload as u32;
    if pkt.tcp_flags & TCP_SYN != 0 {
        len += 1;
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        len += 1;
    }
    pkt.tcp_seq.wrapping_add(len)
}

/// Accounts one packet and advances the state.
#[inline(always)]
pub fn update(entry: *mut CtEntry, dir: Direction, pkt: &Packet, now: u64) {
    let len = pkt.l3_len as u64;
    let tcp_flags = pkt.tcp_flags;
    // SAFETY: map value pointer; counters are shared between CPUs, so they
    // are added atomically. State races are benign: both CPUs write a
    // legal state and the next packet corrects it.
    unsafe {
        let counter = match dir {
            Direction::Forward => &mut (*entry).forward,
            Direction::Reply => &mut (*entry).reply,
        };
        atomic_add(&mut counter.packets, 1);
        atomic_add(&mut counter.bytes, len);
        (*entry).last_seen_ns = now;
        if pkt.proto == IPPROTO_TCP && tcp_flags & TCP_RST == 0 {
            let end = seq_end(pkt);
            match dir {
                Direction::Forward => {
                    (*entry).seq_end_forward = end;
                    if tcp_flags & TCP_ACK != 0 {
                        (*entry).ack_forward = pkt.tcp_ack;
                        (*entry).win_forward = pkt.tcp_win;
                    }
                }
                Direction::Reply => {
                    (*entry).seq_end_reply = end;
                    if tcp_flags & TCP_ACK != 0 {
                        (*entry).ack_reply = pkt.tcp_ack;
                        (*entry).win_reply = pkt.tcp_win;
                    }
                }
            }
        }
        match dir {
            Direction::Forward => (*entry).tcp_flags_forward |= tcp_flags,
            Direction::Reply => (*entry).tcp_flags_reply |= tcp_flags,
        }
        let rev_flags = (*entry).tcp_flags_reply;
        let state = (*entry).state;
        let next = next_state(state, dir, rev_flags, tcp_flags);
        if next != state {
            (*entry).state = next;
        }
    }
}
