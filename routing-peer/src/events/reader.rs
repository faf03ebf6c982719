//! The kernel side: the `EVENTS` ring buffer drained, the `DROP_AGG`
//! counts reported (the difference since the last report, with the first
//! packet's detail) and idle aggregates removed, and GC's removals turned
//! into flow ends.

use std::collections::HashMap;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    Ebpf,
};
use routing_peer_common::{
    map_names, CtEntry, CtKey, DropAgg, DropKey, EndReason, Event, EventKind, EventStat, Family,
    CT_TCP_CLOSING, CT_TCP_RESET,
};

use crate::datapath::gc::take;

/// `Event::_pad[0]` of an aggregate the daemon reports.
pub const AGGREGATE: u8 = 1;

/// An aggregate idle this long is removed; the next drop like it is
/// reported at once again.
pub const DROP_WINDOW_NS: u64 = 10_000_000_000;

pub struct Reader {
    agg: BpfHashMap<MapData, DropKey, DropAgg>,
    stats: PerCpuArray<MapData, u64>,
    /// Per aggregate, the packets already reported.
    reported: HashMap<DropKey, u64>,
}

impl Reader {
    /// The aggregates and counters, and the ring buffer apart (the
    /// daemon's loop polls it).
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, RingBuf<MapData>), MapError> {
        let agg: BpfHashMap<MapData, DropKey, DropAgg> = take(ebpf, map_names::DROP_AGG)?;
        // Adopted aggregates were reported by the daemon before this one.
        let reported = agg
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.count))
            .collect();
        let reader = Self {
            agg,
            stats: take(ebpf, map_names::EVENT_STATS)?,
            reported,
        };
        Ok((reader, take(ebpf, map_names::EVENTS)?))
    }

    /// Every event the ring buffer holds now.
    pub fn drain<T: std::borrow::Borrow<MapData>>(ring: &mut RingBuf<T>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the kernel wrote a whole `Event` (plain data);
                // read unaligned, as the ring gives no alignment promise here.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
            }
        }
        out
    }

    /// Drops counted since the last report, as events; idle aggregates
    /// (all reported) are removed.
    pub fn flush_drops(&mut self, mono_now: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for (key, agg) in self.agg.iter().filter_map(Result::ok) {
            // The kernel reported the first packet itself.
            let done = self.reported.entry(key).or_insert(1);
            if agg.count > *done {
                out.push(Event {
                    count: (agg.count - *done).min(u64::from(u32::MAX)) as u32,
                    time_ns: agg.last_ns,
                    // Marks an aggregate (user space only; the kernel leaves it 0).
                    _pad: [AGGREGATE, 0, 0, 0],
                    ..agg.first
                });
                *done = agg.count;
            } else if mono_now.saturating_sub(agg.last_ns) > DROP_WINDOW_NS {
                idle.push(key);
            }
        }
        for key in idle {
            let _ = self.agg.remove(&key);
            self.reported.remove(&key);
        }
        out
    }

    /// The kernel's event counters, summed over CPUs (`EventStat` order).
    pub fn stats(&self) -> [u64; EventStat::COUNT as usize] {
        let mut out = [0; EventStat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.stats.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

/// The flow an event is about, as conntrack keys it.
pub fn flow_key(ev: &Event) -> CtKey {
    CtKey::new(
        Family::from_tag(u32::from(ev.family)),
        ev.proto,
        (ev.src, ev.sport),
        (ev.dst, ev.dport),
    )
}

/// A flow GC removed (or found gone: `evicted`), as its end.
pub fn gc_end(key: &CtKey, entry: &CtEntry, mono_now: u64, evicted: bool) -> Event {
    let reason = match entry.state {
        _ if evicted => EndReason::Evicted,
        CT_TCP_CLOSING => EndReason::Close,
        CT_TCP_RESET => EndReason::Reset,
        _ => EndReason::Timeout,
    };
    Event {
        time_ns: mono_now,
        first_seen_ns: entry.first_seen_ns,
        forward: entry.forward,
        reply: entry.reply,
        src: key.peer,
        dst: key.remote,
        nat_addr: entry.nat_addr,
        peer_id: entry.peer_id,
        resource_id: entry.resource_id,
        rule_id: entry.rule_id,
        sport: key.peer_port,
        dport: key.remote_port,
        nat_port: entry.nat_port,
        kind: EventKind::End as u8,
        reason: reason as u8,
        family: key.family,
        proto: key.proto,
        tcp_flags: entry.tcp_flags_forward,
        ..Default::default()
    }
}
