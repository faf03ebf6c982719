//! Loading, attaching and pinning the kernel programs.
//!
//! State lives under `/sys/fs/bpf/routing-peer/<instance>/`: maps are pinned
//! so a restarted daemon (or the CLI) opens the very same maps, and links are
//! pinned so the programs stay attached while no daemon runs.

use std::{io, path::PathBuf};

use aya::{Ebpf, EbpfLoader};
use routing_peer_common::map_names;
use thiserror::Error;

mod attach;
pub mod gc;
pub mod hold;
mod iface;
#[cfg(test)]
mod packet_tests;
mod pins;
pub mod policy_maps;
pub mod ports;
pub mod safety_net;

/// The compiled kernel programs, built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/routing-peer.bpf.o"));

/// The benchmark's programs, a separate object (feature `bench`).
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/routing-peer-bench.bpf.o"));

/// The data path with per-CPU LRU lists for conntrack and NAT
/// (`BPF_F_NO_COMMON_LRU`), which `cargo xtask bench` compares against the
/// shared lists: loaded in place of `EBPF_OBJECT` when
/// `ROUTING_PEER_BENCH_PERCPU_LRU` is set, in bench builds only.
#[cfg(feature = "bench")]
pub static PERCPU_LRU_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/routing-peer-percpu-lru.bpf.o"));

/// The object to load: the product's, or in bench builds the comparison.
fn object() -> &'static [u8] {
    #[cfg(feature = "bench")]
    if std::env::var_os("ROUTING_PEER_BENCH_PERCPU_LRU").is_some() {
        tracing::warn!("bench build: loading the per-CPU LRU comparison object");
        return PERCPU_LRU_OBJECT;
    }
    EBPF_OBJECT
}

/// Where all instances keep their pins.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/routing-peer";

/// Maps that outlive the daemon. Everything else is rebuilt on start.
const PINNED_MAPS: &[&str] = &map_names::PERSISTENT;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {detail}")]
    Interface { iface: String, detail: String },
    #[error("pin {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

type Result<T> = std::result::Result<T, DatapathError>;

pub use attach::{attach_tc, attach_xdp};
pub use iface::{iface_is_l2, ifindex, local_addresses, overlay_program_for, set_iface_map};
pub use pins::PinDir;

/// Kernel log verbosity for aya-log; `Warn` keeps the hot path quiet.
pub fn log_level_for(verbose: bool) -> u8 {
    if verbose {
        aya_log::Level::Debug as u8
    } else {
        aya_log::Level::Warn as u8
    }
}

/// Loads the object. With `pins`, persistent maps are adopted from (or
/// created at) their pin paths; without, every map is private, as the packet
/// tests want.
/// `sizes` overrides maps' capacities (conntrack, from the configuration);
/// an adopted pinned map keeps the size it was created with.
pub fn load(pins: Option<&PinDir>, log_level: u8, sizes: &[(&'static str, u32)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    let paths: Vec<(&str, PathBuf)> = match pins {
        Some(pins) => {
            pins.create()?;
            PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(object())?)
}

#[cfg(test)]
mod object_tests {
    use object::{Object, ObjectSymbol};
    use routing_peer_common::{map_names, program_names};

    use super::EBPF_OBJECT;

    /// A map or program name user space looks up that the object lacks
    /// would silently not be pinned or attached: every one must be there.
    #[test]
    fn every_name_user_space_uses_is_in_the_object() {
        let file = object::File::parse(EBPF_OBJECT).expect("an ELF object");
        let symbols: Vec<String> = file
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_string))
            .collect();
        let mut names: Vec<&str> = map_names::PERSISTENT.to_vec();
        names.extend([map_names::CONFIG, map_names::XDP_REDIRECT_IFACES]);
        names.extend([
            program_names::OVERLAY_L3,
            program_names::OVERLAY_L2,
            program_names::OVERLAY_XDP,
            program_names::LAN_XDP,
            program_names::LAN_TC,
            program_names::HOLD,
        ]);
        for name in names {
            assert!(
                symbols.iter().any(|s| s == name),
                "{name} is not in the eBPF object"
            );
        }
        // And the test can fail.
        assert!(!symbols.iter().any(|s| s == "NO_SUCH_MAP"));
        // The benchmark's programs are not in the production object.
        assert!(!symbols.iter().any(|s| s.starts_with("rp_bench")));
    }
}
