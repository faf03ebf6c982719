//! Project automation: `cargo xtask setup | build | test | demo`.

mod bench;
mod demo;
mod setup;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "routing-peer build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain and test dependencies (Debian, root; idempotent).
    Setup,
    /// Build the eBPF object and the `routing-peer` binary that embeds it.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Everything CI checks: setup, build, fmt, clippy, unit, packet and e2e
    /// tests, then the VM suite on Debian's 6.12 and 6.1 kernels.
    Test,
    /// Run the walkthrough in throwaway network namespaces.
    Demo {
        /// The same walkthrough, configured from NetBird's management API
        /// (a fixture server).
        #[arg(long)]
        netbird: bool,
    },
    /// Measure the data path against nftables, kernel forwarding and XDP redirect.
    Bench {
        /// A short run: each scenario once, at 1k rules.
        #[arg(long)]
        quick: bool,
        /// Run only the throughput scenarios whose label contains this,
        /// print them and write no report (development).
        #[arg(long)]
        only: Option<String>,
    },
    /// Boot Debian's kernels in QEMU and run the kernel WireGuard suite there.
    VmTest {
        /// 6.12, 6.1 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Run only the suite steps whose name contains this (development).
        #[arg(long)]
        only: Option<String>,
    },
}

/// Failures print as one line (the cause chain joined with `: `), with no
/// backtrace whatever RUST_BACKTRACE says: they are meant for the user.
fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every task that builds or runs something installs what it needs first
/// (idempotent, seconds when all is there): both commands of the README
/// work on a fresh machine.
fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::run(),
        Command::Build { release } => {
            setup::run()?;
            build(release)
        }
        Command::Test => test(),
        Command::Demo { netbird } => {
            setup::run()?;
            demo::run(netbird)
        }
        Command::Bench { quick, only } => {
            setup::run()?;
            bench::run(quick, only.as_deref())
        }
        Command::VmTest { kernel, only } => {
            setup::run()?;
            vm::run(&kernel, only.as_deref())
        }
    }
}

fn build(release: bool) -> Result<()> {
    setup::check_toolchain()?;
    let mut args = vec!["build", "--locked", "-p", "routing-peer"];
    if release {
        args.push("--release");
    }
    util::cargo(&args)
}

fn test() -> Result<()> {
    // The host's forwarding settings: no test may change them.
    let host_sysctls = util::host_sysctls();
    setup::run()?;
    build(false)?;
    util::step("cargo fmt --check");
    util::cargo(&["fmt", "--all", "--check"])?;
    util::cargo(&[
        "fmt",
        "--manifest-path",
        "routing-peer-ebpf/Cargo.toml",
        "--check",
    ])?;
    util::step("cargo clippy -D warnings (userspace)");
    util::cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--features",
        "routing-peer/bench",
        "--",
        "-D",
        "warnings",
    ])?;
    util::step("cargo clippy -D warnings (eBPF)");
    util::debian_cargo(&[
        "clippy",
        "--locked",
        "--release",
        "--features",
        "bench",
        "--target",
        util::BPF_TARGET,
        "--",
        "-D",
        "warnings",
    ])?;
    util::step("unit, packet (BPF_PROG_TEST_RUN) and end-to-end tests");
    let bin = util::workspace_root().join("target/debug/routing-peer");
    // Tests that need root and namespaces are #[ignore]d, so that a plain
    // `cargo test` passes as any user; here they run. Kernel WireGuard is
    // the VM suite's (this kernel has no module).
    util::cargo_with_env(
        &[
            "test",
            "--locked",
            "--workspace",
            "--features",
            "routing-peer/bench",
            "--no-fail-fast",
            "--",
            "--include-ignored",
            "--skip",
            "kernel_wireguard_",
        ],
        &[("ROUTING_PEER_BIN", bin.as_os_str())],
    )?;
    util::step("checking nothing was left behind");
    util::check_no_leftovers()?;
    util::check_sysctls_unchanged(&host_sysctls)?;
    // Kernel WireGuard and older kernels: Debian's 6.12 and 6.1 under QEMU.
    vm::run("all", None)
}
