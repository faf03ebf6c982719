//! Types shared by the kernel programs and user space.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps
//! and user space reads it back byte for byte. The `user` feature adds aya's
//! `Pod` so user space can use these types as map keys and values.
#![no_std]

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
}

impl Hook {
    pub const COUNT: u32 = 2;
    pub const ALL: [Hook; Self::COUNT as usize] = [Hook::OverlayIngress, Hook::LanIngress];

    pub fn name(self) -> &'static str {
        match self {
            Hook::OverlayIngress => "overlay-ingress",
            Hook::LanIngress => "lan-ingress",
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
    /// IP fragment: not tracked, so it can't be matched against policy.
    Fragment = 1,
}

impl DropReason {
    pub const COUNT: u32 = 2;
    pub const ALL: [DropReason; Self::COUNT as usize] =
        [DropReason::Malformed, DropReason::Fragment];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
        }
    }
}

/// Names of the maps user space looks up; one place so both sides agree.
pub mod map_names {
    pub const HOOK_STATS: &str = "HOOK_STATS";
    pub const DROP_STATS: &str = "DROP_STATS";
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress for an L3 overlay device (WireGuard, TUN): no Ethernet header.
    pub const OVERLAY_L3: &str = "rp_overlay_l3";
    /// TC ingress for an L2 overlay stand-in (a veth), used by benchmarks.
    pub const OVERLAY_L2: &str = "rp_overlay_l2";
    /// XDP on the LAN interface.
    pub const LAN_XDP: &str = "rp_lan_xdp";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::PacketCounter {}
}
