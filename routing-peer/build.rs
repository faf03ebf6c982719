//! Builds the kernel programs with Debian's rustc for `bpfel-unknown-none`
//! and hands the object to the daemon, which embeds it.
//!
//! rustup's toolchains here have no `rust-src`, so `-Zbuild-std` is out;
//! Debian's rustc-web ships a prebuilt `core` for the BPF target instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const RUSTFLAGS: &[&str] = &[
    "--cfg",
    "bpf_target_arch=\"x86_64\"",
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    let ebpf_dir = workspace.join("routing-peer-ebpf");
    let common_dir = workspace.join("routing-peer-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    if let Err(missing) = check_toolchain() {
        panic!("missing {missing}: run `cargo xtask setup` to install it");
    }

    // A target dir of its own: the outer cargo holds a lock on `target/`'s
    // profile dirs, and the BPF build must not share artifacts with the host.
    let target_dir = workspace.join("target").join("bpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        // The outer (rustup) cargo's settings would leak into the BPF build.
        if key.starts_with("CARGO") || key.starts_with("RUST") {
            cmd.env_remove(key.as_ref());
        }
    }
    let path = env::var("PATH").unwrap_or_default();
    let home = env::var("HOME").unwrap_or_default();
    cmd.current_dir(&ebpf_dir)
        .env("PATH", format!("/usr/bin:{path}:{home}/.cargo/bin"))
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf needs `asm_experimental_arch` on a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .args(["build", "--release", "--locked", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {DEBIAN_CARGO}: {e}"));
    if !status.success() {
        panic!("building the eBPF programs failed ({status}); see the errors above");
    }
    let object = target_dir.join("bpfel-unknown-none/release/routing-peer");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("routing-peer.bpf.o");
    std::fs::copy(&object, &out)
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}

/// Names the first missing piece, so the error is one line rather than a
/// wall of linker output.
fn check_toolchain() -> Result<(), String> {
    if !Path::new(DEBIAN_RUSTC).exists() || !Path::new(DEBIAN_CARGO).exists() {
        return Err("Debian's rustc-web/cargo-web (/usr/bin/rustc, /usr/bin/cargo)".into());
    }
    if !Path::new(BPF_CORE).exists() {
        return Err(format!("libstd-rust-web-dev-bpf ({BPF_CORE})"));
    }
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|dir| dir.join("bpf-linker").exists()))
        .unwrap_or(false);
    let home_bin = env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/bpf-linker").exists())
        .unwrap_or(false);
    if !on_path && !home_bin {
        return Err("bpf-linker 0.13.0 on PATH".into());
    }
    Ok(())
}
