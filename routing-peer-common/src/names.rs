//! Names of maps and programs, one place so both sides agree.

/// Names of the maps user space looks up; one place so both sides agree.
pub mod map_names {
    pub const HOOK_STATS: &str = "HOOK_STATS";
    pub const DROP_STATS: &str = "DROP_STATS";
    pub const RESOURCE_STATS: &str = "RESOURCE_STATS";
    pub const CONFIG: &str = "CONFIG";
    pub const PEERS: [&str; 2] = ["PEERS_0", "PEERS_1"];
    pub const DESTS: [&str; 2] = ["DESTS_0", "DESTS_1"];
    pub const POLICY: [&str; 2] = ["POLICY_0", "POLICY_1"];
    /// The policy's full-length entries (exact protocol and port), hashed.
    pub const POLICY_EXACT: [&str; 2] = ["POLICY_EXACT_0", "POLICY_EXACT_1"];
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

    /// Flow and drop events (ring buffer of `Event`).
    pub const EVENTS: &str = "EVENTS";
    /// Drop aggregates by `DropKey`.
    pub const DROP_AGG: &str = "DROP_AGG";
    /// Per-CPU event counters, indexed by `EventStat`.
    pub const EVENT_STATS: &str = "EVENT_STATS";

    /// Every map that holds state worth keeping across a daemon restart.
    pub const PERSISTENT: [&str; 27] = [
        EVENTS,
        DROP_AGG,
        EVENT_STATS,
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
        POLICY_EXACT[0],
        POLICY_EXACT[1],
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
