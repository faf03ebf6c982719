//! Types shared by the kernel programs and user space.
//!
//! Everything here is `#[repr(C)]` plain data without implicit padding: the
//! kernel writes it into maps and user space reads it back byte for byte.
//! The `user` feature adds aya's `Pod` so user space can use these types as
//! map keys and values. Addresses are stored as the packet carries them
//! (network byte order words); IPv4 uses word 0 and leaves the rest zero.
#![no_std]

/// The family tag in map keys (`AddrKey`, `CtKey`, `NatEndpoint`): the IP
/// version, 4 or 6. Not the kernel's AF_INET (2) / AF_INET6 (10), which only
/// the FIB helpers take (`forward.rs` has those).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

impl Family {
    #[inline(always)]
    pub const fn of(ipv6: bool) -> Self {
        if ipv6 {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// The family of a key's tag; anything but 6 is IPv4.
    #[inline(always)]
    pub const fn from_tag(tag: u32) -> Self {
        if tag == Family::V6 as u32 {
            Family::V6
        } else {
            Family::V4
        }
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Packets and bytes, the unit every counter in the data path uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketCounter {
    pub fn add(&mut self, other: &PacketCounter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Where a program runs; indexes the `HOOK_STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress on the overlay (WireGuard) interface: peer → LAN.
    OverlayIngress = 0,
    /// XDP on the LAN interface: return traffic and LAN-initiated packets.
    LanIngress = 1,
    /// XDP on an L2 overlay stand-in (benchmarks): the skb-less fast path.
    OverlayXdp = 2,
}

impl Hook {
    pub const COUNT: u32 = 3;
    pub const ALL: [Hook; Self::COUNT as usize] =
        [Hook::OverlayIngress, Hook::LanIngress, Hook::OverlayXdp];

    pub fn name(self) -> &'static str {
        match self {
            Hook::OverlayIngress => "overlay-ingress",
            Hook::LanIngress => "lan-ingress",
            Hook::OverlayXdp => "overlay-xdp",
        }
    }
}

/// Why the data path dropped a packet; indexes the `DROP_STATS` per-CPU array.
/// The numbering is ABI with pinned maps: append, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated header, bad IHL, bad lengths, bad version.
    Malformed = 0,
    /// A later fragment of a datagram whose first fragment was dropped.
    Fragment = 1,
    /// No rule allows it (default deny), or the destination is no resource.
    NoPolicy = 2,
    /// A drop rule matched.
    PolicyDrop = 3,
    /// A tracked flow that the current policy no longer allows.
    PolicyRevoked = 4,
    /// The overlay source address belongs to no configured peer.
    UnknownSource = 5,
    /// A LAN-initiated packet toward an overlay address.
    LanUnsolicited = 6,
    /// The conntrack table refused a new entry.
    CtFull = 7,
    /// No free SNAT port left in the configured range.
    NatExhausted = 8,
    /// Allowed, but the FIB has no route to forward it on.
    NoRoute = 9,
    /// A TCP RST outside the receiver's window (RFC 5961): a blind reset.
    RstOutOfWindow = 10,
    /// A reply whose TTL would expire on the way to the peer.
    TtlExpired = 11,
    /// A reply too big for the overlay that must not be fragmented, after
    /// the routing peer answered the sender with an ICMP error.
    ReplyTooBig = 12,
    /// A fragment that would overwrite the transport header the policy
    /// inspected (RFC 1858, 3128, 5722), and every later fragment of its
    /// datagram, which is poisoned.
    FragmentOverlap = 13,
    /// A first fragment that does not hold the whole transport header.
    FragmentTiny = 14,
    /// A later fragment whose first fragment never came while it was held.
    FragmentOrphan = 15,
}

impl DropReason {
    pub const COUNT: u32 = 16;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::NoPolicy,
        DropReason::PolicyDrop,
        DropReason::PolicyRevoked,
        DropReason::UnknownSource,
        DropReason::LanUnsolicited,
        DropReason::CtFull,
        DropReason::NatExhausted,
        DropReason::NoRoute,
        DropReason::RstOutOfWindow,
        DropReason::TtlExpired,
        DropReason::ReplyTooBig,
        DropReason::FragmentOverlap,
        DropReason::FragmentTiny,
        DropReason::FragmentOrphan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::NoPolicy => "no-policy",
            DropReason::PolicyDrop => "policy-drop",
            DropReason::PolicyRevoked => "policy-revoked",
            DropReason::UnknownSource => "unknown-source",
            DropReason::LanUnsolicited => "lan-unsolicited",
            DropReason::CtFull => "conntrack-full",
            DropReason::NatExhausted => "nat-ports-exhausted",
            DropReason::NoRoute => "no-route",
            DropReason::RstOutOfWindow => "rst-out-of-window",
            DropReason::TtlExpired => "ttl-expired",
            DropReason::ReplyTooBig => "reply-too-big",
            DropReason::FragmentOverlap => "fragment-overlap",
            DropReason::FragmentTiny => "fragment-tiny",
            DropReason::FragmentOrphan => "fragment-orphan",
        }
    }
}

/// Why a program handed a packet to the kernel instead of forwarding or
/// dropping it; indexes the `HANDOFF_STATS` per-CPU array. Every hand-off
/// comes after policy (and, where the kernel forwards, translation).
/// The numbering is ABI with pinned maps: append, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// To one of the routing peer's own addresses, allowed by the input chain.
    Local = 0,
    /// An allowed packet whose TTL expires here: the kernel answers
    /// time-exceeded and forwards nothing.
    TtlExpired = 1,
    /// An allowed packet over the egress MTU that may not be fragmented:
    /// the kernel answers fragmentation-needed / packet-too-big.
    FragNeeded = 2,
    /// An allowed, translated IPv4 packet over the egress MTU without DF:
    /// marked, and forwarded by the kernel, which fragments it.
    Fragmenting = 3,
    /// Not IP (ARP, LLDP, …): the kernel's own business.
    NonIp = 4,
    /// From the LAN, neither a reply nor toward the overlay: traffic to
    /// the routing peer itself or routed elsewhere, outside our policy.
    LanOther = 5,
}

impl Handoff {
    pub const COUNT: u32 = 6;
    pub const ALL: [Handoff; Self::COUNT as usize] = [
        Handoff::Local,
        Handoff::TtlExpired,
        Handoff::FragNeeded,
        Handoff::Fragmenting,
        Handoff::NonIp,
        Handoff::LanOther,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Handoff::Local => "local",
            Handoff::TtlExpired => "ttl-expired",
            Handoff::FragNeeded => "frag-needed",
            Handoff::Fragmenting => "fragmenting",
            Handoff::NonIp => "non-ip",
            Handoff::LanOther => "lan-other",
        }
    }
}

/// The skb mark our programs put on packets they hand to the kernel to
/// forward (`Handoff::Fragmenting`). The safety-net nftables table drops
/// every packet the kernel forwards from the overlay without it.
pub const FORWARD_MARK: u32 = 0x5250_0001;

/// The skb mark of a fragment on its way around the hold (a veth pair with
/// a netem delay): `HOLD_MARK | direction << 8 | passes so far`.
pub const HOLD_MARK: u32 = 0x5250_8000;
pub const HOLD_MARK_MASK: u32 = 0xffff_f000;
/// Direction bits of the hold mark: from the overlay, or from the LAN.
pub const HOLD_FROM_OVERLAY: u32 = 0;
pub const HOLD_FROM_LAN: u32 = 1;
/// The MAC address of the hold's receiving end, which held frames carry.
pub const HOLD_MAC: [u8; 6] = [0x02, 0x52, 0x50, 0x00, 0x00, 0x02];

/// What a datagram's first fragment decided, for the fragments after it.
pub const FRAG_FORWARD: u8 = 1;
/// A reply: translated back toward the peer.
pub const FRAG_REPLY: u8 = 2;
/// To the routing peer itself, allowed (overlay) or the kernel's (LAN).
pub const FRAG_LOCAL: u8 = 3;
/// Dropped: every later fragment is dropped too.
pub const FRAG_DENIED: u8 = 4;
/// Overlapping fragments were seen: the whole datagram is dropped.
pub const FRAG_POISONED: u8 = 5;

/// A datagram: (source, destination, IP identification, protocol). IPv6
/// uses the fragment header's 32-bit identification and next header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The verdict of a datagram's first fragment. Entries are not refreshed:
/// one older than the configured timeout counts as absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub created_ns: u64,
    /// The flow the datagram belongs to (forward and reply verdicts).
    pub flow: CtKey,
    /// `FRAG_FORWARD` … `FRAG_POISONED`.
    pub verdict: u8,
    pub _pad: u8,
    /// Where the first fragment's transport header ends, in datagram
    /// bytes: a later fragment starting before it overlaps it.
    pub l4_end: u16,
    pub _pad2: u32,
}

/// Fragment counters, per CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragEvent {
    /// First fragments whose verdict was recorded.
    Tracked = 0,
    /// Later fragments that took their first fragment's verdict.
    Followed = 1,
    /// Passes of a fragment around the hold, waiting for its first.
    Held = 2,
    /// New datagrams inserted into the map (for evictions, as conntrack's).
    Inserted = 3,
}

impl FragEvent {
    pub const COUNT: u32 = 4;
}

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

/// A flow in its original direction: overlay peer → remote (resource).
/// ICMP echo uses the identifier as `peer_port` and 0 as `remote_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub peer: [u32; 4],
    pub remote: [u32; 4],
    pub peer_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    /// A flow as the overlay peer sees it: from (`peer`, `peer_port`) to
    /// (`remote`, `remote_port`), whichever direction a packet goes.
    #[inline(always)]
    pub const fn new(
        family: Family,
        proto: u8,
        (peer, peer_port): ([u32; 4], u16),
        (remote, remote_port): ([u32; 4], u16),
    ) -> Self {
        Self {
            peer,
            remote,
            peer_port,
            remote_port,
            proto,
            family: family as u8,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    pub const fn family(&self) -> Family {
        Family::from_tag(self.family as u32)
    }
}

pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_TCP_ESTABLISHED: u8 = 2;
pub const CT_TCP_CLOSING: u8 = 3;
pub const CT_TCP_RESET: u8 = 4;
pub const CT_UDP_UNREPLIED: u8 = 5;
pub const CT_UDP_REPLIED: u8 = 6;
pub const CT_ICMP: u8 = 7;
pub const CT_OTHER: u8 = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const CT_FLAG_MASQUERADE: u8 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Peer → remote.
    pub forward: PacketCounter,
    /// Remote → peer.
    pub reply: PacketCounter,
    /// The translated source, when masqueraded.
    pub nat_addr: [u32; 4],
    pub nat_port: u16,
    pub state: u8,
    pub flags: u8,
    /// TCP flags seen, OR-accumulated per direction.
    pub tcp_flags_forward: u8,
    pub tcp_flags_reply: u8,
    pub _pad: [u8; 2],
    pub peer_id: u32,
    pub resource_id: u32,
    pub rule_id: u32,
    /// The policy generation this flow was last checked against.
    pub policy_gen: u32,
    /// TCP, per direction: the last acknowledgement number sent, and the
    /// sequence number after the last segment sent (for the RST check).
    pub ack_forward: u32,
    pub ack_reply: u32,
    pub seq_end_forward: u32,
    pub seq_end_reply: u32,
    /// TCP, per direction: the last advertised window (unscaled).
    pub win_forward: u16,
    pub win_reply: u16,
    /// Fragmented datagrams seen on this flow (either way).
    pub fragmented: u32,
}

/// Endpoint-independent SNAT mapping (RFC 4787): one external port per
/// peer endpoint, whatever the remote.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatEndpoint {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Conntrack events the kernel counts. LRU evictions are not reported by
/// the kernel, so they are derived: inserts − removals − GC deletions − live
/// entries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtEvent {
    Inserts = 0,
    Removals = 1,
}

impl CtEvent {
    pub const COUNT: u32 = 2;
}

/// Per-resource counters, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCounters {
    pub forward: PacketCounter,
    pub reply: PacketCounter,
    pub denied: PacketCounter,
    pub new_flows: u64,
    pub _pad: u64,
}

impl ResourceCounters {
    pub fn add(&mut self, other: &ResourceCounters) {
        self.forward.add(&other.forward);
        self.reply.add(&other.reply);
        self.denied.add(&other.denied);
        self.new_flows += other.new_flows;
    }
}

/// Run-time settings, one array slot written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Which copy (0 or 1) of the peer, destination and policy maps is live.
    pub active_slot: u32,
    /// Bumped on every policy change: flows re-check when they see a new one.
    pub policy_gen: u32,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// TCP MSS ceiling for SYNs (overlay MTU − 40 for IPv4); 0 disables.
    pub mss_clamp: u16,
    pub _pad: u16,
    pub tcp_established_ns: u64,
    pub tcp_transitory_ns: u64,
    pub udp_ns: u64,
    pub udp_unreplied_ns: u64,
    pub icmp_ns: u64,
    /// How long a reset TCP flow lingers.
    pub tcp_reset_ns: u64,
    /// How long a first fragment's verdict stands (never refreshed).
    pub frag_timeout_ns: u64,
    /// The hold's sending end (0: no hold, an orphan fragment is dropped),
    /// and how many passes around it a fragment makes before it is.
    pub hold_ifindex: u32,
    pub hold_passes: u32,
}

const SECOND: u64 = 1_000_000_000;

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            active_slot: 0,
            policy_gen: 1,
            snat_port_min: 32768,
            snat_port_max: 60999,
            mss_clamp: 0,
            _pad: 0,
            // RFC 5382: at least 2 h 4 min established, 4 min transitory.
            tcp_established_ns: (2 * 3600 + 4 * 60) * SECOND,
            tcp_transitory_ns: 240 * SECOND,
            // RFC 4787: at least 2 min once replied.
            udp_ns: 120 * SECOND,
            udp_unreplied_ns: 30 * SECOND,
            icmp_ns: 30 * SECOND,
            tcp_reset_ns: 10 * SECOND,
            frag_timeout_ns: 30 * SECOND,
            hold_ifindex: 0,
            hold_passes: 0,
        }
    }
}

impl DatapathConfig {
    /// How long a flow in `state` lives without packets.
    pub fn timeout_ns(&self, state: u8) -> u64 {
        match state {
            CT_TCP_ESTABLISHED => self.tcp_established_ns,
            CT_TCP_SYN_SENT | CT_TCP_CLOSING => self.tcp_transitory_ns,
            CT_TCP_RESET => self.tcp_reset_ns,
            CT_UDP_REPLIED | CT_OTHER => self.udp_ns,
            CT_UDP_UNREPLIED => self.udp_unreplied_ns,
            _ => self.icmp_ns,
        }
    }
}

/// Names of the maps user space looks up; one place so both sides agree.
pub mod map_names {
    pub const HOOK_STATS: &str = "HOOK_STATS";
    pub const DROP_STATS: &str = "DROP_STATS";
    pub const RESOURCE_STATS: &str = "RESOURCE_STATS";
    pub const CONFIG: &str = "CONFIG";
    pub const PEERS: [&str; 2] = ["PEERS_0", "PEERS_1"];
    pub const DESTS: [&str; 2] = ["DESTS_0", "DESTS_1"];
    pub const POLICY: [&str; 2] = ["POLICY_0", "POLICY_1"];
    pub const MASQ: [&str; 2] = ["MASQ_0", "MASQ_1"];
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const NAT_FWD: &str = "NAT_FWD";
    pub const NAT_REV: &str = "NAT_REV";
    /// Pool ports the routing peer's own sockets hold: (proto << 16 | port) → 1.
    pub const NAT_RESERVED: &str = "NAT_RESERVED";
    pub const XDP_REDIRECT_IFACES: &str = "XDP_REDIRECT_IFACES";
    pub const L3_IFACES: &str = "L3_IFACES";
    /// Per-CPU conntrack event counters, indexed by `CtEvent`.
    pub const CT_EVENTS: &str = "CT_EVENTS";
    /// Entries the daemon's GC deleted (one slot, written by user space).
    pub const CT_GC: &str = "CT_GC";
    /// Per-CPU hand-off counters, indexed by `Handoff`.
    pub const HANDOFF_STATS: &str = "HANDOFF_STATS";
    /// Datagrams' verdicts by `FragKey` (LRU).
    pub const FRAGS: &str = "FRAGS";
    /// Per-CPU fragment counters, indexed by `FragEvent`.
    pub const FRAG_STATS: &str = "FRAG_STATS";

    /// Every map that holds state worth keeping across a daemon restart.
    pub const PERSISTENT: [&str; 22] = [
        HANDOFF_STATS,
        FRAGS,
        FRAG_STATS,
        MASQ[0],
        MASQ[1],
        HOOK_STATS,
        DROP_STATS,
        RESOURCE_STATS,
        CONFIG,
        PEERS[0],
        PEERS[1],
        DESTS[0],
        DESTS[1],
        POLICY[0],
        POLICY[1],
        CONNTRACK,
        NAT_FWD,
        NAT_REV,
        XDP_REDIRECT_IFACES,
        L3_IFACES,
        CT_EVENTS,
        CT_GC,
    ];
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress for an L3 overlay device (WireGuard, TUN): no Ethernet header.
    pub const OVERLAY_L3: &str = "rp_overlay_l3";
    /// TC ingress for an L2 overlay stand-in (a veth), used by benchmarks.
    pub const OVERLAY_L2: &str = "rp_overlay_l2";
    /// XDP on an L2 overlay stand-in.
    pub const OVERLAY_XDP: &str = "rp_overlay_xdp";
    /// XDP on the LAN interface.
    pub const LAN_XDP: &str = "rp_lan_xdp";
    /// TC ingress on the LAN interface.
    pub const LAN_TC: &str = "rp_lan_tc";
    /// TC ingress on the hold's receiving end: held fragments come back.
    pub const HOLD: &str = "rp_hold";
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` plain data with explicit padding
    // fields, so every byte is initialised and every bit pattern is valid.
    // SAFETY: `PacketCounter` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for PacketCounter {}
    // SAFETY: `AddrKey` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for AddrKey {}
    // SAFETY: `PeerValue` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for PeerValue {}
    // SAFETY: `DestValue` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for DestValue {}
    // SAFETY: `PolicyKey` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: `PolicyValue` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: `MasqKey` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for MasqKey {}
    // SAFETY: `CtKey` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: `CtEntry` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: `NatEndpoint` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for NatEndpoint {}
    // SAFETY: `ResourceCounters` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for ResourceCounters {}
    // SAFETY: `DatapathConfig` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: `FragKey` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: `FragEntry` is `#[repr(C)]` plain data, every byte initialised (above).
    unsafe impl aya::Pod for FragEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// Sizes are ABI with the kernel and with pinned maps.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<CtEntry>(), 112);
        assert_eq!(size_of::<NatEndpoint>(), 20);
        assert_eq!(size_of::<DatapathConfig>(), 80);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<FragEntry>(), 56);
        assert_eq!(size_of::<ResourceCounters>(), 64);
    }

    #[test]
    fn policy_key_is_big_endian_for_prefix_matching() {
        let key = PolicyKey::new(1, 0x0203, IPPROTO_TCP, 443);
        assert_eq!(key.src_class, [0, 0, 0, 1]);
        assert_eq!(key.dst_class, [0, 0, 2, 3]);
        assert_eq!(key.port, [1, 187]);
    }

    #[test]
    fn timeouts_meet_the_rfcs() {
        let c = DatapathConfig::default();
        assert!(c.timeout_ns(CT_TCP_ESTABLISHED) >= (2 * 3600 + 4 * 60) * SECOND);
        assert!(c.timeout_ns(CT_TCP_SYN_SENT) >= 240 * SECOND);
        assert!(c.timeout_ns(CT_UDP_REPLIED) >= 120 * SECOND);
    }

    #[test]
    fn the_reset_timeout_is_configurable() {
        let c = DatapathConfig {
            tcp_reset_ns: 3 * SECOND,
            ..Default::default()
        };
        assert_eq!(c.timeout_ns(CT_TCP_RESET), 3 * SECOND);
    }
}
