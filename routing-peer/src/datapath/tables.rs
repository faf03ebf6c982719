//! The policy the data path enforces, as map contents, and the diff-based,
//! double-buffered way it reaches the kernel.
//!
//! The peer, destination and policy maps exist twice. An update goes into
//! the copy no packet reads, then one write to `CONFIG` flips `active_slot`
//! and bumps `policy_gen`; packets see either the whole old policy or the
//! whole new one. Then the old copy is brought up to date, so between
//! updates both copies are equal. Each write is a diff: a one-rule
//! change touches only the entries it changes.

use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError},
    Ebpf, Pod,
};
use routing_peer_common::{
    map_names, AddrKey, DatapathConfig, DestValue, MasqKey, PeerValue, PolicyKey, PolicyValue,
};

pub use crate::model::{
    addr_from_key, addr_key, DestPrefix, DiffStats, FastMap, PolicyPrefix, TableChanges, Tables,
    TablesDiff,
};

fn hash_map<'m, K: Pod, V: Pod>(
    ebpf: &'m mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<&'m mut MapData, K, V>, MapError> {
    let map = ebpf.map_mut(name).ok_or(MapError::InvalidName {
        name: name.to_string(),
    })?;
    BpfHashMap::try_from(map)
}

fn lpm_map<'m, K: Pod, V: Pod>(
    ebpf: &'m mut Ebpf,
    name: &str,
) -> Result<LpmTrie<&'m mut MapData, K, V>, MapError> {
    let map = ebpf.map_mut(name).ok_or(MapError::InvalidName {
        name: name.to_string(),
    })?;
    LpmTrie::try_from(map)
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Brings slot `slot` from `old` to `new`. Removals go last so that a
/// prefix being replaced by a shorter one never leaves a gap.
/// Writes `diff` into the maps of `slot`.
pub fn write_slot(ebpf: &mut Ebpf, slot: usize, diff: &TablesDiff) -> Result<(), MapError> {
    let mut peers = hash_map::<AddrKey, PeerValue>(ebpf, map_names::PEERS[slot])?;
    for (k, v) in &diff.peers.upserts {
        peers.insert(k, v, 0)?;
    }
    for k in &diff.peers.removals {
        ignore_missing(peers.remove(k))?;
    }
    let mut dests = lpm_map::<AddrKey, DestValue>(ebpf, map_names::DESTS[slot])?;
    for (k, v) in &diff.dests.upserts {
        dests.insert(&Key::new(k.prefix_len, k.key), v, 0)?;
    }
    for k in &diff.dests.removals {
        ignore_missing(dests.remove(&Key::new(k.prefix_len, k.key)))?;
    }
    let mut policy = lpm_map::<PolicyKey, PolicyValue>(ebpf, map_names::POLICY[slot])?;
    for (k, v) in &diff.policy.upserts {
        policy.insert(&Key::new(k.prefix_len, k.key), v, 0)?;
    }
    for k in &diff.policy.removals {
        ignore_missing(policy.remove(&Key::new(k.prefix_len, k.key)))?;
    }
    let mut masq = hash_map::<MasqKey, u32>(ebpf, map_names::MASQ[slot])?;
    for (k, v) in &diff.masq.upserts {
        masq.insert(k, v, 0)?;
    }
    for k in &diff.masq.removals {
        ignore_missing(masq.remove(k))?;
    }
    Ok(())
}

pub fn read_config(ebpf: &mut Ebpf) -> Result<DatapathConfig, MapError> {
    let map = ebpf
        .map_mut(map_names::CONFIG)
        .ok_or(MapError::InvalidName {
            name: map_names::CONFIG.into(),
        })?;
    Array::<_, DatapathConfig>::try_from(map)?.get(&0, 0)
}

pub fn write_config(ebpf: &mut Ebpf, config: &DatapathConfig) -> Result<(), MapError> {
    let map = ebpf
        .map_mut(map_names::CONFIG)
        .ok_or(MapError::InvalidName {
            name: map_names::CONFIG.into(),
        })?;
    Array::<_, DatapathConfig>::try_from(map)?.set(0, config, 0)
}

/// The data path's policy state as user space tracks it. Between updates
/// both slots hold the same tables, so one copy describes them.
pub struct PolicyState {
    pub installed: Tables,
    pub config: DatapathConfig,
}

impl PolicyState {
    /// Fresh maps: both slots empty, defaults written.
    pub fn init(ebpf: &mut Ebpf, config: DatapathConfig) -> Result<Self, MapError> {
        write_config(ebpf, &config)?;
        Ok(Self {
            installed: Tables::default(),
            config,
        })
    }

    /// Installs `new` atomically from the packets' point of view.
    pub fn install(&mut self, ebpf: &mut Ebpf, new: &Tables) -> Result<DiffStats, MapError> {
        self.install_diff(ebpf, &TablesDiff::between(&self.installed, new))
    }

    /// As `install`, with the diff already known (an in-place recompile).
    pub fn install_diff(
        &mut self,
        ebpf: &mut Ebpf,
        diff: &TablesDiff,
    ) -> Result<DiffStats, MapError> {
        let live = self.config.active_slot as usize;
        let standby = 1 - live;
        write_slot(ebpf, standby, diff)?;
        self.config.active_slot = standby as u32;
        self.config.policy_gen = self.config.policy_gen.wrapping_add(1).max(1);
        write_config(ebpf, &self.config)?;
        // The old copy catches up, so the next update is again a small diff.
        write_slot(ebpf, live, diff)?;
        // Apply the diff rather than copy `new`: a small change stays small.
        diff.apply_to(&mut self.installed);
        Ok(diff.stats())
    }

    /// Changes run-time settings without touching the policy.
    pub fn set_config(&mut self, ebpf: &mut Ebpf, config: DatapathConfig) -> Result<(), MapError> {
        self.config = DatapathConfig {
            active_slot: self.config.active_slot,
            policy_gen: self.config.policy_gen,
            ..config
        };
        write_config(ebpf, &self.config)
    }
}

/// Reads what slot `slot` holds, for a restarted daemon adopting pinned maps.
pub fn read_slot(ebpf: &mut Ebpf, slot: usize) -> Result<Tables, MapError> {
    let mut tables = Tables::default();
    let peers = hash_map::<AddrKey, PeerValue>(ebpf, map_names::PEERS[slot])?;
    for entry in peers.iter() {
        let (k, v) = entry?;
        tables.peers.insert(k, v);
    }
    let dests = lpm_map::<AddrKey, DestValue>(ebpf, map_names::DESTS[slot])?;
    for entry in dests.iter() {
        let (k, v) = entry?;
        tables.dests.insert(
            DestPrefix {
                key: k.data(),
                prefix_len: k.prefix_len(),
            },
            v,
        );
    }
    let policy = lpm_map::<PolicyKey, PolicyValue>(ebpf, map_names::POLICY[slot])?;
    for entry in policy.iter() {
        let (k, v) = entry?;
        tables.policy.insert(
            PolicyPrefix {
                key: k.data(),
                prefix_len: k.prefix_len(),
            },
            v,
        );
    }
    let masq = hash_map::<MasqKey, u32>(ebpf, map_names::MASQ[slot])?;
    for entry in masq.iter() {
        let (k, v) = entry?;
        tables.masq.insert(k, v);
    }
    Ok(tables)
}

impl PolicyState {
    /// Adopts the state a previous daemon left in pinned maps, so the next
    /// install is again a diff and live flows keep their generation. A
    /// daemon that died mid-update may have left the standby slot behind:
    /// it is brought level with the live one.
    pub fn adopt(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        let config = read_config(ebpf)?;
        let live = config.active_slot as usize;
        let installed = read_slot(ebpf, live)?;
        let standby = read_slot(ebpf, 1 - live)?;
        write_slot(ebpf, 1 - live, &TablesDiff::between(&standby, &installed))?;
        Ok(Self { installed, config })
    }
}

impl PolicyState {
    /// Adds one destination to both slots (a DNS-resolved address): one
    /// entry, so no generation flip is needed.
    pub fn upsert_dest(
        &mut self,
        ebpf: &mut Ebpf,
        prefix: DestPrefix,
        value: DestValue,
    ) -> Result<(), MapError> {
        for name in map_names::DESTS {
            let mut dests = lpm_map::<AddrKey, DestValue>(ebpf, name)?;
            dests.insert(&Key::new(prefix.prefix_len, prefix.key), value, 0)?;
        }
        self.installed.dests.insert(prefix, value);
        Ok(())
    }

    pub fn remove_dest(&mut self, ebpf: &mut Ebpf, prefix: DestPrefix) -> Result<(), MapError> {
        for name in map_names::DESTS {
            let mut dests = lpm_map::<AddrKey, DestValue>(ebpf, name)?;
            ignore_missing(dests.remove(&Key::new(prefix.prefix_len, prefix.key)))?;
        }
        self.installed.dests.remove(&prefix);
        Ok(())
    }

    /// Removes expired destinations (DNS-resolved addresses), then bumps
    /// the generation once: every flow re-checks itself, and one whose
    /// grant expired with its address is cut, as a policy change would.
    pub fn expire_dests(
        &mut self,
        ebpf: &mut Ebpf,
        prefixes: &[DestPrefix],
    ) -> Result<(), MapError> {
        for prefix in prefixes {
            self.remove_dest(ebpf, *prefix)?;
        }
        if !prefixes.is_empty() {
            self.config.policy_gen = self.config.policy_gen.wrapping_add(1).max(1);
            write_config(ebpf, &self.config)?;
        }
        Ok(())
    }
}
