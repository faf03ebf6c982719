//! `cargo xtask vm-test`: the kernel WireGuard path and the kernel matrix.
//!
//! The host kernel has no WireGuard, so Debian's own kernels boot under QEMU
//! (TCG: KVM is unusable here) from a minimal initramfs carrying busybox,
//! iproute2, wireguard-tools, the kernel's modules and the project's test
//! binaries. The guest's `/init` runs the VM suite and prints one marker
//! line per step and one for the result; QEMU's own exit status says nothing
//! about the guest, so the markers are the verdict.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util::{self, output, run_cmd, step};

/// A Debian kernel the suite runs on, found by its package name.
struct KernelSpec {
    label: &'static str,
    /// Matches the signed image packages of this series; the newest wins.
    package_regex: &'static str,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.12",
        package_regex: r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64$",
    },
    KernelSpec {
        label: "6.1",
        package_regex: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
];

/// Modules the suite needs on top of what Debian builds in; their
/// dependencies are resolved with modprobe against the package's tree.
const MODULES: &[&str] = &["wireguard", "veth", "sch_ingress", "cls_bpf", "nf_tables"];

/// Upper bound for one kernel's boot and suite.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

const RESULT_MARKER: &str = "RP-VM-RESULT";
const STEP_MARKER: &str = "RP-VM-STEP";

/// The steps `/init` runs: (name, binary in the guest, arguments).
const SUITE: &[(&str, &str, &str)] = &[
    (
        "packet tests (BPF_PROG_TEST_RUN)",
        "/tests/packet-tests",
        "datapath:: --include-ignored --test-threads=2",
    ),
    (
        "programs attach on veth (TC + XDP)",
        "/tests/datapath_veth",
        "--include-ignored --test-threads=1",
    ),
    (
        "daemon in kernel WireGuard mode",
        "/tests/kernel_wireguard",
        "--include-ignored --test-threads=1",
    ),
];

/// `only`: run just the suite steps whose name contains it (development).
pub fn run(which: &str, only: Option<&str>) -> Result<()> {
    let selected: Vec<&KernelSpec> = match which {
        "all" => KERNELS.iter().collect(),
        label => vec![KERNELS
            .iter()
            .find(|k| k.label == label)
            .with_context(|| format!("--kernel {label}: expected one of 6.12, 6.1 or all"))?],
    };
    let work = util::workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let binaries = build_binaries()?;
    let mut results = Vec::new();
    for kernel in selected {
        step(&format!("vm-test: kernel {}", kernel.label));
        let started = Instant::now();
        let outcome = fetch_kernel(kernel, &work)
            .and_then(|k| {
                let initrd = build_initramfs(&k, &binaries, &work, only)?;
                boot_retrying(&k, &initrd, &work)
            })
            .with_context(|| format!("kernel {}", kernel.label));
        let secs = started.elapsed().as_secs();
        match &outcome {
            Ok(version) => eprintln!("vm-test: {version}: PASS in {secs} s"),
            Err(e) => eprintln!("vm-test: kernel {}: FAIL in {secs} s: {e:#}", kernel.label),
        }
        results.push((kernel.label, outcome.is_ok(), secs));
    }
    step("vm-test summary");
    for (label, ok, secs) in &results {
        eprintln!(
            "  {label:<6} {}  {secs:>4} s",
            if *ok { "pass" } else { "FAIL" }
        );
    }
    if results.iter().any(|(_, ok, _)| !ok) {
        bail!("vm-test failed");
    }
    Ok(())
}

/// Host paths of the binaries the guest runs.
struct Binaries {
    routing_peer: PathBuf,
    /// (name in the guest's /tests, host path)
    tests: Vec<(&'static str, PathBuf)>,
}

fn build_binaries() -> Result<Binaries> {
    step("vm-test: building the daemon and the test binaries");
    util::cargo(&["build", "--locked", "-p", "routing-peer"])?;
    let packet = test_executables(&["-p", "routing-peer", "--lib"])?;
    let e2e = test_executables(&[
        "-p",
        "routing-peer-testbed",
        "--test",
        "datapath_veth",
        "--test",
        "kernel_wireguard",
    ])?;
    let pick = |list: &BTreeMap<String, PathBuf>, name: &str| {
        list.get(name)
            .cloned()
            .with_context(|| format!("cargo built no test executable {name}"))
    };
    Ok(Binaries {
        routing_peer: util::workspace_root().join("target/debug/routing-peer"),
        tests: vec![
            ("packet-tests", pick(&packet, "routing_peer")?),
            ("datapath_veth", pick(&e2e, "datapath_veth")?),
            ("kernel_wireguard", pick(&e2e, "kernel_wireguard")?),
        ],
    })
}

/// Builds test targets without running them: target name → executable.
fn test_executables(selection: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let stdout = output(
        Command::new(cargo)
            .current_dir(util::workspace_root())
            .args(["test", "--locked", "--no-run", "--message-format=json"])
            .args(selection)
            .stderr(Stdio::inherit()),
    )?;
    let mut found = BTreeMap::new();
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.replace('-', "_"), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// One unpacked kernel package.
struct Kernel {
    /// `uname -r` of the kernel.
    version: String,
    root: PathBuf,
}

impl Kernel {
    fn image(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// Downloads and unpacks the newest package of `spec`'s series, once.
fn fetch_kernel(spec: &KernelSpec, work: &Path) -> Result<Kernel> {
    let listing =
        output(Command::new("apt-cache").args(["search", "--names-only", spec.package_regex]))?;
    let package = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| version_key(name))
        .with_context(|| {
            format!(
                "apt knows no package matching {} (is bookworm-security in the sources?)",
                spec.package_regex
            )
        })?
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = work.join(&package);
    let kernel = Kernel { version, root };
    if kernel.modules().join("modules.dep").exists() && kernel.image().exists() {
        return Ok(kernel);
    }
    eprintln!("fetching {package}");
    let download = work.join("debs");
    fs::create_dir_all(&download)?;
    let fetch = || {
        run_cmd(
            Command::new("apt-get")
                .current_dir(&download)
                .args(["download", "-q", &package]),
        )
    };
    if fetch().is_err() {
        // Stale package lists name a version the mirror no longer has.
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        fetch()?;
    }
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let _ = fs::remove_dir_all(&kernel.root);
    run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&kernel.root))?;
    // The package ships no modules.dep (the postinst makes it).
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(&kernel.root)
            .arg(&kernel.version),
    )?;
    fs::remove_file(&deb)?;
    Ok(kernel)
}

/// Orders package names by the numbers in them: 6.12.117 > 6.12.99.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Modules to insert, dependencies first, as paths inside the package.
fn module_load_order(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut order: Vec<PathBuf> = Vec::new();
    for module in MODULES {
        let deps = output(Command::new("modprobe").arg("-d").arg(&kernel.root).args([
            "-S",
            &kernel.version,
            "--show-depends",
            module,
        ]))?;
        for line in deps.lines() {
            // "insmod /path/x.ko.xz [params]"; "builtin x" needs nothing.
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
            if !order.contains(&path) {
                order.push(path);
            }
        }
    }
    Ok(order)
}

/// A newc archive under construction: guest path → what goes there.
#[derive(Default)]
struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

impl Initramfs {
    fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.trim_matches('/').split('/') {
            at = format!("{at}/{part}");
            self.entries.entry(at.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                self.dir(parent);
            }
        }
    }

    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parent(path);
        self.entries.insert(path.into(), Entry::File { data, mode });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entries
            .insert(path.into(), Entry::Symlink(target.into()));
    }

    /// A host executable and the shared libraries it loads, at `path`.
    fn executable(&mut self, path: &str, host: &Path) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, data, 0o755);
        let ldd = Command::new("ldd").arg(host).output()?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                if !self.entries.contains_key(lib) {
                    let data = fs::read(lib).with_context(|| format!("reading {lib}"))?;
                    self.file(lib, data, 0o755);
                }
            }
        }
        Ok(())
    }

    /// A binary without its debug info: the guest only runs it.
    fn stripped(&mut self, path: &str, host: &Path, scratch: &Path) -> Result<()> {
        let out = scratch.join(path.trim_start_matches('/').replace('/', "_"));
        run_cmd(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(host)
                .arg(&out),
        )?;
        self.executable(path, &out)
    }

    fn write(self, to: &Path) -> Result<()> {
        let file = fs::File::create(to)?;
        let mut out = std::io::BufWriter::new(file);
        for (ino, (path, entry)) in self.entries.into_iter().enumerate() {
            let name = path.trim_start_matches('/');
            let builder = cpio::NewcBuilder::new(name)
                .ino(ino as u32 + 1)
                .uid(0)
                .gid(0)
                .nlink(1);
            let (builder, data): (_, &[u8]) = match &entry {
                Entry::Dir => (builder.mode(0o040755).nlink(2), &[]),
                Entry::File { data, mode } => (builder.mode(0o100000 | mode), data),
                Entry::Symlink(target) => (builder.mode(0o120777), target.as_bytes()),
            };
            let mut writer = builder.write(&mut out, data.len() as u32);
            writer.write_all(data)?;
            writer.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        out.flush()?;
        Ok(())
    }
}

/// The guest's init: mounts, modules, then the suite, with markers.
fn init_script(modules: &[String], only: Option<&str>) -> String {
    let mut script = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         export ROUTING_PEER_BIN=/usr/bin/routing-peer RUST_BACKTRACE=1 HOME=/root\n\
         export RP_FUZZ_FRAMES=5000\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /run/netns /root\n\
         ip link set lo up\n\
         echo \"RP-VM-KERNEL $(uname -r)\"\n",
    );
    for m in modules {
        script.push_str(&format!(
            "insmod {m} || echo \"{STEP_MARKER} load {m}: fail\"\n"
        ));
    }
    script.push_str("result=pass\n");
    let selected = SUITE
        .iter()
        .filter(|(name, ..)| only.is_none_or(|o| name.contains(o)));
    for (name, binary, args) in selected {
        script.push_str(&format!(
            "echo \"{STEP_MARKER} {name}: start\"\n\
             if {binary} {args}; then echo \"{STEP_MARKER} {name}: pass\"; \
             else echo \"{STEP_MARKER} {name}: fail\"; result=fail; fi\n"
        ));
    }
    script.push_str(&format!(
        "echo \"{RESULT_MARKER} $result\"\n\
         sync\n\
         poweroff -f\n"
    ));
    script
}

fn build_initramfs(
    kernel: &Kernel,
    binaries: &Binaries,
    work: &Path,
    only: Option<&str>,
) -> Result<PathBuf> {
    let scratch = work.join("scratch");
    fs::create_dir_all(&scratch)?;
    let mut fs = Initramfs::default();
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc"] {
        fs.dir(dir);
    }
    fs.symlink("/var/run", "/run");
    fs.executable("/bin/busybox", Path::new("/bin/busybox"))?;
    let applets = output(Command::new("/bin/busybox").arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        fs.symlink(&format!("/bin/{applet}"), "busybox");
    }
    // The real tools: busybox's ip knows neither netns nor WireGuard, and
    // its sh and nsenter run their own applets before anything on PATH.
    for tool in [
        "/usr/sbin/ip",
        "/usr/bin/wg",
        "/usr/bin/nsenter",
        "/usr/sbin/sysctl",
        "/usr/sbin/nft",
        "/bin/bash",
    ] {
        fs.executable(tool, Path::new(tool))?;
    }
    fs.symlink("/bin/sh", "bash");
    fs.stripped("/usr/bin/routing-peer", &binaries.routing_peer, &scratch)?;
    for (name, host) in &binaries.tests {
        fs.stripped(&format!("/tests/{name}"), host, &scratch)?;
    }
    let mut guest_modules = Vec::new();
    for module in module_load_order(kernel)? {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("module name")?
            .to_string();
        // busybox insmod reads plain ELF only.
        let (name, data) = if let Some(stem) = name.strip_suffix(".xz") {
            (stem.to_string(), decompress("xz", &module)?)
        } else if let Some(stem) = name.strip_suffix(".zst") {
            (stem.to_string(), decompress("zstd", &module)?)
        } else {
            let data = fs::read(&module)?;
            (name, data)
        };
        let path = format!("/modules/{name}");
        fs.file(&path, data, 0o644);
        guest_modules.push(path);
    }
    fs.file(
        "/init",
        init_script(&guest_modules, only).into_bytes(),
        0o755,
    );
    let path = work.join(format!("initramfs-{}.cpio", kernel.version));
    fs.write(&path)?;
    Ok(path)
}

fn decompress(tool: &str, path: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool).arg("-dc").arg(path).output()?;
    if !out.status.success() {
        bail!("{tool} -dc {}: {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// Boots `kernel` with `initrd` and follows the serial console until the
/// result marker, the guest's end or the timeout. Returns `uname -r`.
/// A guest that died before our `/init` said a word: the kernel's own boot
/// under TCG (an emulation flake, e.g. an int3 oops while patching code),
/// not the suite.
#[derive(Debug)]
struct DiedBeforeInit(String);

impl std::fmt::Display for DiedBeforeInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest kernel died before /init ran (console: {})",
            self.0
        )
    }
}

impl std::error::Error for DiedBeforeInit {}

/// Boots, and boots again (at most twice more) when the guest died before
/// `/init`: a failure of the suite itself is never retried.
fn boot_retrying(kernel: &Kernel, initrd: &Path, work: &Path) -> Result<String> {
    const BOOTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match boot(kernel, initrd, work) {
            Err(e) if attempt < BOOTS && e.downcast_ref::<DiedBeforeInit>().is_some() => {
                eprintln!("vm-test: {e}; booting again ({attempt} of {BOOTS})");
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn boot(kernel: &Kernel, initrd: &Path, work: &Path) -> Result<String> {
    let log_path = work.join(format!("console-{}.log", kernel.version));
    let mut log = fs::File::create(&log_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel.image())
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=3 mitigations=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut result = None;
    let mut failed_steps = Vec::new();
    let mut version = kernel.version.clone();
    let mut init_ran = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                let line = line.trim_end_matches('\r');
                eprintln!("[{}] {line}", kernel.version);
                if let Some(v) = line.strip_prefix("RP-VM-KERNEL ") {
                    version = v.trim().to_string();
                    init_ran = true;
                }
                if let Some(step) = line.strip_prefix(STEP_MARKER) {
                    if step.ends_with(": fail") {
                        failed_steps.push(step.trim().trim_end_matches(": fail").to_string());
                    }
                }
                if let Some(r) = line.strip_prefix(RESULT_MARKER) {
                    result = Some(r.trim() == "pass");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "timed out after {} s (console: {})",
                    GUEST_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = child.wait();
    match result {
        Some(true) if failed_steps.is_empty() => Ok(version),
        Some(_) => bail!(
            "failed: {} (console: {})",
            failed_steps.join("; "),
            log_path.display()
        ),
        None if !init_ran => Err(DiedBeforeInit(log_path.display().to_string()).into()),
        None => bail!(
            "the guest ended without a result (console: {})",
            log_path.display()
        ),
    }
}
