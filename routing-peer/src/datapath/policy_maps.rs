//! The policy the data path enforces, double-buffered, as typed map
//! handles taken once after load.
//!
//! The peer, destination, policy and masquerade maps exist twice. An update
//! goes into the copy no packet reads, then one write to `CONFIG` flips
//! `active_slot` and bumps `policy_gen`; packets see either the whole old
//! policy or the whole new one. Then the old copy is brought up to date, so
//! between updates both copies are equal. Each write is a diff: a one-rule
//! change touches only the entries it changes.

use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError},
    Ebpf,
};
use routing_peer_common::{
    map_names, AddrKey, DatapathConfig, DestValue, MasqKey, PeerValue, PolicyKey, PolicyValue,
    CONFIG_LAN_XDP, POLICY_PREFIX_EXACT,
};

use super::gc::take;
use crate::model::{DestPrefix, DiffStats, PolicyPrefix, Tables, TablesDiff};

/// One copy of the policy.
struct Slot {
    peers: BpfHashMap<MapData, AddrKey, PeerValue>,
    dests: LpmTrie<MapData, AddrKey, DestValue>,
    /// The policy's shorter prefixes (port ranges, "any protocol").
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// The policy's full-length entries, which the data path looks up first.
    exact: BpfHashMap<MapData, PolicyKey, PolicyValue>,
    masq: BpfHashMap<MapData, MasqKey, u32>,
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl Slot {
    fn take(ebpf: &mut Ebpf, slot: usize) -> Result<Self, MapError> {
        Ok(Self {
            peers: take(ebpf, map_names::PEERS[slot])?,
            dests: take(ebpf, map_names::DESTS[slot])?,
            policy: take(ebpf, map_names::POLICY[slot])?,
            exact: take(ebpf, map_names::POLICY_EXACT[slot])?,
            masq: take(ebpf, map_names::MASQ[slot])?,
        })
    }

    /// Writes `diff`. Removals go last so that a prefix being replaced by a
    /// shorter one never leaves a gap.
    fn write(&mut self, diff: &TablesDiff) -> Result<(), MapError> {
        for (k, v) in &diff.peers.upserts {
            self.peers.insert(k, v, 0)?;
        }
        for (k, v) in &diff.dests.upserts {
            self.dests.insert(&Key::new(k.prefix_len, k.key), v, 0)?;
        }
        for (k, v) in &diff.policy.upserts {
            if k.prefix_len == POLICY_PREFIX_EXACT {
                self.exact.insert(k.key, v, 0)?;
            } else {
                self.policy.insert(&Key::new(k.prefix_len, k.key), v, 0)?;
            }
        }
        for (k, v) in &diff.masq.upserts {
            self.masq.insert(k, v, 0)?;
        }
        for k in &diff.peers.removals {
            ignore_missing(self.peers.remove(k))?;
        }
        for k in &diff.dests.removals {
            ignore_missing(self.dests.remove(&Key::new(k.prefix_len, k.key)))?;
        }
        for k in &diff.policy.removals {
            if k.prefix_len == POLICY_PREFIX_EXACT {
                ignore_missing(self.exact.remove(&k.key))?;
            } else {
                ignore_missing(self.policy.remove(&Key::new(k.prefix_len, k.key)))?;
            }
        }
        for k in &diff.masq.removals {
            ignore_missing(self.masq.remove(k))?;
        }
        Ok(())
    }

    /// What this copy holds, for a restarted daemon adopting pinned maps.
    fn read(&self) -> Result<Tables, MapError> {
        let mut tables = Tables::default();
        for entry in self.peers.iter() {
            let (k, v) = entry?;
            tables.peers.insert(k, v);
        }
        for entry in self.dests.iter() {
            let (k, v) = entry?;
            let prefix = DestPrefix {
                key: k.data(),
                prefix_len: k.prefix_len(),
            };
            tables.dests.insert(prefix, v);
        }
        for entry in self.policy.iter() {
            let (k, v) = entry?;
            let prefix = PolicyPrefix {
                key: k.data(),
                prefix_len: k.prefix_len(),
            };
            tables.policy.insert(prefix, v);
        }
        for entry in self.exact.iter() {
            let (key, v) = entry?;
            let prefix = PolicyPrefix {
                key,
                prefix_len: POLICY_PREFIX_EXACT,
            };
            tables.policy.insert(prefix, v);
        }
        for entry in self.masq.iter() {
            let (k, v) = entry?;
            tables.masq.insert(k, v);
        }
        Ok(tables)
    }
}

/// The double-buffered policy: both copies, the settings map, and what
/// user space knows they hold. Between updates both copies hold the same
/// tables, so one `installed` describes them.
pub struct PolicyMaps {
    slots: [Slot; 2],
    config_map: Array<MapData, DatapathConfig>,
    pub installed: Tables,
    pub config: DatapathConfig,
}

impl PolicyMaps {
    fn take(ebpf: &mut Ebpf, config: DatapathConfig) -> Result<Self, MapError> {
        Ok(Self {
            slots: [Slot::take(ebpf, 0)?, Slot::take(ebpf, 1)?],
            config_map: take(ebpf, map_names::CONFIG)?,
            installed: Tables::default(),
            config,
        })
    }

    /// Fresh maps: both copies empty, `config` written.
    pub fn init(ebpf: &mut Ebpf, config: DatapathConfig) -> Result<Self, MapError> {
        let mut maps = Self::take(ebpf, config)?;
        maps.write_config()?;
        Ok(maps)
    }

    /// Adopts the state a previous daemon left in pinned maps, so the next
    /// install is again a diff and live flows keep their generation. A
    /// daemon that died mid-update may have left the standby copy behind:
    /// it is brought level with the live one.
    pub fn adopt(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        let mut maps = Self::take(ebpf, DatapathConfig::default())?;
        maps.config = maps.config_map.get(&0, 0)?;
        let live = maps.config.active_slot as usize & 1;
        maps.installed = maps.slots[live].read()?;
        let standby = maps.slots[1 - live].read()?;
        maps.slots[1 - live].write(&TablesDiff::between(&standby, &maps.installed))?;
        Ok(maps)
    }

    fn write_config(&mut self) -> Result<(), MapError> {
        self.config_map.set(0, self.config, 0)
    }

    fn bump_generation(&mut self) {
        self.config.policy_gen = self.config.policy_gen.wrapping_add(1).max(1);
    }

    /// Installs `new` atomically from the packets' point of view.
    pub fn install(&mut self, new: &Tables) -> Result<DiffStats, MapError> {
        self.install_diff(&TablesDiff::between(&self.installed, new))
    }

    /// As `install`, with the diff already known (an in-place recompile).
    pub fn install_diff(&mut self, diff: &TablesDiff) -> Result<DiffStats, MapError> {
        let live = self.config.active_slot as usize & 1;
        let standby = 1 - live;
        self.slots[standby].write(diff)?;
        self.config.active_slot = standby as u32;
        self.bump_generation();
        self.write_config()?;
        // The old copy catches up, so the next update is again a small diff.
        self.slots[live].write(diff)?;
        // Apply the diff rather than copy `new`: a small change stays small.
        diff.apply_to(&mut self.installed);
        Ok(diff.stats())
    }

    /// Changes run-time settings without touching the policy (or the hold).
    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), MapError> {
        self.config = DatapathConfig {
            active_slot: self.config.active_slot,
            policy_gen: self.config.policy_gen,
            hold_ifindex: self.config.hold_ifindex,
            hold_passes: self.config.hold_passes,
            flags: self.config.flags,
            ..config
        };
        self.write_config()
    }

    /// Whether the LAN's XDP program is attached (`CONFIG_LAN_XDP`): TC
    /// counts the LAN hook when it is not.
    pub fn set_lan_xdp(&mut self, attached: bool) -> Result<(), MapError> {
        self.config.flags = if attached {
            self.config.flags | CONFIG_LAN_XDP
        } else {
            self.config.flags & !CONFIG_LAN_XDP
        };
        self.write_config()
    }

    /// Where fragments that came before their first are held, and for how
    /// many passes (see `datapath::hold`).
    pub fn set_hold(&mut self, ifindex: u32, passes: u32) -> Result<(), MapError> {
        self.config.hold_ifindex = ifindex;
        self.config.hold_passes = passes;
        self.write_config()
    }

    /// Adds one destination to both copies (a DNS-resolved address): one
    /// entry, so no generation flip is needed.
    pub fn upsert_dest(&mut self, prefix: DestPrefix, value: DestValue) -> Result<(), MapError> {
        for slot in &mut self.slots {
            slot.dests
                .insert(&Key::new(prefix.prefix_len, prefix.key), value, 0)?;
        }
        self.installed.dests.insert(prefix, value);
        Ok(())
    }

    fn remove_dest(&mut self, prefix: DestPrefix) -> Result<(), MapError> {
        for slot in &mut self.slots {
            ignore_missing(slot.dests.remove(&Key::new(prefix.prefix_len, prefix.key)))?;
        }
        self.installed.dests.remove(&prefix);
        Ok(())
    }

    /// Removes expired destinations (DNS-resolved addresses), then bumps
    /// the generation once: every flow re-checks itself, and one whose
    /// grant expired with its address is cut, as a policy change would.
    pub fn expire_dests(&mut self, prefixes: &[DestPrefix]) -> Result<(), MapError> {
        for prefix in prefixes {
            self.remove_dest(*prefix)?;
        }
        if !prefixes.is_empty() {
            self.bump_generation();
            self.write_config()?;
        }
        Ok(())
    }
}
