//! Builds the kernel programs with Debian's rustc for `bpfel-unknown-none`
//! and hands the object to the daemon, which embeds it.

use std::{
    env,
    path::{Path, PathBuf},
};

include!("bpf_toolchain.rs");

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("the crate lives in the workspace");
    let ebpf_dir = workspace.join("routing-peer-ebpf");
    let common_dir = workspace.join("routing-peer-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        manifest_dir.join("bpf_toolchain.rs"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    if let Some(missing) = missing_bpf_toolchain() {
        panic!("missing {missing}: run `cargo xtask setup` to install it");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Their own target dirs: the BPF builds must not share artifacts (or the
    // outer cargo's lock) with the host build, nor with each other.
    build_object(
        &ebpf_dir,
        &workspace.join("target/bpf"),
        &[],
        &out_dir.join("routing-peer.bpf.o"),
    );
    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        build_object(
            &ebpf_dir,
            &workspace.join("target/bpf-bench"),
            &["--features", "bench"],
            &out_dir.join("routing-peer-bench.bpf.o"),
        );
        build_object(
            &ebpf_dir,
            &workspace.join("target/bpf-lru"),
            &["--features", "percpu-lru"],
            &out_dir.join("routing-peer-percpu-lru.bpf.o"),
        );
    }
}

/// Builds the eBPF crate with `features` in `target_dir` and copies the
/// object to `out`.
fn build_object(ebpf_dir: &Path, target_dir: &Path, features: &[&str], out: &Path) {
    let status = debian_bpf_cargo(ebpf_dir)
        .args(["build", "--release", "--locked", "--target", BPF_TARGET])
        .args(features)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .unwrap_or_else(|e| panic!("running {DEBIAN_CARGO}: {e}"));
    if !status.success() {
        panic!("building the eBPF programs failed ({status}); see the errors above");
    }
    let object = target_dir.join(BPF_TARGET).join("release/routing-peer");
    std::fs::copy(&object, out).unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
