//! Flow and drop events: what the data path reports through the `EVENTS`
//! ring buffer (`routing-peer observe`, the exporters). Established
//! packets report nothing; a flow reports its start (kernel) and its end
//! (the kernel on revocation, the daemon's GC otherwise); drops are
//! aggregated per `DropKey` in `DROP_AGG`, the first of a burst reported at
//! once and the rest counted for the daemon to report.

use crate::PacketCounter;

/// What an `Event` reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Start = 1,
    End = 2,
    Drop = 3,
}

/// Why a flow ended (`Event::reason` of an `End`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Idle past its timeout; removed by GC.
    Timeout = 0,
    /// TCP closed (FIN both ways); removed by GC after its linger.
    Close = 1,
    /// TCP reset; removed by GC after its linger.
    Reset = 2,
    /// The policy no longer allows it; removed by the data path.
    Revoked = 3,
    /// Gone from the table between two GC passes, the kernel's LRU making
    /// room: the counts are those of the pass before (a lower bound).
    Evicted = 4,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::Close => "close",
            EndReason::Reset => "reset",
            EndReason::Revoked => "revoked",
            EndReason::Evicted => "evicted",
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => EndReason::Close,
            2 => EndReason::Reset,
            3 => EndReason::Revoked,
            4 => EndReason::Evicted,
            _ => EndReason::Timeout,
        }
    }
}

/// Where a dropped packet came from (`Event::hook`).
pub const EVENT_FROM_OVERLAY: u8 = 0;
pub const EVENT_FROM_LAN: u8 = 1;

/// One event, 128 bytes. Addresses as in map keys (network order words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC (coarse) when it happened: for drops, the first
    /// packet of the count; for aggregates, the last.
    pub time_ns: u64,
    /// Start and end: when the flow began.
    pub first_seen_ns: u64,
    /// End: peer → resource, and back.
    pub forward: PacketCounter,
    pub reply: PacketCounter,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Start and end: the masqueraded source (zero when not masqueraded).
    pub nat_addr: [u32; 4],
    /// Ids of `names.json`; 0 when not known.
    pub peer_id: u32,
    pub resource_id: u32,
    pub rule_id: u32,
    /// Drops: the packets this event stands for.
    pub count: u32,
    pub sport: u16,
    pub dport: u16,
    pub nat_port: u16,
    /// `EventKind`.
    pub kind: u8,
    /// Drops: `DropReason`; ends: `EndReason`.
    pub reason: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Drops: `EVENT_FROM_OVERLAY` or `EVENT_FROM_LAN`.
    pub hook: u8,
    pub _pad: [u8; 4],
}

/// What drops aggregate by: source, destination, protocol, destination
/// port, reason and side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub dport: u16,
    pub proto: u8,
    pub reason: u8,
    pub family: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}

/// A drop aggregate: packets counted since the first (the kernel adds,
/// the daemon reports the difference), and the first packet's detail.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropAgg {
    pub count: u64,
    /// CLOCK_MONOTONIC of the last packet counted.
    pub last_ns: u64,
    pub first: Event,
}

/// Event counters, per CPU (`EVENT_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStat {
    /// Events written to the ring buffer.
    Emitted = 0,
    /// Events the ring buffer had no room for.
    Lost = 1,
    /// Drops counted into an existing aggregate instead of an event.
    Aggregated = 2,
    /// Drops reported one by one because the aggregate table was full.
    Unaggregated = 3,
}

impl EventStat {
    pub const COUNT: u32 = 4;
}

/// `EVENTS` ring buffer size: 8192 events.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// `DROP_AGG` capacity.
pub const MAX_DROP_AGGREGATES: u32 = 16384;
