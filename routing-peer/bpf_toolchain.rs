// Shared by `routing-peer/build.rs` and `xtask` (through `include!`), so the
// BPF build and the BPF lints use one definition of the toolchain.
//
// rustup's toolchains here have no `rust-src`, so `-Zbuild-std` is out;
// Debian's rustc-web ships a prebuilt `core` for the BPF target instead.

pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const BPF_RUSTFLAGS: &[&str] = &[
    "--cfg",
    "bpf_target_arch=\"x86_64\"",
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
];

/// Debian's cargo in `ebpf_dir`, scrubbed of the outer (rustup) cargo's
/// settings, which would otherwise leak into the BPF build.
pub fn debian_bpf_cargo(ebpf_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(DEBIAN_CARGO);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO") || key.starts_with("RUST") {
            cmd.env_remove(key.as_ref());
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let home = std::env::var("HOME").unwrap_or_default();
    cmd.current_dir(ebpf_dir)
        // /usr/bin first: Debian's cargo-clippy, not rustup's.
        .env("PATH", format!("/usr/bin:{path}:{home}/.cargo/bin"))
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf needs `asm_experimental_arch` on a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", BPF_RUSTFLAGS.join("\x1f"));
    cmd
}

/// Names the first missing toolchain piece, so the error is one line
/// rather than a wall of linker output.
pub fn missing_bpf_toolchain() -> Option<String> {
    use std::path::Path;
    if !Path::new(DEBIAN_RUSTC).exists() || !Path::new(DEBIAN_CARGO).exists() {
        return Some("Debian's rustc-web and cargo-web (/usr/bin/rustc, /usr/bin/cargo)".into());
    }
    if !Path::new(BPF_CORE).exists() {
        return Some(format!("libstd-rust-web-dev-bpf ({BPF_CORE})"));
    }
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    if !dirs.iter().any(|d| d.join("bpf-linker").exists()) {
        return Some("bpf-linker 0.13.0".into());
    }
    None
}
