//! Start-up steps of `run`, in order: WireGuard, the host (safety net and
//! sysctls), the data path and its first policy, the programs, the DNS
//! forwarder and metrics.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
};

use anyhow::{Context, Result};
use aya::Ebpf;
use routing_peer_common::{map_names, program_names};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{datapath_config, unix_now, RunOptions};
use crate::{
    compile::{self, Compiled},
    config::{Config, RoutingPeer, WireguardMode},
    control::{self, ProgramReport, SharedStatus, Status},
    datapath::{self, policy_maps::PolicyMaps, safety_net, PinDir},
    dns, sysctl,
    wireguard::{self, Backend, DeviceSpec},
};

/// Starts (or adopts) WireGuard and, unless it is someone else's, gives it
/// the peers, addresses and MTU.
pub(super) fn wireguard(config: &Config, mode: WireguardMode) -> Result<Backend> {
    let rp = &config.routing_peer;
    let mut wg = Backend::start(&rp.overlay_interface, mode)
        .with_context(|| format!("starting WireGuard on {}", rp.overlay_interface))?;
    if wg.mode() != WireguardMode::External {
        wg.configure(&DeviceSpec::from_config(config)?)?;
        wireguard::configure_link(&rp.overlay_interface, &rp.overlay_addresses, rp.mtu)?;
    }
    info!(mode = ?wg.mode(), iface = %rp.overlay_interface, "WireGuard configured");
    Ok(wg)
}

/// The safety net first, then the sysctls: the kernel forwards nothing to
/// or from the overlay that the programs did not hand over.
pub(super) fn host(config: &Config, instance: &str) -> Result<()> {
    let rp = &config.routing_peer;
    safety_net::install(instance, &rp.overlay_interface)
        .context("installing the safety-net table")?;
    let pool = datapath_config(config);
    let mut sysctls = sysctl::wanted(&rp.overlay_interface, &rp.lan_interfaces);
    sysctls.extend(sysctl::snat_reservation(
        (pool.snat_port_min, pool.snat_port_max),
        sysctl::local_port_range(),
    ));
    sysctl::apply(&sysctls, &control::run_dir(instance).join("sysctl.json"))
}

/// Loads the programs (adopting pinned maps) and installs the first policy.
/// An adopted data path keeps its ids: live flows and counters refer to them.
pub(super) fn datapath(
    config: &Config,
    opts: &RunOptions,
    pins: &PinDir,
    own: &[IpAddr],
    read_ms: u64,
) -> Result<(Ebpf, PolicyMaps, Compiled)> {
    let adopting = pins.exists();
    let sizes = [
        (map_names::CONNTRACK, config.conntrack.max_flows),
        (map_names::FRAGS, config.fragments.max_datagrams),
    ];
    let mut ebpf = datapath::load(
        Some(pins),
        datapath::log_level_for(opts.verbose_datapath),
        &sizes,
    )
    .context("loading the data path")?;
    let mut policy = if adopting {
        info!(pins = %pins.root().display(), "adopting the pinned data path");
        PolicyMaps::adopt(&mut ebpf)?
    } else {
        PolicyMaps::init(&mut ebpf, datapath_config(config))?
    };
    policy.set_config(datapath_config(config))?;
    let hold = datapath::hold::ensure(&opts.instance).context("creating the fragment hold")?;
    policy.set_hold(hold.ifindex, hold.passes)?;
    policy.set_lan_xdp(lan_xdp(&config.routing_peer)?)?;
    let previous = adopting
        .then(|| control::read_names(&opts.instance))
        .flatten();
    let compile_started = std::time::Instant::now();
    let compiled = compile::compile(
        config,
        own,
        &HashMap::new(),
        previous
            .as_ref()
            .map(compile::Previous::from)
            .unwrap_or_default(),
    );
    let compile_ms = compile_started.elapsed().as_millis() as u64;
    let install_started = std::time::Instant::now();
    let diff = policy.install(&compiled.tables)?;
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
    Ok((ebpf, policy, compiled))
}

/// Whether the LAN gets its XDP program: it can only ever redirect replies
/// into an L2 overlay listed as an XDP target; anywhere else (WireGuard is
/// L3) it would parse and look up every reply only to pass it to TC.
fn lan_xdp(rp: &RoutingPeer) -> Result<bool> {
    Ok(
        datapath::overlay_program_for(&rp.overlay_interface)? == program_names::OVERLAY_L2
            && rp.xdp_redirect_interfaces.contains(&rp.overlay_interface),
    )
}

/// Attaches every program: the overlay's at TC (and XDP on an L2 overlay),
/// TC on each LAN interface (and XDP where `lan_xdp` says), TC on the
/// fragment hold. Returns what `status` shows.
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    config: &Config,
    instance: &str,
    pins: &PinDir,
) -> Result<Vec<ProgramReport>> {
    let rp = &config.routing_peer;
    let mut programs = Vec::new();
    let mut report = |program: &str, hook: &str, iface: &str| {
        programs.push(ProgramReport {
            program: program.into(),
            hook: hook.into(),
            interface: iface.into(),
        })
    };
    let overlay_program = datapath::overlay_program_for(&rp.overlay_interface)?;
    datapath::attach_tc(ebpf, overlay_program, &rp.overlay_interface, pins)?;
    report(overlay_program, "tc-ingress (tcx)", &rp.overlay_interface);
    let l3_overlay: Vec<String> = if overlay_program == program_names::OVERLAY_L3 {
        vec![rp.overlay_interface.clone()]
    } else {
        // An L2 overlay gets the skb-less XDP path too.
        let xdp = program_names::OVERLAY_XDP;
        datapath::attach_xdp(ebpf, xdp, &rp.overlay_interface, pins)?;
        report(xdp, "xdp", &rp.overlay_interface);
        Vec::new()
    };
    datapath::set_iface_map(ebpf, map_names::L3_IFACES, &l3_overlay)?;
    datapath::set_iface_map(
        ebpf,
        map_names::XDP_REDIRECT_IFACES,
        &rp.xdp_redirect_interfaces,
    )?;
    let lan_xdp = lan_xdp(rp)?;
    let (_, hold) = datapath::hold::names(instance);
    datapath::attach_tc(ebpf, program_names::HOLD, &hold, pins)?;
    report(
        program_names::HOLD,
        "tc-ingress (tcx), fragment hold",
        &hold,
    );
    for lan in &rp.lan_interfaces {
        if lan_xdp {
            datapath::attach_xdp(ebpf, program_names::LAN_XDP, lan, pins)?;
            report(program_names::LAN_XDP, "xdp", lan);
        }
        datapath::attach_tc(ebpf, program_names::LAN_TC, lan, pins)?;
        report(program_names::LAN_TC, "tc-ingress (tcx)", lan);
    }
    Ok(programs)
}

/// The status the CLI and metrics read, as of start-up.
pub(super) fn status(
    config: &Config,
    opts: &RunOptions,
    wg: &Backend,
    generation: u32,
    programs: Vec<ProgramReport>,
    own: Vec<IpAddr>,
) -> SharedStatus {
    let rp = &config.routing_peer;
    let public_key = std::fs::read_to_string(&rp.private_key_file)
        .ok()
        .and_then(|k| wireguard::decode_key("private key", &k).ok())
        .map(|k| wireguard::encode_key(&wireguard::public_key(&k)))
        .unwrap_or_default();
    Arc::new(Mutex::new(Status {
        instance: opts.instance.clone(),
        name: rp.name.clone(),
        wireguard_mode: wg.mode(),
        interface: rp.overlay_interface.clone(),
        listen_port: rp.listen_port,
        public_key,
        metric: rp.metric,
        config_path: opts.config_path.display().to_string(),
        generation,
        last_reload_unix: unix_now(),
        peers: Vec::new(),
        programs,
        resolved: Vec::new(),
        dns: dns::CounterSnapshot::default(),
        self_addresses: own,
        safety_net_table: safety_net::table_name(&opts.instance),
        source: Default::default(),
        events: Default::default(),
        names: Arc::default(),
    }))
}

/// What the daemon keeps of the DNS forwarder.
pub(super) struct Dns {
    pub(super) view: Arc<RwLock<dns::View>>,
    pub(super) counters: Arc<dns::Counters>,
    pub(super) installs: mpsc::Receiver<dns::Install>,
}

/// Serves the DNS forwarder on every overlay address.
pub(super) fn dns(config: &Config, compiled: &Compiled) -> Dns {
    let view = Arc::new(RwLock::new(dns::View::new(config, compiled)));
    let counters = Arc::new(dns::Counters::default());
    let (install_tx, installs) = mpsc::channel(64);
    let forwarder = dns::Forwarder {
        view: view.clone(),
        counters: counters.clone(),
        install: install_tx,
    };
    let binds = config
        .routing_peer
        .overlay_addresses
        .iter()
        .flat_map(|addr| {
            config
                .dns
                .ports()
                .into_iter()
                .map(move |port| SocketAddr::new(addr.addr(), port))
        });
    for bind in binds {
        let fwd = forwarder.clone();
        tokio::spawn(async move {
            if let Err(e) = fwd.serve(bind).await {
                error!("DNS forwarder on {bind}: {e:#}");
            }
        });
    }
    Dns {
        view,
        counters,
        installs,
    }
}

/// Serves Prometheus metrics on `addr`.
pub(super) async fn metrics(
    addr: SocketAddr,
    instance: String,
    status: SharedStatus,
) -> Result<()> {
    let listener = crate::metrics::bind(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(listener, instance, status).await {
            error!("metrics: {e:#}");
        }
    });
    Ok(())
}
