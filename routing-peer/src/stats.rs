//! Reading the per-CPU counters, from a live `Ebpf` or from the pins.

use aya::maps::{Map, MapData, PerCpuArray};
use routing_peer_common::{map_names, CtEvent, DropReason, Handoff, Hook, PacketCounter};
use serde::Serialize;

use crate::datapath::PinDir;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no routing-peer state at {0}: is the daemon running for this instance?")]
    NotRunning(String),
}

/// Totals summed over all CPUs.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub hooks: Vec<NamedCounter>,
    pub drops: Vec<NamedCounter>,
    /// Packets handed to the kernel, by reason.
    pub handoffs: Vec<NamedCounter>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NamedCounter {
    pub name: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl Snapshot {
    pub fn hook(&self, hook: Hook) -> &NamedCounter {
        &self.hooks[hook as usize]
    }

    pub fn drop(&self, reason: DropReason) -> &NamedCounter {
        &self.drops[reason as usize]
    }

    pub fn handoff(&self, reason: Handoff) -> &NamedCounter {
        &self.handoffs[reason as usize]
    }
}

/// Sums each slot of a per-CPU array over all CPUs.
pub fn sum_per_cpu<M: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<M, PacketCounter>,
    name: &'static str,
    slots: u32,
) -> Result<Vec<PacketCounter>, StatsError> {
    (0..slots)
        .map(|index| {
            let per_cpu = array
                .get(&index, 0)
                .map_err(|source| StatsError::Map { name, source })?;
            let mut total = PacketCounter::default();
            per_cpu.iter().for_each(|c| total.add(c));
            Ok(total)
        })
        .collect()
}

fn named<T: Copy>(
    items: &[T],
    counters: Vec<PacketCounter>,
    name: impl Fn(T) -> &'static str,
) -> Vec<NamedCounter> {
    items
        .iter()
        .zip(counters)
        .map(|(item, c)| NamedCounter {
            name: name(*item),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect()
}

fn per_cpu_array<'m>(
    map: &'m Map,
    name: &'static str,
) -> Result<PerCpuArray<&'m MapData, PacketCounter>, StatsError> {
    PerCpuArray::try_from(map).map_err(|source| StatsError::Map { name, source })
}

/// Reads the counters from the maps of a loaded object.
pub fn read_loaded(ebpf: &aya::Ebpf) -> Result<Snapshot, StatsError> {
    let hooks = ebpf
        .map(map_names::HOOK_STATS)
        .ok_or(StatsError::NotRunning(map_names::HOOK_STATS.into()))?;
    let drops = ebpf
        .map(map_names::DROP_STATS)
        .ok_or(StatsError::NotRunning(map_names::DROP_STATS.into()))?;
    let handoffs = ebpf
        .map(map_names::HANDOFF_STATS)
        .ok_or(StatsError::NotRunning(map_names::HANDOFF_STATS.into()))?;
    snapshot(
        &per_cpu_array(hooks, map_names::HOOK_STATS)?,
        &per_cpu_array(drops, map_names::DROP_STATS)?,
        &per_cpu_array(handoffs, map_names::HANDOFF_STATS)?,
    )
}

/// Reads the counters from the pinned maps, whether or not a daemon runs.
pub fn read_pinned(pins: &PinDir) -> Result<Snapshot, StatsError> {
    let open = |name: &'static str| {
        let path = pins.map(name);
        let data = MapData::from_pin(&path)
            .map_err(|_| StatsError::NotRunning(pins.root().display().to_string()))?;
        PerCpuArray::<MapData, PacketCounter>::try_from(Map::PerCpuArray(data))
            .map_err(|source| StatsError::Map { name, source })
    };
    snapshot(
        &open(map_names::HOOK_STATS)?,
        &open(map_names::DROP_STATS)?,
        &open(map_names::HANDOFF_STATS)?,
    )
}

fn snapshot<M: std::borrow::Borrow<MapData>>(
    hooks: &PerCpuArray<M, PacketCounter>,
    drops: &PerCpuArray<M, PacketCounter>,
    handoffs: &PerCpuArray<M, PacketCounter>,
) -> Result<Snapshot, StatsError> {
    Ok(Snapshot {
        hooks: named(
            &Hook::ALL,
            sum_per_cpu(hooks, map_names::HOOK_STATS, Hook::COUNT)?,
            Hook::name,
        ),
        drops: named(
            &DropReason::ALL,
            sum_per_cpu(drops, map_names::DROP_STATS, DropReason::COUNT)?,
            DropReason::name,
        ),
        handoffs: named(
            &Handoff::ALL,
            sum_per_cpu(handoffs, map_names::HANDOFF_STATS, Handoff::COUNT)?,
            Handoff::name,
        ),
    })
}

/// Conntrack bookkeeping: the kernel counts inserts and removals, the GC its
/// deletions; LRU evictions, which the kernel does not report, are what is
/// left once the live entries are accounted for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CtAccounting {
    pub inserts: u64,
    pub removals: u64,
    pub gc_deletions: u64,
    pub evictions: u64,
}

pub fn ct_accounting(
    events: &Map,
    gc: &Map,
    live_entries: u64,
) -> Result<CtAccounting, StatsError> {
    let events =
        PerCpuArray::<&MapData, u64>::try_from(events).map_err(|source| StatsError::Map {
            name: map_names::CT_EVENTS,
            source,
        })?;
    let sum = |index: u32| -> Result<u64, StatsError> {
        Ok(events
            .get(&index, 0)
            .map_err(|source| StatsError::Map {
                name: map_names::CT_EVENTS,
                source,
            })?
            .iter()
            .sum())
    };
    let gc = aya::maps::Array::<&MapData, u64>::try_from(gc)
        .and_then(|a| a.get(&0, 0))
        .map_err(|source| StatsError::Map {
            name: map_names::CT_GC,
            source,
        })?;
    let (inserts, removals) = (
        sum(CtEvent::Inserts as u32)?,
        sum(CtEvent::Removals as u32)?,
    );
    Ok(CtAccounting {
        inserts,
        removals,
        gc_deletions: gc,
        evictions: inserts.saturating_sub(removals + gc + live_entries),
    })
}
