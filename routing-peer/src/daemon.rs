//! `routing-peer run`: bring up WireGuard, the data path and the policy, then
//! keep them in step with the configuration file until told to stop.
//!
//! Stopping the daemon (SIGTERM, a crash, an upgrade) leaves the data path
//! running: programs stay attached through pinned links, flows stay in the
//! pinned conntrack map, wireguard-go keeps its tunnels. The next start
//! adopts all of it. `routing-peer down` is what tears it down.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;

use anyhow::{Context, Result};
use aya::Ebpf;
use routing_peer_common::{map_names, program_names, DatapathConfig};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, error, info, warn};

use crate::{
    compile::{self, Compiled},
    config::ParseCache,
    config::{Config, WireguardMode},
    control::{self, PeerReport, ProgramReport, SharedStatus, Status},
    datapath::{
        self, gc, ports, safety_net,
        tables::{DestPrefix, PolicyState},
        PinDir,
    },
    dns, identity, sysctl,
    wireguard::{self, Backend, DeviceSpec},
};

pub struct RunOptions {
    pub config_path: PathBuf,
    pub instance: String,
    pub wireguard: Option<WireguardMode>,
    pub verbose_datapath: bool,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The data path's run-time settings from the configuration.
pub fn datapath_config(config: &Config) -> DatapathConfig {
    let ct = &config.conntrack;
    let ns = |s: u64| s * 1_000_000_000;
    let defaults = DatapathConfig::default();
    let (lo, hi) = config
        .routing_peer
        .snat_ports
        .map(|r| (r.start as u16, r.end as u16))
        .unwrap_or((defaults.snat_port_min, defaults.snat_port_max));
    DatapathConfig {
        snat_port_min: lo,
        snat_port_max: hi,
        mss_clamp: config.routing_peer.mtu.saturating_sub(40),
        tcp_established_ns: ns(ct.tcp_established_secs),
        tcp_transitory_ns: ns(ct.tcp_transitory_secs),
        udp_ns: ns(ct.udp_secs),
        udp_unreplied_ns: ns(ct.udp_unreplied_secs),
        icmp_ns: ns(ct.icmp_secs),
        tcp_reset_ns: ns(ct.tcp_reset_secs),
        ..defaults
    }
}

/// The routing peer's own addresses: overlay and every LAN interface's.
/// The routing peer's own addresses: the overlay's and every address of
/// its namespace, on any interface (the data path asks the FIB for the
/// rest; this list serves the compiled tables and `policy check`).
fn self_addresses(config: &Config) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = config
        .routing_peer
        .overlay_addresses
        .iter()
        .map(|n| n.addr())
        .collect();
    for ip in datapath::local_addresses() {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

struct Daemon {
    opts: RunOptions,
    config: Config,
    ebpf: Ebpf,
    policy: PolicyState,
    wg: Backend,
    compiled: Compiled,
    status: SharedStatus,
    peers_up: HashMap<String, bool>,
    /// Per peer: received bytes last seen, and when they last grew.
    peers_rx: HashMap<String, (u64, std::time::Instant)>,
    /// Domain resource name → resolved address → when it expires.
    resolved: HashMap<String, HashMap<IpAddr, Instant>>,
    nat_unused: HashSet<routing_peer_common::NatEndpoint>,
    dns_view: Arc<RwLock<dns::View>>,
    dns_counters: Arc<dns::Counters>,
    dns_installs: mpsc::Receiver<dns::Install>,
    /// Parsed entries of the file, so a reload reparses only what changed.
    parse_cache: ParseCache,
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut parse_cache = ParseCache::default();
    let read_started = std::time::Instant::now();
    let (loaded, _) = parse_cache.load(&opts.config_path)?;
    let read_ms = read_started.elapsed().as_millis() as u64;
    for w in &loaded.warnings {
        warn!(file = %opts.config_path.display(), field = %w.field, "{}", w.message);
    }
    let config = loaded.config;
    let rp = config.routing_peer.clone();
    let pins = PinDir::new(&opts.instance);

    let run_dir = control::run_dir(&opts.instance);
    std::fs::create_dir_all(&run_dir)?;
    identity::record(&run_dir)?;

    let mode = opts.wireguard.unwrap_or(rp.wireguard);
    let mut wg = Backend::start(&rp.overlay_interface, mode)
        .with_context(|| format!("starting WireGuard on {}", rp.overlay_interface))?;
    if wg.mode() != WireguardMode::External {
        wg.configure(&DeviceSpec::from_config(&config)?)?;
        wireguard::configure_link(&rp.overlay_interface, &rp.overlay_addresses, rp.mtu)?;
    }
    info!(mode = ?wg.mode(), iface = %rp.overlay_interface, "WireGuard configured");

    // Before forwarding is switched on: the kernel forwards nothing to or
    // from the overlay that the programs did not hand over.
    safety_net::install(&opts.instance, &rp.overlay_interface)
        .context("installing the safety-net table")?;
    let pool = datapath_config(&config);
    let mut sysctls = sysctl::wanted(&rp.overlay_interface, &rp.lan_interfaces);
    sysctls.extend(sysctl::snat_reservation(
        (pool.snat_port_min, pool.snat_port_max),
        sysctl::local_port_range(),
    ));
    sysctl::apply(
        &sysctls,
        &control::run_dir(&opts.instance).join("sysctl.json"),
    )?;

    let adopting = pins.exists();
    let sizes = [(map_names::CONNTRACK, config.conntrack.max_flows)];
    let mut ebpf = datapath::load(
        Some(&pins),
        datapath::log_level_for(opts.verbose_datapath),
        &sizes,
    )
    .context("loading the data path")?;
    let mut policy = if adopting {
        info!(pins = %pins.root().display(), "adopting the pinned data path");
        PolicyState::adopt(&mut ebpf)?
    } else {
        PolicyState::init(&mut ebpf, datapath_config(&config))?
    };
    policy.set_config(&mut ebpf, datapath_config(&config))?;
    // An adopted data path keeps its ids: live flows and counters refer to them.
    let previous = adopting
        .then(|| control::read_names(&opts.instance))
        .flatten();
    let own = self_addresses(&config);
    let compile_started = std::time::Instant::now();
    let compiled = compile::compile(
        &config,
        &own,
        &HashMap::new(),
        previous
            .as_ref()
            .map(compile::Previous::from)
            .unwrap_or_default(),
    );
    let compile_ms = compile_started.elapsed().as_millis() as u64;
    let install_started = std::time::Instant::now();
    let diff = policy.install(&mut ebpf, &compiled.tables)?;
    info!(
        read_ms,
        compile_ms,
        install_ms = install_started.elapsed().as_millis() as u64,
        written = diff.written,
        removed = diff.removed,
        peer_classes = compiled.peer_classes,
        dest_classes = compiled.dest_classes,
        generation = policy.config.policy_gen,
        "policy installed"
    );

    let mut programs = Vec::new();
    let overlay_program = datapath::overlay_program_for(&rp.overlay_interface)?;
    datapath::attach_tc(&mut ebpf, overlay_program, &rp.overlay_interface, &pins)?;
    programs.push(ProgramReport {
        program: overlay_program.into(),
        hook: "tc-ingress (tcx)".into(),
        interface: rp.overlay_interface.clone(),
    });
    let l3_overlay: Vec<String> = if overlay_program == program_names::OVERLAY_L3 {
        vec![rp.overlay_interface.clone()]
    } else {
        // An L2 overlay gets the skb-less XDP path too.
        datapath::attach_xdp(
            &mut ebpf,
            program_names::OVERLAY_XDP,
            &rp.overlay_interface,
            &pins,
        )?;
        programs.push(ProgramReport {
            program: program_names::OVERLAY_XDP.into(),
            hook: "xdp".into(),
            interface: rp.overlay_interface.clone(),
        });
        Vec::new()
    };
    datapath::set_iface_map(&mut ebpf, map_names::L3_IFACES, &l3_overlay)?;
    datapath::set_iface_map(
        &mut ebpf,
        map_names::XDP_REDIRECT_IFACES,
        &rp.xdp_redirect_interfaces,
    )?;
    for lan in &rp.lan_interfaces {
        datapath::attach_xdp(&mut ebpf, program_names::LAN_XDP, lan, &pins)?;
        datapath::attach_tc(&mut ebpf, program_names::LAN_TC, lan, &pins)?;
        programs.push(ProgramReport {
            program: program_names::LAN_XDP.into(),
            hook: "xdp".into(),
            interface: lan.clone(),
        });
        programs.push(ProgramReport {
            program: program_names::LAN_TC.into(),
            hook: "tc-ingress (tcx)".into(),
            interface: lan.clone(),
        });
    }

    let public_key = std::fs::read_to_string(&rp.private_key_file)
        .ok()
        .and_then(|k| wireguard::decode_key("private key", &k).ok())
        .map(|k| wireguard::encode_key(&wireguard::public_key(&k)))
        .unwrap_or_default();
    let status = Arc::new(Mutex::new(Status {
        instance: opts.instance.clone(),
        name: rp.name.clone(),
        wireguard_mode: wg.mode(),
        interface: rp.overlay_interface.clone(),
        listen_port: rp.listen_port,
        public_key,
        metric: rp.metric,
        config_path: opts.config_path.display().to_string(),
        generation: policy.config.policy_gen,
        last_reload_unix: unix_now(),
        peers: Vec::new(),
        programs,
        resolved: Vec::new(),
        dns: dns::CounterSnapshot::default(),
        self_addresses: own,
        safety_net_table: safety_net::table_name(&opts.instance),
        names: Arc::default(),
    }));
    share_names(&status, &opts.instance, &compiled.names)?;
    record_applied(&opts.instance, parse_cache.last_text());
    let dns_view = Arc::new(RwLock::new(dns::View::new(&config, &compiled)));
    let dns_counters = Arc::new(dns::Counters::default());
    let (install_tx, dns_installs) = mpsc::channel(64);
    let forwarder = dns::Forwarder {
        view: dns_view.clone(),
        counters: dns_counters.clone(),
        install: install_tx,
    };
    for addr in &rp.overlay_addresses {
        let bind = std::net::SocketAddr::new(addr.addr(), config.dns.port);
        let fwd = forwarder.clone();
        tokio::spawn(async move {
            if let Err(e) = fwd.serve(bind).await {
                error!("DNS forwarder on {bind}: {e:#}");
            }
        });
    }
    let mut daemon = Daemon {
        opts,
        config,
        ebpf,
        policy,
        wg,
        compiled,
        status,
        peers_up: HashMap::new(),
        peers_rx: HashMap::new(),
        resolved: HashMap::new(),
        nat_unused: HashSet::new(),
        dns_view,
        dns_counters,
        dns_installs,
        parse_cache,
    };
    if let Some(addr) = daemon.opts.metrics_listen {
        let listener = crate::metrics::bind(addr).await?;
        let (instance, status) = (daemon.opts.instance.clone(), daemon.status.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, instance, status).await {
                error!("metrics: {e:#}");
            }
        });
    }
    daemon.refresh_peers();
    daemon.reserve_held_ports();
    daemon.publish()?;
    tokio::spawn(control::serve(
        daemon.opts.instance.clone(),
        daemon.status.clone(),
    ));
    let result = daemon.serve_until_stopped().await;
    identity::clear(&run_dir);
    result
}

/// Keeps the text of the applied configuration for the CLI.
fn record_applied(instance: &str, text: &str) {
    if let Err(e) = std::fs::write(control::applied_file(instance), text) {
        warn!(error = %e, "writing the applied configuration for the CLI");
    }
}

/// Hands the names of the installed configuration to the metrics (status)
/// and the CLI (`names.json`), when they changed: at 100k rules the file is
/// megabytes, and most reloads change no name.
fn share_names(status: &SharedStatus, instance: &str, names: &compile::Names) -> Result<()> {
    if crate::locks::lock(status).names.as_ref() == names {
        return Ok(());
    }
    control::write_names(instance, names)?;
    crate::locks::lock(status).names = Arc::new(names.clone());
    Ok(())
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Daemon {
    async fn serve_until_stopped(&mut self) -> Result<()> {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising aya-log")?;
        // SAFETY: the ring buffer fd is owned by `logger`, which the AsyncFd
        // owns until it is dropped, so the fd outlives its registration.
        let mut logs = unsafe { AsyncFd::register(logger) }
            .map_err(|e| anyhow::anyhow!("polling aya-log: {e}"))?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stamp = file_stamp(&self.opts.config_path);
        let mut ticks: u64 = 0;
        info!(instance = %self.opts.instance, "routing-peer running");
        loop {
            tokio::select! {
                guard = logs.readable_mut() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = sighup.recv() => {
                    // The file watch must not load the same file again.
                    stamp = file_stamp(&self.opts.config_path);
                    self.reload("SIGHUP");
                }
                Some(install) = self.dns_installs.recv() => self.install_resolved(install),
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    let now = file_stamp(&self.opts.config_path);
                    if now != stamp {
                        stamp = now;
                        self.reload("file change");
                    }
                    self.refresh_peers();
                    self.expire_resolved();
                    if ticks.is_multiple_of(10) {
                        self.collect_garbage();
                    }
                    let _ = self.publish();
                }
            }
        }
        info!("daemon exiting; the data path stays up until `routing-peer down`");
        Ok(())
    }

    /// Applies a changed file. An invalid one is rejected with all its
    /// problems and the running configuration stays.
    fn reload(&mut self, why: &str) {
        let started = std::time::Instant::now();
        let (loaded, parsed) = match self.parse_cache.load(&self.opts.config_path) {
            Ok(l) => l,
            Err(e) => {
                error!(
                    trigger = why,
                    "reload rejected, running configuration kept:\n{e}"
                );
                return;
            }
        };
        for w in &loaded.warnings {
            warn!(field = %w.field, "{}", w.message);
        }
        let config = loaded.config;
        let read_ms = started.elapsed().as_millis() as u64;
        let wg_result = match self.wg.mode() {
            WireguardMode::External => Ok(()),
            _ => DeviceSpec::from_config(&config).and_then(|spec| self.wg.configure(&spec)),
        };
        if let Err(e) = wg_result {
            error!(trigger = why, "reload rejected: WireGuard: {e}");
            return;
        }
        if let Err(e) = self
            .policy
            .set_config(&mut self.ebpf, datapath_config(&config))
        {
            error!("reload: writing data path settings: {e}");
        }
        // Resolved addresses of resources that are gone or disabled go too.
        let live: HashSet<String> = config
            .networks
            .iter()
            .flat_map(|n| &n.resources)
            .filter(|r| r.enabled)
            .map(|r| r.name.clone())
            .collect();
        self.resolved.retain(|name, _| live.contains(name));
        let own = self_addresses(&config);
        let (diff, how, compile_ms, install_time) = match self.apply_in_place(&config, &own) {
            Some(done) => done,
            None => {
                let compile_started = std::time::Instant::now();
                let compiled = compile::compile(
                    &config,
                    &own,
                    &self.resolved_addrs(),
                    self.compiled.as_previous(),
                );
                let compile_ms = compile_started.elapsed().as_millis() as u64;
                let install_started = std::time::Instant::now();
                match self.policy.install(&mut self.ebpf, &compiled.tables) {
                    Ok(stats) => {
                        self.compiled = compiled;
                        (stats, "full", compile_ms, install_started.elapsed())
                    }
                    Err(e) => {
                        error!("reload: installing policy: {e}");
                        return;
                    }
                }
            }
        };
        crate::locks::lock(&self.status).self_addresses = own;
        // Where a reload's time goes: reading (and validating) the file,
        // compiling, writing the maps.
        info!(
            trigger = why,
            compile = how,
            written = diff.written,
            removed = diff.removed,
            generation = self.policy.config.policy_gen,
            read_ms,
            entries_reused = parsed.reused,
            entries_parsed = parsed.parsed,
            full_parse = parsed.full_parse,
            compile_ms,
            install_ms = install_time.as_millis() as u64,
            "configuration reloaded"
        );
        *crate::locks::write(&self.dns_view) = dns::View::new(&config, &self.compiled);
        self.config = config;
        record_applied(&self.opts.instance, self.parse_cache.last_text());
        let mut status = crate::locks::lock(&self.status);
        status.generation = self.policy.config.policy_gen;
        status.last_reload_unix = unix_now();
        drop(status);
        if let Err(e) = share_names(&self.status, &self.opts.instance, &self.compiled.names) {
            warn!("writing names for the CLI: {e}");
        }
    }

    /// Applies a change of policies alone to the compiled tables and the
    /// maps: (diff, "in place", compile ms, install time). `None` when it
    /// takes a full compile, or when writing the maps failed (they are then
    /// still the installed copy's, which a full compile diffs against).
    fn apply_in_place(
        &mut self,
        config: &Config,
        own: &[IpAddr],
    ) -> Option<(datapath::tables::DiffStats, &'static str, u64, Duration)> {
        let started = std::time::Instant::now();
        let in_place = if crate::locks::lock(&self.status).self_addresses == own {
            compile::apply_policy_change(&mut self.compiled, &self.config, config)
        } else {
            Err(compile::NeedsFullCompile::NotOnlyPolicies)
        };
        let diff = match in_place {
            Ok(diff) => diff,
            Err(why_full) => {
                info!(reason = %why_full, "reload: compiling in full");
                return None;
            }
        };
        let compile_ms = started.elapsed().as_millis() as u64;
        let install_started = std::time::Instant::now();
        match self.policy.install_diff(&mut self.ebpf, &diff) {
            Ok(stats) => Some((stats, "in place", compile_ms, install_started.elapsed())),
            Err(e) => {
                error!("reload: installing in place: {e}; compiling in full");
                None
            }
        }
    }

    fn refresh_peers(&mut self) {
        let reported = match self.wg.peers() {
            Ok(p) => p,
            Err(e) => {
                warn!("reading WireGuard peers: {e}");
                return;
            }
        };
        let now = unix_now();
        let mut peers = Vec::new();
        for peer in &self.config.peers {
            let wg = reported.iter().find(|r| r.public_key == peer.public_key);
            let age = wg
                .filter(|w| w.last_handshake_unix > 0)
                .map(|w| now.saturating_sub(w.last_handshake_unix));
            // Up: a recent handshake, or traffic (keepalives count) since.
            // Handshakes alone renew only every two minutes.
            let rx = wg.map(|w| w.rx_bytes).unwrap_or(0);
            let window = Duration::from_secs(self.config.routing_peer.peer_down_after_secs);
            let rx_seen = self
                .peers_rx
                .entry(peer.name.clone())
                .or_insert((rx, std::time::Instant::now()));
            if rx != rx_seen.0 {
                *rx_seen = (rx, std::time::Instant::now());
            }
            let recent_rx = rx > 0 && rx_seen.1.elapsed() < window;
            let up = age.is_some_and(|a| a < window.as_secs()) || (age.is_some() && recent_rx);
            let was_up = self.peers_up.insert(peer.name.clone(), up).unwrap_or(false);
            if up && !was_up {
                info!(event = "peer_connected", peer = %peer.name, "peer connected");
            } else if !up && was_up {
                warn!(event = "peer_disconnected", peer = %peer.name, "peer disconnected");
            }
            peers.push(PeerReport {
                name: peer.name.clone(),
                addresses: peer.addresses.iter().map(|a| a.to_string()).collect(),
                public_key: peer.public_key.clone(),
                endpoint: wg.and_then(|w| w.endpoint.clone()),
                handshake_age_secs: age,
                rx_bytes: wg.map(|w| w.rx_bytes).unwrap_or(0),
                tx_bytes: wg.map(|w| w.tx_bytes).unwrap_or(0),
                up,
            });
        }
        crate::locks::lock(&self.status).peers = peers;
    }

    /// Keeps the pool ports the routing peer's own sockets hold away from
    /// masqueraded flows.
    fn reserve_held_ports(&mut self) {
        let pool = (
            self.policy.config.snat_port_min,
            self.policy.config.snat_port_max,
        );
        let held = ports::held_ports(pool);
        match ports::sync_reserved(&mut self.ebpf, &held) {
            Ok(n) if n > 0 => debug!(
                ports = n,
                "pool ports held by local sockets kept out of NAT"
            ),
            Ok(_) => {}
            Err(e) => warn!("reserving pool ports held by local sockets: {e}"),
        }
    }

    fn collect_garbage(&mut self) {
        self.reserve_held_ports();
        match gc::collect(&mut self.ebpf, &self.policy.config, &mut self.nat_unused) {
            Ok(s) if s.flows_expired + s.nat_removed > 0 => info!(
                live = s.flows_live,
                expired = s.flows_expired,
                nat_removed = s.nat_removed,
                "conntrack GC"
            ),
            Ok(_) => {}
            Err(e) => warn!("conntrack GC: {e}"),
        }
    }

    fn resolved_addrs(&self) -> HashMap<String, Vec<IpAddr>> {
        self.resolved
            .iter()
            .map(|(name, addrs)| (name.clone(), addrs.keys().copied().collect()))
            .collect()
    }

    /// Puts DNS-resolved addresses in the data path, then lets the answer go.
    fn install_resolved(&mut self, install: dns::Install) {
        let Some(value) = self
            .compiled
            .domain_dests
            .get(&install.resource_id)
            .copied()
        else {
            return; // the resource went away meanwhile: the answer gets SERVFAIL
        };
        let name = self.compiled.names.resources[install.resource_id as usize].clone();
        let dns_cfg = &self.config.dns;
        for (ip, ttl) in install.addrs {
            let lifetime = u64::from(ttl.max(dns_cfg.min_ttl_secs) + dns_cfg.grace_secs);
            if let Err(e) =
                self.policy
                    .upsert_dest(&mut self.ebpf, DestPrefix::new(IpNet::from(ip)), value)
            {
                error!(%ip, resource = %name, "installing a resolved address: {e}");
                return;
            }
            self.resolved
                .entry(name.clone())
                .or_default()
                .insert(ip, Instant::now() + Duration::from_secs(lifetime));
            self.dns_counters
                .installed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = install.done.send(());
        let _ = self.publish();
    }

    fn expire_resolved(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (name, addrs) in &mut self.resolved {
            addrs.retain(|ip, expires| {
                let keep = *expires > now;
                if !keep {
                    expired.push((name.clone(), *ip));
                }
                keep
            });
        }
        self.resolved.retain(|_, addrs| !addrs.is_empty());
        let prefixes: Vec<DestPrefix> = expired
            .iter()
            .map(|(_, ip)| DestPrefix::new(IpNet::from(*ip)))
            .collect();
        match self.policy.expire_dests(&mut self.ebpf, &prefixes) {
            Ok(()) => {
                for (name, ip) in &expired {
                    self.dns_counters
                        .expired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(resource = %name, %ip, "resolved address expired: its flows are cut");
                }
            }
            Err(e) => warn!("removing expired addresses: {e}"),
        }
    }

    fn publish(&self) -> Result<()> {
        let status = {
            let mut status = crate::locks::lock(&self.status);
            status.dns = self.dns_counters.snapshot();
            // Expired DNS grants bump it too.
            status.generation = self.policy.config.policy_gen;
            // Addresses come and go (DHCP, an operator): `policy check`
            // treats every current one as the input chain.
            status.self_addresses = self_addresses(&self.config);
            let mut resolved: Vec<(String, Vec<String>)> = self
                .resolved
                .iter()
                .map(|(n, a)| (n.clone(), a.keys().map(|ip| ip.to_string()).collect()))
                .collect();
            resolved.sort();
            status.resolved = resolved;
            status.clone()
        };
        control::write_state(&self.opts.instance, &status)
    }
}
