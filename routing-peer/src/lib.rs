//! routing-peer: an eBPF routing peer for WireGuard overlay networks.
pub mod compile;
pub mod config;
pub mod datapath;
pub mod wireguard;
pub mod stats;
