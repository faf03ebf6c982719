//! `cargo xtask setup`: everything the build and the tests need on a fresh
//! Debian 12 machine. Idempotent: it checks first and installs only what is
//! missing, so a second run takes seconds.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{self, output, run_cmd, step};

/// Debian packages: the BPF toolchain, LLVM for bpf-linker, and the real
/// components the end-to-end tests and benchmarks drive.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "wireguard-tools",
    "wireguard-go",
    "nftables",
    "dnsmasq-base",
    "iperf3",
    "ethtool",
    // The benchmark empties the kernel's connection table between samples.
    "conntrack",
    "kmod",
    // The VM suite copies the host's sysctl and strips binaries with objcopy.
    "procps",
    "binutils",
    // CPU profiles in the benchmark.
    "linux-perf",
    // cargo xtask vm-test: Debian's kernels under QEMU.
    "qemu-system-x86",
    "busybox-static",
    // The IPFIX export's independent decoder in the tests.
    "tshark",
    "xz-utils",
    "zstd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    step("setup");
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "setup supports Debian-like systems only; install by hand: {} and bpf-linker {BPF_LINKER_VERSION} (LLVM 22)",
            DEBIAN_PACKAGES.join(" ")
        );
    }
    let uid = output(Command::new("id").arg("-u"))?;
    let missing = missing_packages()?;
    if !missing.is_empty() {
        if uid.trim() != "0" {
            bail!(
                "setup must run as root to install: {} (or install them by hand)",
                missing.join(" ")
            );
        }
        eprintln!("installing Debian packages: {}", missing.join(" "));
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    ensure_bpf_linker()?;
    ensure_rustup_components()?;
    if let Some(missing) = util::missing_bpf_toolchain() {
        bail!("setup finished but {missing} is still missing");
    }
    eprintln!("setup: all dependencies present");
    Ok(())
}

/// Fails with one line naming the missing piece and the fix.
pub fn check_toolchain() -> Result<()> {
    match util::missing_bpf_toolchain() {
        Some(missing) => bail!("missing {missing}: run `cargo xtask setup`"),
        None => Ok(()),
    }
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for pkg in DEBIAN_PACKAGES {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .context("running dpkg-query")?;
        if !String::from_utf8_lossy(&status.stdout).contains("install ok installed") {
            missing.push(*pkg);
        }
    }
    Ok(missing)
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    eprintln!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let path = std::env::var("PATH").unwrap_or_default();
    run_cmd(
        Command::new("cargo")
            .env("PATH", format!("/usr/lib/llvm-22/bin:{path}"))
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn ensure_rustup_components() -> Result<()> {
    let have = |tool: &str| {
        Command::new("cargo")
            .args([tool, "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}
