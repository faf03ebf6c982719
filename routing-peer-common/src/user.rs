//! aya's `Pod` for user space (feature `user`).

use crate::*;
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
// SAFETY: `Event` is `#[repr(C)]` plain data, every byte initialised (above).
unsafe impl aya::Pod for Event {}
// SAFETY: `DropKey` is `#[repr(C)]` plain data, every byte initialised (above).
unsafe impl aya::Pod for DropKey {}
// SAFETY: `DropAgg` is `#[repr(C)]` plain data, every byte initialised (above).
unsafe impl aya::Pod for DropAgg {}
