//! The policy the data path enforces, as map contents, and the diff-based,
//! double-buffered way it reaches the kernel.
//!
//! The peer, destination and policy maps exist twice. An update goes into
//! the copy no packet reads, then one write to `CONFIG` flips `active_slot`
//! and bumps `policy_gen`; packets see either the whole old policy or the
//! whole new one. Then the old copy is brought up to date, so between
//! updates both copies are equal. Each write is a diff: a one-rule
//! change touches only the entries it changes.

use std::{hash::Hash, net::IpAddr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError},
    Ebpf, Pod,
};
use ipnet::IpNet;
use routing_peer_common::{
    map_names, AddrKey, DatapathConfig, DestValue, Family, MasqKey, PeerValue, PolicyKey,
    PolicyValue,
};

/// An address as the data path keys it (network byte order words).
pub fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(v4) => AddrKey {
            family: Family::V4 as u32,
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        },
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            AddrKey {
                family: Family::V6 as u32,
                addr: [word(0), word(4), word(8), word(12)],
            }
        }
    }
}

pub fn addr_from_key(family: Family, addr: [u32; 4]) -> IpAddr {
    if family == Family::V6 {
        let mut o = [0u8; 16];
        for (i, w) in addr.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    } else {
        IpAddr::from(addr[0].to_ne_bytes())
    }
}

/// A destination prefix: LPM data plus its prefix length (32 family bits + the net's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestPrefix {
    pub key: AddrKey,
    pub prefix_len: u32,
}

impl DestPrefix {
    pub fn new(net: IpNet) -> Self {
        Self {
            key: addr_key(net.network()),
            prefix_len: 32 + u32::from(net.prefix_len()),
        }
    }
}

/// A policy prefix: classes, then protocol and port bits as far as matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyPrefix {
    pub key: PolicyKey,
    pub prefix_len: u32,
}

/// Everything the compiler produces for the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub peers: FastMap<AddrKey, PeerValue>,
    pub dests: FastMap<DestPrefix, DestValue>,
    pub policy: FastMap<PolicyPrefix, PolicyValue>,
    /// Masquerade by granting rule, for nested prefixes whose resources
    /// disagree on it (`DEST_MASQ_BY_RULE`); 1 masquerades.
    pub masq: FastMap<MasqKey, u32>,
}

/// Keys here are our own fixed-size integers, not attacker-chosen input:
/// foldhash is safe here and halves the compile time against SipHash at
/// 100k entries (FxHash clusters on these keys and is slower still).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    pub written: usize,
    pub removed: usize,
}

impl std::ops::AddAssign for DiffStats {
    fn add_assign(&mut self, o: Self) {
        self.written += o.written;
        self.removed += o.removed;
    }
}

/// What one map needs to reach its new contents.
#[derive(Debug)]
struct MapDiff<K, V> {
    upserts: Vec<(K, V)>,
    removals: Vec<K>,
}

impl<K: Copy + Eq + Hash, V: Copy + PartialEq> MapDiff<K, V> {
    /// Entries of `new` that differ from `old`, and keys of `old` gone from `new`.
    fn between(old: &FastMap<K, V>, new: &FastMap<K, V>) -> Self {
        Self {
            upserts: new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, v)| (*k, *v))
                .collect(),
            removals: old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .copied()
                .collect(),
        }
    }

    fn apply_to(&self, map: &mut FastMap<K, V>) {
        for k in &self.removals {
            map.remove(k);
        }
        map.extend(self.upserts.iter().copied());
    }

    fn stats(&self) -> DiffStats {
        DiffStats {
            written: self.upserts.len(),
            removed: self.removals.len(),
        }
    }

    /// From the final value of each changed key (`None`: removed).
    fn from_changes(changes: FastMap<K, Option<V>>) -> Self {
        let mut diff = Self {
            upserts: Vec::new(),
            removals: Vec::new(),
        };
        for (k, v) in changes {
            match v {
                Some(v) => diff.upserts.push((k, v)),
                None => diff.removals.push(k),
            }
        }
        diff
    }
}

/// The changes from one set of tables to another, computed once and
/// written to each slot.
#[derive(Debug)]
pub struct TablesDiff {
    peers: MapDiff<AddrKey, PeerValue>,
    dests: MapDiff<DestPrefix, DestValue>,
    policy: MapDiff<PolicyPrefix, PolicyValue>,
    masq: MapDiff<MasqKey, u32>,
}

impl TablesDiff {
    pub fn between(old: &Tables, new: &Tables) -> Self {
        Self {
            peers: MapDiff::between(&old.peers, &new.peers),
            dests: MapDiff::between(&old.dests, &new.dests),
            policy: MapDiff::between(&old.policy, &new.policy),
            masq: MapDiff::between(&old.masq, &new.masq),
        }
    }

    pub fn stats(&self) -> DiffStats {
        let mut stats = self.peers.stats();
        stats += self.dests.stats();
        stats += self.policy.stats();
        stats += self.masq.stats();
        stats
    }

    pub(crate) fn apply_to(&self, tables: &mut Tables) {
        self.peers.apply_to(&mut tables.peers);
        self.dests.apply_to(&mut tables.dests);
        self.policy.apply_to(&mut tables.policy);
        self.masq.apply_to(&mut tables.masq);
    }
}

/// The final value of every key a change touched (`None`: removed), as an
/// in-place update of the compiled tables records them.
#[derive(Debug, Default)]
pub struct TableChanges {
    pub peers: FastMap<AddrKey, Option<PeerValue>>,
    pub dests: FastMap<DestPrefix, Option<DestValue>>,
    pub policy: FastMap<PolicyPrefix, Option<PolicyValue>>,
}

impl From<TableChanges> for TablesDiff {
    fn from(changes: TableChanges) -> Self {
        Self {
            peers: MapDiff::from_changes(changes.peers),
            dests: MapDiff::from_changes(changes.dests),
            policy: MapDiff::from_changes(changes.policy),
            // In-place updates never touch nested prefixes (full compile).
            masq: MapDiff::from_changes(FastMap::default()),
        }
    }
}

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

/// The kernel's lookups, mirrored in user space for `policy check`.
impl Tables {
    pub fn peer(&self, addr: IpAddr) -> Option<PeerValue> {
        self.peers.get(&addr_key(addr)).copied()
    }

    /// Longest-prefix match, as the DESTS LPM trie does.
    pub fn dest(&self, addr: IpAddr) -> Option<(IpNet, DestValue)> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            self.dests.get(&DestPrefix::new(net)).map(|v| (net, *v))
        })
    }

    /// Longest-prefix match over (classes, proto, port), as the POLICY trie does.
    pub fn decide(
        &self,
        src_class: u32,
        dst_class: u32,
        proto: u8,
        port: u16,
    ) -> Option<PolicyValue> {
        let exact = PolicyKey::new(src_class, dst_class, proto, port);
        (routing_peer_common::POLICY_PREFIX_ANY_PROTO..=routing_peer_common::POLICY_PREFIX_EXACT)
            .rev()
            .find_map(|len| {
                let key = mask_policy_key(&exact, len);
                self.policy
                    .get(&PolicyPrefix {
                        key,
                        prefix_len: len,
                    })
                    .copied()
            })
    }
}

/// Zeroes the bits of `key` past `prefix_len`, the way entries are stored.
fn mask_policy_key(key: &PolicyKey, prefix_len: u32) -> PolicyKey {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&key.src_class);
    bytes[4..8].copy_from_slice(&key.dst_class);
    bytes[8] = key.proto;
    bytes[9..11].copy_from_slice(&key.port);
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = (i * 8) as u32;
        if start >= prefix_len {
            *b = 0;
        } else if start + 8 > prefix_len {
            *b &= 0xffu8 << (8 - (prefix_len - start));
        }
    }
    PolicyKey {
        src_class: bytes[0..4].try_into().unwrap(),
        dst_class: bytes[4..8].try_into().unwrap(),
        proto: bytes[8],
        port: [bytes[9], bytes[10]],
        _pad: 0,
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
