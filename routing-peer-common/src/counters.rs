//! What the kernel counts: per hook, per drop reason, per hand-off, per
//! resource; conntrack and fragment events.

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
