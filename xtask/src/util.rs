use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs `cmd`, failing with its command line when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; a failure is an error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = routing_peer_testbed::run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

pub fn cargo_with_env(args: &[&str], envs: &[(&str, &OsStr)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_cmd(&mut cmd)
}

mod bpf {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../routing-peer/bpf_toolchain.rs"
    ));
}
pub use bpf::{missing_bpf_toolchain, BPF_TARGET};

/// Debian's cargo on the eBPF crate, with the flags the BPF target needs.
/// `args` starts with the subcommand; the build's own target dir is added.
pub fn debian_cargo(args: &[&str]) -> Result<()> {
    let root = workspace_root();
    let mut cmd = bpf::debian_bpf_cargo(&root.join("routing-peer-ebpf"));
    let (subcommand, rest) = args.split_first().expect("a cargo subcommand");
    cmd.arg(subcommand)
        .arg("--target-dir")
        .arg(root.join("target/bpf"))
        .args(rest);
    run_cmd(&mut cmd)
}

pub use routing_peer_testbed::TEST_PREFIX;

/// Fails when a test left a namespace, a pin or an nftables table behind.
/// The host namespace's sysctls a routing peer sets, and their values.
const HOST_SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/default/rp_filter",
];

pub fn host_sysctls() -> Vec<(String, String)> {
    HOST_SYSCTLS
        .iter()
        .map(|k| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

/// Fails if any of the host's sysctls changed since `before`.
pub fn check_sysctls_unchanged(before: &[(String, String)]) -> Result<()> {
    let changed: Vec<String> = host_sysctls()
        .into_iter()
        .zip(before)
        .filter(|(now, then)| now.1 != then.1)
        .map(|(now, then)| format!("{}: {} -> {}", now.0, then.1, now.1))
        .collect();
    if !changed.is_empty() {
        bail!(
            "tests changed the host's sysctls:\n  {}",
            changed.join("\n  ")
        );
    }
    eprintln!("the host's forwarding sysctls are as they were");
    Ok(())
}

pub fn check_no_leftovers() -> Result<()> {
    let mut leftovers = Vec::new();
    let netns = output(Command::new("ip").args(["netns", "list"]))?;
    leftovers.extend(
        netns
            .lines()
            .filter(|l| l.starts_with(TEST_PREFIX))
            .map(|l| format!("netns {l}")),
    );
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/routing-peer") {
        leftovers.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(TEST_PREFIX))
                .map(|n| format!("bpffs pin /sys/fs/bpf/routing-peer/{n}")),
        );
    }
    // wireguard-go's UAPI sockets of test interfaces (named <tag><pid>n<k>).
    if let Ok(entries) = std::fs::read_dir("/var/run/wireguard") {
        leftovers.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    let stem = n.trim_end_matches(".sock");
                    stem.len() > 2
                        && stem[1..].contains('n')
                        && stem[1..].chars().all(|c| c.is_ascii_digit() || c == 'n')
                })
                .map(|n| format!("wireguard-go socket /var/run/wireguard/{n}")),
        );
    }
    if let Ok(tables) = output(Command::new("nft").args(["list", "tables"])) {
        leftovers.extend(
            tables
                .lines()
                .filter(|l| l.contains(TEST_PREFIX))
                .map(|l| format!("nftables {l}")),
        );
    }
    if !leftovers.is_empty() {
        bail!("tests left state behind:\n  {}", leftovers.join("\n  "));
    }
    eprintln!("no namespaces, pins, WireGuard sockets or nftables tables left behind");
    Ok(())
}
