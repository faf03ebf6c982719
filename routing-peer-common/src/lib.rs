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

mod config;
mod counters;
mod events;
mod flow;
mod marks;
mod names;
mod policy;
#[cfg(feature = "user")]
mod user;

pub use config::*;
pub use counters::*;
pub use events::*;
pub use flow::*;
pub use marks::*;
pub use names::*;
pub use policy::*;

#[cfg(test)]
mod tests {
    use super::{config::SECOND, *};
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
        assert_eq!(size_of::<Event>(), 128);
        assert_eq!(size_of::<DropKey>(), 40);
        assert_eq!(size_of::<DropAgg>(), 144);
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
