//! Test harness: throwaway network namespaces and daemons that clean up on
//! every exit path (their `Drop` runs on success, failure and panic).
//!
//! Names are unique per process and per call, so tests run in parallel and
//! beside a CI run on the same machine. Interfaces live inside the test's
//! namespaces, so their names need not be unique.

use std::{
    fs::File,
    net::UdpSocket,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub mod netbird_api;
pub mod office;

/// Prefix of every namespace and instance a test creates (`xtask` checks it).
pub const TEST_PREFIX: &str = "rpt";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name no other test (in this or another process) uses.
pub fn unique_name(tag: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{TEST_PREFIX}{}-{n}-{tag}", std::process::id())
}

/// The daemon binary under test.
pub fn routing_peer_bin() -> PathBuf {
    let path = std::env::var_os("ROUTING_PEER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/routing-peer")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build` (or `cargo xtask test`)",
        path.display()
    );
    path
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        // Quiet namespaces: no IPv6 autoconf chatter unless a test asks for v6.
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// A command run inside this namespace. Only the network namespace is
    /// entered: `ip netns exec` would also remount /sys and hide bpffs pins.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    pub fn ip(&self, args: &str) -> Result<Output> {
        run(self.cmd("ip").args(args.split_whitespace()))
    }

    pub fn sh(&self, script: &str) -> Result<Output> {
        run(self.cmd("sh").args(["-c", script]))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// opens belong to the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        let handle = thread::spawn(move || {
            // SAFETY: setns on an fd we own; affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
            .context("setns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes keep a namespace alive after `ip netns del`: stop them
        // (wireguard-go, dnsmasq, servers) first, politely so that they
        // clean up (wireguard-go removes its UAPI socket), then for sure.
        let pids = || -> Vec<i32> {
            Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            let running = pids();
            if running.is_empty() {
                break;
            }
            for pid in running {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, signal) };
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && !pids().is_empty() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An interface name unique on this machine (at most 15 bytes). Needed for
/// wireguard-go, whose UAPI socket path is global, not per namespace.
pub fn unique_ifname(tag: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}n{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

/// A WireGuard key pair (private, public), base64, from `wg`.
/// Writes a secret (a private key) readable by its owner only, as the
/// daemon demands.
pub fn write_secret(path: &std::path::Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}

pub fn wg_keypair() -> Result<(String, String)> {
    let private = String::from_utf8(run(Command::new("wg").arg("genkey"))?.stdout)?
        .trim()
        .to_string();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((private, String::from_utf8(out.stdout)?.trim().to_string()))
}

/// Connects `a` and `b` with a veth pair: `a_if` in `a`, `b_if` in `b`, with
/// fixed MACs and addresses, up.
pub struct VethSpec<'a> {
    pub a: &'a Netns,
    pub a_if: &'a str,
    pub a_mac: &'a str,
    pub a_addr: &'a str,
    pub b: &'a Netns,
    pub b_if: &'a str,
    pub b_mac: &'a str,
    pub b_addr: &'a str,
}

pub fn veth(spec: VethSpec<'_>) -> Result<()> {
    veth_queues(spec, 1)
}

/// A veth pair with `queues` receive and transmit queues on each end (veth
/// picks the receiving queue of an XDP frame by CPU, so each CPU gets its own).
pub fn veth_queues(spec: VethSpec<'_>, queues: u32) -> Result<()> {
    spec.a.ip(&format!(
        "link add {} address {} numtxqueues {queues} numrxqueues {queues} type veth \
         peer name {} address {} numtxqueues {queues} numrxqueues {queues} netns {}",
        spec.a_if, spec.a_mac, spec.b_if, spec.b_mac, spec.b.name
    ))?;
    spec.a
        .ip(&format!("addr add {} dev {}", spec.a_addr, spec.a_if))?;
    spec.b
        .ip(&format!("addr add {} dev {}", spec.b_addr, spec.b_if))?;
    spec.a.ip(&format!("link set {} up", spec.a_if))?;
    spec.b.ip(&format!("link set {} up", spec.b_if))?;
    // Static neighbours: no ARP, so packet counts are exact.
    let a_ip = spec.a_addr.split('/').next().unwrap();
    let b_ip = spec.b_addr.split('/').next().unwrap();
    spec.a.ip(&format!(
        "neigh replace {b_ip} lladdr {} dev {} nud permanent",
        spec.b_mac, spec.a_if
    ))?;
    spec.b.ip(&format!(
        "neigh replace {a_ip} lladdr {} dev {} nud permanent",
        spec.a_mac, spec.b_if
    ))?;
    Ok(())
}

/// A running `routing-peer run`, stopped and brought `down` on drop.
pub struct Daemon {
    pub instance: String,
    netns: String,
    args: Vec<String>,
    child: Option<Child>,
    /// Where its log goes (else the test's stderr).
    pub log: Option<PathBuf>,
}

impl Daemon {
    /// Starts `routing-peer run --config <config> <extra>` in `ns`, and waits
    /// (bounded) until its programs are attached.
    pub fn start(ns: &Netns, config: &std::path::Path, extra: &[&str]) -> Result<Self> {
        Self::launch(ns, config, extra, None)
    }

    /// As `start`, with the log kept in `log` (appended across restarts).
    pub fn start_logged(
        ns: &Netns,
        config: &std::path::Path,
        extra: &[&str],
        log: PathBuf,
    ) -> Result<Self> {
        Self::launch(ns, config, extra, Some(log))
    }

    fn launch(
        ns: &Netns,
        config: &std::path::Path,
        extra: &[&str],
        log: Option<PathBuf>,
    ) -> Result<Self> {
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Self {
            instance: unique_name("d"),
            netns: ns.name.clone(),
            args,
            child: None,
            log,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// The log so far (empty without `start_logged`).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(routing_peer_bin())
            .args(["--instance", &self.instance, "run"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ),
                None => Stdio::inherit(),
            })
            .spawn()?;
        self.child = Some(child);
        self.wait_until_running()
    }

    fn wait_until_running(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = PathBuf::from("/run/routing-peer")
            .join(&self.instance)
            .join("state.json");
        let pid = self.child.as_ref().unwrap().id();
        while Instant::now() < deadline {
            // The daemon writes its pid, then its state once everything is
            // attached; nsenter execs it, so the pid is our child's, and a
            // restarted daemon is not mistaken for its predecessor.
            let pid_file = state.with_file_name("pid");
            // "<pid> <start time>"
            let running = std::fs::read_to_string(&pid_file).ok().and_then(|p| {
                p.split_whitespace()
                    .next()
                    .and_then(|w| w.parse::<u32>().ok())
            });
            if running == Some(pid) && state.exists() && self.control_answers() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("daemon exited early: {status}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("daemon did not come up within 30 s")
    }

    fn control_answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(
            PathBuf::from("/run/routing-peer")
                .join(&self.instance)
                .join("control.sock"),
        )
        .is_ok()
    }

    /// Stops the daemon as an upgrade or crash would: the data path stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A fresh start must not mistake the old socket for the new daemon.
        let _ = std::fs::remove_file(
            PathBuf::from("/run/routing-peer")
                .join(&self.instance)
                .join("control.sock"),
        );
    }

    /// Starts the same instance again; it adopts the pinned state.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Sends SIGHUP (reload).
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        }
    }

    /// Runs a CLI subcommand against this instance and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new(routing_peer_bin())
            .args(["--instance", &self.instance])
            .args(args))?;
        Ok(String::from_utf8(out.stdout)?)
    }

    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli(args)?)?)
    }

    pub fn stats_json(&self) -> Result<serde_json::Value> {
        self.cli_json(&["stats", "--json"])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // In the daemon's namespace: `down` there never touches the host's.
        let down = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(routing_peer_bin())
            .args(["--instance", &self.instance, "down"])
            .output();
        // Said, not panicked: the leftover check after the suite fails on it.
        match down {
            Ok(out) if !out.status.success() => eprintln!(
                "routing-peer down {}: {}",
                self.instance,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("routing-peer down {}: {e}", self.instance),
            _ => {}
        }
    }
}

/// Sends `count` UDP datagrams of `payload_len` bytes from inside `ns`.
pub fn send_udp(ns: &Netns, to: &str, count: usize, payload_len: usize) -> Result<()> {
    let to = to.to_string();
    ns.enter(move || -> Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let payload = vec![0x5a; payload_len];
        for _ in 0..count {
            socket.send_to(&payload, &to)?;
        }
        Ok(())
    })?
}

/// Sends one raw Ethernet frame out of `iface` inside `ns` (AF_PACKET).
pub fn send_raw_frame(ns: &Netns, iface: &str, frame: Vec<u8>) -> Result<()> {
    let iface = std::ffi::CString::new(iface)?;
    ns.enter(move || -> Result<()> {
        // SAFETY: FFI with owned, correctly sized arguments; the fd is closed below.
        unsafe {
            let ifindex = libc::if_nametoindex(iface.as_ptr());
            if ifindex == 0 {
                bail!("no interface {iface:?}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            if sent != frame.len() as isize {
                bail!("sendto: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    })?
}

/// Polls `probe` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("condition not reached within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// One DNS query over UDP from inside `ns`: (response code, A/AAAA addresses).
pub fn dns_query(ns: &Netns, server: &str, name: &str) -> Result<(String, Vec<std::net::IpAddr>)> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let server: std::net::SocketAddr = server.parse()?;
    let mut query = Message::query();
    query.metadata.id = 4242;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let bytes = query.to_vec()?;
    let reply = ns.enter(move || -> Result<Vec<u8>> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(&bytes, server)?;
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    })??;
    let reply = Message::from_vec(&reply)?;
    let addrs = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok((reply.metadata.response_code.to_string(), addrs))
}
