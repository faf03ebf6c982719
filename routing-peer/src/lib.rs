//! routing-peer: an eBPF routing peer for WireGuard overlay networks.
pub mod check;
pub mod cli;
pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod events;
#[cfg(any(test, feature = "bench"))]
pub mod frames;
pub mod identity;
pub mod locks;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod stats;
pub mod sysctl;
#[cfg(test)]
pub mod testing;
pub mod wireguard;
