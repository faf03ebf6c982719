//! The office walkthrough's world, in namespaces: a laptop and a sales
//! machine running wireguard-go, the routing peer, and the office LAN with
//! real TCP servers. Shared by the end-to-end tests and `cargo xtask demo`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{unique_ifname, veth, wg_keypair, Netns, VethSpec};

pub const ROUTER_LAN: &str = "198.51.100.1";
pub const WIKI: &str = "198.51.100.5";
pub const GRAFANA: &str = "198.51.100.6";
pub const LAPTOP_OVERLAY: &str = "100.64.0.2";
pub const SALES_OVERLAY: &str = "100.64.0.3";
pub const OFFICE_DNS: &str = "198.51.100.53";
pub const ROUTER_OVERLAY: &str = "100.64.0.1";

/// Which WireGuard a client machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgImpl {
    /// wireguard-go on a TUN device: works on any kernel.
    Go,
    /// The kernel's own (`ip link add type wireguard`): needs the module.
    Kernel,
}

/// A client machine running WireGuard toward the routing peer.
pub struct Client {
    pub ns: Netns,
    pub iface: String,
    wg: WgImpl,
    pub public_key: String,
    private_key_file: PathBuf,
    overlay: String,
    endpoint: String,
    router_public_key: String,
}

impl Client {
    /// A machine `tag` with an underlay link to `router` and a key pair.
    pub fn new(
        tag: &str,
        dir: &Path,
        underlay: (&str, &str),
        overlay: &str,
        router: &Netns,
        wg: WgImpl,
    ) -> Result<Self> {
        let ns = Netns::new(tag)?;
        let (router_side, client_side) = underlay;
        let router_if = format!("u{tag}");
        veth(VethSpec {
            a: router,
            a_if: &router_if,
            a_mac: &format!("02:00:00:00:{}:01", mac_byte(tag)),
            a_addr: &format!("{router_side}/30"),
            b: &ns,
            b_if: "eth0",
            b_mac: &format!("02:00:00:00:{}:02", mac_byte(tag)),
            b_addr: &format!("{client_side}/30"),
        })?;
        let (private, public) = wg_keypair()?;
        let private_key_file = dir.join(format!("{tag}.key"));
        crate::write_secret(&private_key_file, &private)?;
        Ok(Self {
            ns,
            iface: unique_ifname("c"),
            wg,
            public_key: public,
            private_key_file,
            overlay: overlay.into(),
            endpoint: format!("{router_side}:51820"),
            router_public_key: String::new(),
        })
    }

    /// Creates the WireGuard interface and configures it with `wg`, as a user would.
    pub fn connect(&mut self, router_public_key: &str) -> Result<()> {
        self.router_public_key = router_public_key.into();
        let iface = &self.iface;
        let create = match self.wg {
            WgImpl::Go => format!("wireguard-go {iface}"),
            WgImpl::Kernel => format!("ip link add {iface} type wireguard"),
        };
        self.ns.sh(&format!(
            "{create} && \
             wg set {iface} private-key {} peer {router_public_key} endpoint {} \
               allowed-ips 100.64.0.0/10,198.51.100.0/24 persistent-keepalive 1 && \
             ip addr add {}/32 dev {iface} && ip link set {iface} mtu 1280 up && \
             ip route add 100.64.0.0/10 dev {iface} && ip route add 198.51.100.0/24 dev {iface}",
            self.private_key_file.display(),
            self.endpoint,
            self.overlay,
        ))?;
        Ok(())
    }

    /// Removes the interface (wireguard-go exits when its TUN device goes).
    pub fn disconnect(&self) -> Result<()> {
        self.ns.ip(&format!("link del {}", self.iface))?;
        Ok(())
    }

    /// A TCP connection from this machine, or an error if it can't be made in time.
    pub fn tcp(&self, to: &str, timeout: Duration) -> Result<TcpStream> {
        let addr: SocketAddr = to.parse()?;
        let stream = self
            .ns
            .enter(move || TcpStream::connect_timeout(&addr, timeout))??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }
}

fn mac_byte(tag: &str) -> &'static str {
    match tag {
        "lap" => "a1",
        "sal" => "b1",
        _ => "c1",
    }
}

/// Sends a line and reads the server's one-line answer.
pub fn exchange(stream: &mut TcpStream, line: &str) -> Result<String> {
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("reading the answer")?;
    if answer.is_empty() {
        anyhow::bail!("connection closed");
    }
    Ok(answer.trim().to_string())
}

/// A line server: answers each line with "<name> saw <client ip>: <line>".
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(ns: &Netns, addr: &str, name: &str) -> Result<Self> {
        let addr: SocketAddr = addr.parse()?;
        let listener = ns.enter(move || TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_string();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let name = name.clone();
                        let flag = flag.clone();
                        thread::spawn(move || serve(stream, peer, &name, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { stop })
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                let answer = format!("{name} saw {}: {}\n", peer.ip(), line.trim());
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A UDP echo server.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: &str) -> Result<Self> {
        let addr: SocketAddr = addr.parse()?;
        let socket = ns.enter(move || std::net::UdpSocket::bind(addr))??;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self { stop })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Office {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // wireguard-go's UAPI sockets are global, not per namespace: make
        // sure none outlives the test, however its process ended.
        for iface in [&self.wg_iface, &self.laptop.iface, &self.sales.iface] {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The whole office, torn down on drop.
pub struct Office {
    pub dir: tempfile::TempDir,
    pub wg: WgImpl,
    /// Resource groups of the Grafana resource (tests vary them).
    pub grafana_groups: Vec<String>,
    /// The Grafana resource's address: its IP, or `grafana.berlin.internal`.
    pub grafana_address: String,
    dnsmasq: Option<std::process::Child>,
    /// More dnsmasq arguments (records), for tests that need them.
    pub dnsmasq_extra: Vec<String>,
    pub wg_iface: String,
    pub router_public_key: String,
    pub router_key_file: PathBuf,
    pub laptop: Client,
    pub sales: Client,
    pub servers: Vec<Server>,
    pub lan: Netns,
    pub router: Netns,
}

impl Office {
    /// The office with wireguard-go clients.
    pub fn new() -> Result<Self> {
        Self::with_wireguard(WgImpl::Go)
    }

    /// The office with clients running `wg`'s flavour of WireGuard.
    pub fn with_wireguard(wg: WgImpl) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let router = Netns::new("rtr")?;
        let lan = Netns::new("lan")?;
        veth(VethSpec {
            a: &router,
            a_if: "lan0",
            a_mac: "02:00:00:00:02:01",
            a_addr: &format!("{ROUTER_LAN}/24"),
            b: &lan,
            b_if: "eth0",
            b_mac: "02:00:00:00:02:02",
            b_addr: &format!("{WIKI}/24"),
        })?;
        lan.ip(&format!("addr add {GRAFANA}/24 dev eth0"))?;
        let laptop = Client::new(
            "lap",
            dir.path(),
            ("203.0.113.1", "203.0.113.2"),
            LAPTOP_OVERLAY,
            &router,
            wg,
        )?;
        let sales = Client::new(
            "sal",
            dir.path(),
            ("203.0.113.5", "203.0.113.6"),
            SALES_OVERLAY,
            &router,
            wg,
        )?;
        let (private, public) = wg_keypair()?;
        let router_key_file = dir.path().join("router.key");
        crate::write_secret(&router_key_file, &private)?;
        let servers = vec![
            Server::start(&lan, &format!("{WIKI}:443"), "wiki")?,
            Server::start(&lan, &format!("{WIKI}:80"), "wiki-http")?,
            Server::start(&lan, &format!("{GRAFANA}:443"), "grafana")?,
        ];
        Ok(Self {
            wg,
            grafana_groups: vec!["Dashboards".into()],
            grafana_address: format!("{GRAFANA}/32"),
            dnsmasq: None,
            dnsmasq_extra: Vec::new(),
            wg_iface: unique_ifname("r"),
            router_public_key: public,
            router_key_file,
            laptop,
            sales,
            servers,
            lan,
            router,
            dir,
        })
    }

    /// The walkthrough's configuration (`examples/berlin-office.toml`, the
    /// one the demo runs), filled in, with `extra` appended.
    pub fn config(&self, extra: &str) -> String {
        include_str!("../examples/berlin-office.toml")
            .replace("@WG_IFACE@", &self.wg_iface)
            .replace(
                "@ROUTER_KEY_FILE@",
                &self.router_key_file.display().to_string(),
            )
            .replace("@LAPTOP_KEY@", &self.laptop.public_key)
            .replace("@SALES_KEY@", &self.sales.public_key)
            .replace("@GRAFANA_ADDRESS@", &self.grafana_address)
            .replace("@GRAFANA_GROUPS@", &format!("{:?}", self.grafana_groups))
            + extra
    }

    pub fn write_config(&self, extra: &str) -> Result<PathBuf> {
        let path = self.dir.path().join("routing-peer.toml");
        let tmp = self.dir.path().join("routing-peer.toml.tmp");
        std::fs::write(&tmp, self.config(extra))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Runs dnsmasq as the office's internal DNS: grafana and wiki, a CNAME
    /// chain (dash → grafana), all with a 1 s TTL for the expiry tests.
    pub fn start_dnsmasq(&mut self) -> Result<()> {
        self.lan.ip(&format!("addr add {OFFICE_DNS}/24 dev eth0"))?;
        let child = self
            .lan
            .cmd("dnsmasq")
            .args([
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={OFFICE_DNS}"),
                "--port=53",
                "--pid-file=",
                "--user=root",
                "--local-ttl=1",
                &format!("--host-record=grafana.berlin.internal,{GRAFANA}"),
                &format!("--host-record=wiki.berlin.internal,{WIKI}"),
                "--cname=dash.berlin.internal,grafana.berlin.internal",
            ])
            .args(&self.dnsmasq_extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting dnsmasq (cargo xtask setup installs it)")?;
        self.dnsmasq = Some(child);
        // Bounded wait until it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if crate::dns_query(
                &self.lan,
                &format!("{OFFICE_DNS}:53"),
                "wiki.berlin.internal",
            )
            .is_ok()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("dnsmasq did not answer within 5 s")
    }

    /// Runs the routing peer's WireGuard as the NetBird agent would (with
    /// `--disable-server-routes`, `wt0` is the agent's): wireguard-go with
    /// the router's key and the clients as peers. routing-peer then runs
    /// with `wireguard = "external"` on it.
    pub fn agent_wireguard(&self) -> Result<()> {
        let iface = &self.wg_iface;
        self.router.sh(&format!(
            "wireguard-go {iface} && \
             wg set {iface} private-key {key} listen-port 51820 \
               peer {laptop} allowed-ips {LAPTOP_OVERLAY}/32 \
               peer {sales} allowed-ips {SALES_OVERLAY}/32 && \
             ip addr add {ROUTER_OVERLAY}/10 dev {iface} && ip link set {iface} mtu 1280 up",
            key = self.router_key_file.display(),
            laptop = self.laptop.public_key,
            sales = self.sales.public_key,
        ))?;
        Ok(())
    }

    /// The file beside `[netbird]`: this gateway's own settings, as
    /// `examples/netbird.toml` gives them, pointed at `api`.
    pub fn netbird_config(&self, url: &str, token_file: &Path, poll_secs: u64) -> Result<PathBuf> {
        let text = include_str!("../examples/netbird.toml")
            .replace("@WG_IFACE@", &self.wg_iface)
            .replace("@MANAGEMENT_URL@", url)
            .replace("@TOKEN_FILE@", &token_file.display().to_string())
            .replace(
                "poll_secs = 30",
                &format!("poll_secs = {poll_secs}\ntimeout_secs = 1"),
            );
        let path = self.dir.path().join("netbird.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Connects both clients' wireguard-go to the routing peer.
    pub fn connect_clients(&mut self) -> Result<()> {
        let key = self.router_public_key.clone();
        self.laptop.connect(&key)?;
        self.sales.connect(&key)
    }
}
