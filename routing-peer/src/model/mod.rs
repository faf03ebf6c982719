//! The data the compiler produces and the data path consumes: map contents
//! as user space holds them (`Tables`), the diff between two versions, and
//! the kernel's lookups mirrored for `policy check`. No I/O here: the
//! `datapath` layer writes these into maps, `compile` builds them, the CLI
//! reads them.

use std::{hash::Hash, net::IpAddr};

use ipnet::IpNet;
use routing_peer_common::{AddrKey, DestValue, Family, MasqKey, PeerValue, PolicyKey, PolicyValue};

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
pub struct MapDiff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
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
    pub peers: MapDiff<AddrKey, PeerValue>,
    pub dests: MapDiff<DestPrefix, DestValue>,
    pub policy: MapDiff<PolicyPrefix, PolicyValue>,
    pub masq: MapDiff<MasqKey, u32>,
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
        src_class: [bytes[0], bytes[1], bytes[2], bytes[3]],
        dst_class: [bytes[4], bytes[5], bytes[6], bytes[7]],
        proto: bytes[8],
        port: [bytes[9], bytes[10]],
        _pad: 0,
    }
}
