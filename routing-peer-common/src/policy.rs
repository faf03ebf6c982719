//! The policy maps' keys and values: peers, destinations, classes, rules.

use crate::Family;

/// An address with its family, as an exact-match key (peers, NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub family: u32,
    pub addr: [u32; 4],
}

impl AddrKey {
    /// The key of `addr` (network byte order words; IPv4 in the first).
    #[inline(always)]
    pub const fn new(family: Family, addr: [u32; 4]) -> Self {
        Self {
            family: family as u32,
            addr,
        }
    }
}

/// The family of the destination entry that holds the input chain's class
/// for any local address the compiler did not list (an address added
/// later, one on `lo`): `SELF_KEY` with prefix length 32, the family bits
/// only. No packet has family 0, so no packet matches it by address.
pub const SELF_FAMILY: u32 = 0;
pub const SELF_KEY: AddrKey = AddrKey {
    family: SELF_FAMILY,
    addr: [0; 4],
};

/// LPM data for destination lookups: family (32 bits, always matched) then
/// the address, so the prefix length is 32 + the address prefix length.
pub type LpmAddr = AddrKey;

/// What the overlay source address tells: which peer, and its policy class
/// (peers that are sources of the same rules share a class).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerValue {
    pub peer_id: u32,
    pub src_class: u32,
}

/// Resource ids index the per-resource counters: ids stay below this.
pub const MAX_RESOURCES: u32 = 131_072;

pub const DEST_MASQUERADE: u32 = 1 << 0;
/// One of the routing peer's own addresses: the input chain.
pub const DEST_SELF: u32 = 1 << 1;
/// A nested prefix whose rules come from resources that disagree on
/// masquerade: the resource whose rule granted the flow decides, found in
/// the `MASQ_*` maps by (resource, rule).
pub const DEST_MASQ_BY_RULE: u32 = 1 << 2;

/// Key of the `MASQ_*` maps: the most specific resource of a prefix and a
/// rule that grants there; the value is 1 to masquerade, 0 not to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MasqKey {
    pub resource_id: u32,
    pub rule_id: u32,
}

/// What a destination prefix resolves to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestValue {
    /// Index into `RESOURCE_STATS`; 0 is "no resource" (the input chain).
    pub resource_id: u32,
    /// Resources targeted by the same rules share a class.
    pub dst_class: u32,
    pub flags: u32,
}

/// Bits of the policy key the LPM always matches: the two classes.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 64;
pub const POLICY_PREFIX_ANY_PORT: u32 = 72;
pub const POLICY_PREFIX_EXACT: u32 = 88;

/// Policy LPM data, Cilium style: wildcards are prefix lengths. Fields are
/// big-endian so the trie matches them most significant bit first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub src_class: [u8; 4],
    pub dst_class: [u8; 4],
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: u8,
}

impl PolicyKey {
    pub fn new(src_class: u32, dst_class: u32, proto: u8, port: u16) -> Self {
        Self {
            src_class: src_class.to_be_bytes(),
            dst_class: dst_class.to_be_bytes(),
            proto,
            port: port.to_be_bytes(),
            _pad: 0,
        }
    }
}

pub const ACTION_ACCEPT: u32 = 1;
pub const ACTION_DROP: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub action: u32,
    pub rule_id: u32,
}
