//! Conntrack garbage collection, in the agent as Cilium does it: expired
//! flows are deleted, and NAT mappings no live flow uses are deleted with
//! both halves together.

use std::collections::HashSet;

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError},
    Ebpf,
};
use routing_peer_common::{
    map_names, CtEntry, CtKey, DatapathConfig, NatEndpoint, CT_FLAG_MASQUERADE,
};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub flows_live: usize,
    pub flows_expired: usize,
    pub nat_removed: usize,
    /// The flows removed, as they were: their ends.
    pub ended: Vec<(CtKey, CtEntry)>,
    /// Flows the last pass saw that are gone now without GC removing
    /// them (the kernel's LRU evicted them, or the data path removed them),
    /// as the last pass saw them.
    pub vanished: Vec<(CtKey, CtEntry)>,
}

/// CLOCK_MONOTONIC, the clock bpf_ktime_get_ns reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The maps GC reads and trims, taken once after load.
pub struct GcMaps {
    conntrack: BpfHashMap<MapData, CtKey, CtEntry>,
    ct_gc: Array<MapData, u64>,
    nat_fwd: BpfHashMap<MapData, NatEndpoint, NatEndpoint>,
    nat_rev: BpfHashMap<MapData, NatEndpoint, NatEndpoint>,
    /// A NAT mapping is removed only when it was unused in the previous
    /// pass too, so one created between the conntrack scan and the NAT
    /// scan is never taken from a new flow.
    unused_before: HashSet<NatEndpoint>,
    /// The live flows of the last pass, for those that vanish before the next.
    known: std::collections::HashMap<CtKey, CtEntry>,
}

impl GcMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            conntrack: take(ebpf, map_names::CONNTRACK)?,
            ct_gc: take(ebpf, map_names::CT_GC)?,
            nat_fwd: take(ebpf, map_names::NAT_FWD)?,
            nat_rev: take(ebpf, map_names::NAT_REV)?,
            unused_before: HashSet::new(),
            known: Default::default(),
        })
    }

    /// The flows the last pass found live.
    #[cfg(test)]
    pub fn live_keys(&self) -> impl Iterator<Item = &CtKey> {
        self.known.keys()
    }

    /// One GC pass.
    pub fn collect(&mut self, config: &DatapathConfig) -> Result<GcStats, MapError> {
        let now = monotonic_ns();
        let mut stats = GcStats::default();
        let mut expired = Vec::new();
        let mut live = std::collections::HashMap::new();
        let mut in_use = HashSet::new();
        for item in self.conntrack.iter() {
            let Ok((key, entry)) = item else { continue };
            if now.saturating_sub(entry.last_seen_ns) > config.timeout_ns(entry.state) {
                expired.push(key);
            } else {
                live.insert(key, entry);
                stats.flows_live += 1;
                if entry.flags & CT_FLAG_MASQUERADE != 0 {
                    in_use.insert((key.peer, key.peer_port, key.proto));
                }
            }
        }
        for key in &expired {
            // A packet may have refreshed it meanwhile; gone is fine too.
            if let Ok(entry) = self.conntrack.get(key, 0) {
                if now.saturating_sub(entry.last_seen_ns) > config.timeout_ns(entry.state)
                    && self.conntrack.remove(key).is_ok()
                {
                    stats.flows_expired += 1;
                    stats.ended.push((*key, entry));
                }
            }
        }
        let previous = std::mem::replace(&mut self.known, live);
        // Expired ones a packet refreshed meanwhile are not gone either.
        let accounted: HashSet<CtKey> = expired.iter().copied().collect();
        stats.vanished = previous
            .into_iter()
            .filter(|(k, _)| !self.known.contains_key(k) && !accounted.contains(k))
            .collect();
        if stats.flows_expired > 0 {
            // Counted so that LRU evictions can be derived (see `CtEvent`).
            let before = self.ct_gc.get(&0, 0)?;
            self.ct_gc.set(0, before + stats.flows_expired as u64, 0)?;
        }
        let unused: Vec<(NatEndpoint, NatEndpoint)> = self
            .nat_fwd
            .iter()
            .filter_map(Result::ok)
            .filter(|(peer, _)| !in_use.contains(&(peer.addr, peer.port, peer.proto)))
            .collect();
        let previous = std::mem::replace(
            &mut self.unused_before,
            unused.iter().map(|(peer, _)| *peer).collect(),
        );
        for (peer, external) in unused.into_iter().filter(|(p, _)| previous.contains(p)) {
            let _ = self.nat_fwd.remove(&peer);
            let _ = self.nat_rev.remove(&external);
            stats.nat_removed += 1;
        }
        Ok(stats)
    }
}

/// Takes map `name` out of `ebpf` as the typed handle `M`.
pub(crate) fn take<M>(ebpf: &mut Ebpf, name: &str) -> Result<M, MapError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapError::InvalidName {
        name: name.to_string(),
    })?;
    M::try_from(map)
}
