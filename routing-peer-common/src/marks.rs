//! skb marks, and the fragment verdicts, keys and entries.

use crate::CtKey;

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
