//! Conntrack garbage collection, in the agent as Cilium does it: expired
//! flows are deleted, and NAT mappings no live flow uses are deleted with
//! both halves together.

use std::collections::HashSet;

use aya::{
    maps::{HashMap as BpfHashMap, MapError},
    Ebpf,
};
use routing_peer_common::{
    map_names, CtEntry, CtKey, DatapathConfig, NatEndpoint, CT_FLAG_MASQUERADE,
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub flows_live: usize,
    pub flows_expired: usize,
    pub nat_removed: usize,
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

/// One GC pass. A NAT mapping is removed only when it was unused in the
/// previous pass too (`unused_before`), so a mapping created between our
/// conntrack scan and our NAT scan is never taken from a new flow.
pub fn collect(
    ebpf: &mut Ebpf,
    config: &DatapathConfig,
    unused_before: &mut HashSet<NatEndpoint>,
) -> Result<GcStats, MapError> {
    let now = monotonic_ns();
    let mut stats = GcStats::default();
    let mut expired = Vec::new();
    let mut in_use = HashSet::new();
    {
        let map = ebpf
            .map_mut(map_names::CONNTRACK)
            .ok_or(MapError::InvalidName {
                name: map_names::CONNTRACK.into(),
            })?;
        let ct = BpfHashMap::<_, CtKey, CtEntry>::try_from(map)?;
        for item in ct.iter() {
            let Ok((key, entry)) = item else { continue };
            if now.saturating_sub(entry.last_seen_ns) > config.timeout_ns(entry.state) {
                expired.push(key);
            } else {
                stats.flows_live += 1;
                if entry.flags & CT_FLAG_MASQUERADE != 0 {
                    in_use.insert((key.peer, key.peer_port, key.proto));
                }
            }
        }
    }
    {
        let map = ebpf
            .map_mut(map_names::CONNTRACK)
            .ok_or(missing(map_names::CONNTRACK))?;
        let mut ct = BpfHashMap::<_, CtKey, CtEntry>::try_from(map)?;
        for key in &expired {
            // A packet may have refreshed it meanwhile; gone is fine too.
            if let Ok(entry) = ct.get(key, 0) {
                if now.saturating_sub(entry.last_seen_ns) > config.timeout_ns(entry.state) {
                    let _ = ct.remove(key);
                    stats.flows_expired += 1;
                }
            }
        }
    }
    if stats.flows_expired > 0 {
        // Counted so that LRU evictions can be derived (see `CtEvent`).
        let map = ebpf
            .map_mut(map_names::CT_GC)
            .ok_or(missing(map_names::CT_GC))?;
        let mut gc = aya::maps::Array::<_, u64>::try_from(map)?;
        let before = gc.get(&0, 0)?;
        gc.set(0, before + stats.flows_expired as u64, 0)?;
    }
    let unused: Vec<(NatEndpoint, NatEndpoint)> = {
        let map = ebpf
            .map(map_names::NAT_FWD)
            .ok_or(missing(map_names::NAT_FWD))?;
        let fwd = BpfHashMap::<_, NatEndpoint, NatEndpoint>::try_from(map)?;
        fwd.iter()
            .filter_map(Result::ok)
            .filter(|(peer, _)| !in_use.contains(&(peer.addr, peer.port, peer.proto)))
            .collect()
    };
    let previous = std::mem::replace(
        unused_before,
        unused.iter().map(|(peer, _)| *peer).collect(),
    );
    for (peer, external) in unused.into_iter().filter(|(p, _)| previous.contains(p)) {
        let fwd_map = ebpf
            .map_mut(map_names::NAT_FWD)
            .ok_or(missing(map_names::NAT_FWD))?;
        let _ = BpfHashMap::<_, NatEndpoint, NatEndpoint>::try_from(fwd_map)?.remove(&peer);
        let rev_map = ebpf
            .map_mut(map_names::NAT_REV)
            .ok_or(missing(map_names::NAT_REV))?;
        let _ = BpfHashMap::<_, NatEndpoint, NatEndpoint>::try_from(rev_map)?.remove(&external);
        stats.nat_removed += 1;
    }
    Ok(stats)
}

fn missing(name: &str) -> MapError {
    MapError::InvalidName {
        name: name.to_string(),
    }
}
