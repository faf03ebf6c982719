//! `routing-peer run`: bring up WireGuard, the data path and the policy, then
//! keep them in step with the configuration file until told to stop.
//!
//! Stopping the daemon (SIGTERM, a crash, an upgrade) leaves the data path
//! running: programs stay attached through pinned links, flows stay in the
//! pinned conntrack map, wireguard-go keeps its tunnels. The next start
//! adopts all of it. `routing-peer down` is what tears it down.

mod events;
mod reload;
mod source;
mod start;
mod upkeep;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use aya::Ebpf;
use routing_peer_common::DatapathConfig;
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    compile::{self, Compiled},
    config::{Config, ParseCache, WireguardMode},
    control::{self, SharedStatus},
    datapath::{self, gc, policy_maps::PolicyMaps, ports, PinDir},
    dns, identity,
    wireguard::Backend,
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
        frag_timeout_ns: ns(config.fragments.timeout_secs),
        ..defaults
    }
}

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
    policy: PolicyMaps,
    wg: Backend,
    compiled: Compiled,
    status: SharedStatus,
    peers_up: HashMap<String, bool>,
    /// Per peer: received bytes last seen, and when they last grew.
    peers_rx: HashMap<String, (u64, std::time::Instant)>,
    /// Domain resource name → resolved address → when it expires.
    resolved: HashMap<String, HashMap<IpAddr, Instant>>,
    gc: gc::GcMaps,
    reserved: ports::ReservedPorts,
    dns_view: Arc<RwLock<dns::View>>,
    dns_counters: Arc<dns::Counters>,
    dns_installs: mpsc::Receiver<dns::Install>,
    /// Parsed entries of the file, so a reload reparses only what changed.
    parse_cache: ParseCache,
    /// The file alone, or NetBird's API through it.
    source: source::Source,
    /// Flow and drop events: named, kept, exported.
    events: events::Events,
    /// The events ring buffer, polled by the daemon's loop.
    event_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut parse_cache = ParseCache::default();
    let read_started = std::time::Instant::now();
    let (loaded, _) = parse_cache.load(&opts.config_path)?;
    let read_ms = read_started.elapsed().as_millis() as u64;
    for w in &loaded.warnings {
        warn!(file = %opts.config_path.display(), field = %w.field, "{}", w.message);
    }
    let pins = PinDir::new(&opts.instance);
    let run_dir = control::run_dir(&opts.instance);
    std::fs::create_dir_all(&run_dir)?;
    identity::record(&run_dir)?;
    let (source, config) = source::Source::start(&loaded.config, &opts.instance).await;
    let config = crate::config::validated(&opts.config_path, config)?.config;

    let wg = start::wireguard(
        &config,
        opts.wireguard.unwrap_or(config.routing_peer.wireguard),
    )?;
    start::host(&config, &opts.instance)?;
    let own = self_addresses(&config);
    let (mut ebpf, policy, compiled) = start::datapath(&config, &opts, &pins, &own, read_ms)?;
    let programs = start::attach_all(&mut ebpf, &config, &opts.instance, &pins)?;
    let status = start::status(&config, &opts, &wg, policy.config.policy_gen, programs, own);
    share_names(&status, &opts.instance, &compiled.names)?;
    crate::locks::lock(&status).source = source.status.clone();
    record_applied(
        &opts.instance,
        &source.applied_text(&config, parse_cache.last_text()),
    );
    let dns = start::dns(&config, &compiled);
    if let Some(addr) = opts.metrics_listen {
        start::metrics(addr, opts.instance.clone(), status.clone()).await?;
    }
    let gc = gc::GcMaps::take(&mut ebpf)?;
    let reserved = ports::ReservedPorts::take(&mut ebpf)?;
    let (events, event_ring) = events::Events::take(&mut ebpf, &config.events)?;
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
        gc,
        reserved,
        dns_view: dns.view,
        dns_counters: dns.counters,
        dns_installs: dns.installs,
        parse_cache,
        source,
        events,
        event_ring: Some(event_ring),
    };
    daemon.refresh_peers();
    daemon.reserve_held_ports();
    daemon.publish()?;
    tokio::spawn(control::serve(
        daemon.opts.instance.clone(),
        daemon.status.clone(),
        daemon.events.hub.clone(),
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
