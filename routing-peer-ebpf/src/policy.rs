//! Policy: who is the source, what is the destination, and which rule decides.
//!
//! Three lookups, none of which scans: the source address → peer and its
//! class (hash), the destination → resource and its class (LPM, longest
//! prefix first), and (source class, destination class, proto, port) → rule
//! (LPM, with "any protocol" and port ranges as shorter prefixes). Drop
//! precedence is resolved by the compiler, which never lets an accept be more
//! specific than an overlapping drop. The rule lookup's full-length entries
//! (an exact protocol and port: most rules) live in a hash beside the trie:
//! an exact entry is the longest prefix there is, so the hash answers first
//! and the trie, holding only ranges and "any", stays small whatever the
//! number of rules (a trie walk grew with its size: +26% per denied packet
//! from 10 to 100k rules).
//!
//! Each map has two copies; `DatapathConfig::active_slot` says which one is
//! live, so a packet never sees half of one policy and half of another.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie},
};
use routing_peer_common::{
    AddrKey, DestValue, MasqKey, PeerValue, PolicyKey, PolicyValue, ACTION_ACCEPT, ACTION_DROP,
    DEST_MASQUERADE, DEST_MASQ_BY_RULE, POLICY_PREFIX_EXACT,
};

const MAX_PEERS: u32 = 16384;
const MAX_DESTS: u32 = 262144;
const MAX_POLICY: u32 = 1 << 20;
const MAX_MASQ: u32 = 65536;

// Maps.
/// Overlay address → (peer id, source class), slot 0 of the double buffer.
#[map]
static PEERS_0: HashMap<AddrKey, PeerValue> = HashMap::with_max_entries(MAX_PEERS, 0);
/// Slot 1 of `PEERS_0`.
#[map]
static PEERS_1: HashMap<AddrKey, PeerValue> = HashMap::with_max_entries(MAX_PEERS, 0);
/// Destination prefix → (resource id, destination class, flags), slot 0.
#[map]
static DESTS_0: LpmTrie<AddrKey, DestValue> = LpmTrie::with_max_entries(MAX_DESTS, 0);
/// Slot 1 of `DESTS_0`.
#[map]
static DESTS_1: LpmTrie<AddrKey, DestValue> = LpmTrie::with_max_entries(MAX_DESTS, 0);
/// (source class, destination class, protocol, port) prefix → verdict and rule, slot 0.
#[map]
static POLICY_0: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY, 0);
/// Slot 1 of `POLICY_0`.
#[map]
static POLICY_1: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY, 0);
/// The full-length entries of `POLICY_0` (exact protocol and port), slot 0.
/// Not preallocated: a million entries would pin memory for nothing.
#[map]
static POLICY_EXACT_0: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(MAX_POLICY, BPF_F_NO_PREALLOC);
/// Slot 1 of `POLICY_EXACT_0`.
#[map]
static POLICY_EXACT_1: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(MAX_POLICY, BPF_F_NO_PREALLOC);
/// (most specific resource, granting rule) → masquerade, for nested
/// prefixes whose resources disagree on it (`DEST_MASQ_BY_RULE`).
#[map]
static MASQ_0: HashMap<MasqKey, u32> = HashMap::with_max_entries(MAX_MASQ, 0);
/// Slot 1 of `MASQ_0`.
#[map]
static MASQ_1: HashMap<MasqKey, u32> = HashMap::with_max_entries(MAX_MASQ, 0);

pub enum Verdict {
    Accept(u32),
    /// The drop rule that matched.
    Drop(u32),
    NoMatch,
}

#[inline(always)]
pub fn peer(slot: u32, addr: &AddrKey) -> Option<PeerValue> {
    let map = if slot == 0 { &PEERS_0 } else { &PEERS_1 };
    // SAFETY: the value is copied out before the map can change under us.
    unsafe { map.get(addr).copied() }
}

#[inline(always)]
pub fn dest(slot: u32, addr: &AddrKey) -> Option<DestValue> {
    let map = if slot == 0 { &DESTS_0 } else { &DESTS_1 };
    // 32 bits of family, then the whole address.
    let key = Key::new(32 + 128, *addr);
    map.get(&key).copied()
}

#[inline(always)]
pub fn decide(slot: u32, src_class: u32, dst_class: u32, proto: u8, port: u16) -> Verdict {
    let exact = if slot == 0 {
        &POLICY_EXACT_0
    } else {
        &POLICY_EXACT_1
    };
    let key = PolicyKey::new(src_class, dst_class, proto, port);
    // SAFETY: the value is copied out at once.
    let found = match unsafe { exact.get(key).copied() } {
        Some(v) => Some(v),
        None => {
            let trie = if slot == 0 { &POLICY_0 } else { &POLICY_1 };
            trie.get(Key::new(POLICY_PREFIX_EXACT, key)).copied()
        }
    };
    match found {
        Some(v) if v.action == ACTION_ACCEPT => Verdict::Accept(v.rule_id),
        Some(v) if v.action == ACTION_DROP => Verdict::Drop(v.rule_id),
        _ => Verdict::NoMatch,
    }
}

/// Whether a flow `rule_id` granted toward `dest` is masqueraded: the
/// setting of the resource whose rule granted it, which for a nested prefix
/// need not be the most specific one.
#[inline(always)]
pub fn masquerade(slot: u32, dest: &DestValue, rule_id: u32) -> bool {
    let own = dest.flags & DEST_MASQUERADE != 0;
    if dest.flags & DEST_MASQ_BY_RULE == 0 {
        return own;
    }
    let map = if slot == 0 { &MASQ_0 } else { &MASQ_1 };
    let key = MasqKey {
        resource_id: dest.resource_id,
        rule_id,
    };
    // SAFETY: the value is copied out at once.
    match unsafe { map.get(key) } {
        Some(v) => *v != 0,
        None => own,
    }
}
