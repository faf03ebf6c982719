//! The data path's run-time settings.

use crate::*;

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
    /// `CONFIG_LAN_XDP`: set by the daemon at start.
    pub flags: u16,
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

/// `DatapathConfig::flags`: the LAN's XDP program is attached, and so
/// counts the LAN hook and drops malformed frames before TC sees them.
pub const CONFIG_LAN_XDP: u16 = 1;

pub(crate) const SECOND: u64 = 1_000_000_000;

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            active_slot: 0,
            policy_gen: 1,
            snat_port_min: 32768,
            snat_port_max: 60999,
            mss_clamp: 0,
            flags: 0,
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
