//! Conntrack and NAT: flow keys, states, entries, mappings.

use crate::{Family, PacketCounter};

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
