use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use routing_peer::{
    check, cli, compile,
    config::{self, WireguardMode},
    control, daemon,
    datapath::{self, PinDir},
    identity, sysctl, wireguard,
};

#[derive(Parser)]
#[command(
    name = "routing-peer",
    version,
    about = "eBPF routing peer for WireGuard overlay networks"
)]
struct Cli {
    /// Instance name: state lives under /sys/fs/bpf/routing-peer/<instance> and /run/routing-peer/<instance>.
    #[arg(long, global = true, default_value = "default")]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the routing peer: WireGuard, the data path, hot reload.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Override the configured WireGuard mode.
        #[arg(long, value_enum)]
        wireguard: Option<WgMode>,
        /// Forward kernel debug logs (aya-log) to the daemon's log.
        #[arg(long)]
        verbose_datapath: bool,
        /// Serve Prometheus metrics on http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Detach everything, stop WireGuard and remove this instance's state.
    Down,
    /// WireGuard, peers, programs, maps and configuration generation.
    Status(JsonFlag),
    /// Live flows from conntrack.
    Flows(FlowsArgs),
    /// Per-resource traffic and drops by reason.
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every second, with rates.
        #[arg(long)]
        watch: bool,
    },
    /// Networks and their resources.
    Networks {
        #[command(subcommand)]
        command: NetworksCommand,
    },
    /// Policy questions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate a configuration file without running it.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum WgMode {
    Auto,
    Kernel,
    Userspace,
    External,
}

#[derive(Args)]
struct JsonFlag {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FlowsArgs {
    #[arg(long)]
    json: bool,
    /// Peer name or overlay address.
    #[arg(long)]
    peer: Option<String>,
    #[arg(long)]
    resource: Option<String>,
    #[arg(long)]
    proto: Option<String>,
    #[arg(long)]
    state: Option<String>,
    #[arg(long, value_parser = ["bytes", "packets", "age"])]
    sort: Option<String>,
    #[arg(long)]
    top: Option<usize>,
    /// Refresh every second, with rates.
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand)]
enum NetworksCommand {
    /// List networks, resources, resolved addresses and the policies that use them.
    Ls(JsonFlag),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Would this traffic pass, and which rule decides?
    Check {
        /// Peer name or overlay address.
        #[arg(long)]
        from: String,
        /// IP address or domain name.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A reload of a 100k-rule configuration allocates millions of small
/// objects (TOML values, rule sets, map entries); mimalloc halves the time
/// glibc's allocator spends on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors meant for the operator print as one line (the cause chain joined
/// with `: `), without a backtrace whatever RUST_BACKTRACE says.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routing-peer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Everything but `validate` reads or changes the data path, pins and
    // the daemon's state: say so, rather than "not running".
    if !matches!(cli.command, Command::Validate { .. }) && !is_root() {
        bail!("permission denied: run as root (routing-peer needs CAP_BPF and CAP_NET_ADMIN)");
    }
    let instance = cli.instance;
    let pins = PinDir::new(&instance);
    match cli.command {
        Command::Run {
            config,
            wireguard,
            verbose_datapath,
            metrics_listen,
        } => {
            daemon::run(daemon::RunOptions {
                config_path: config,
                instance,
                wireguard: wireguard.map(|m| match m {
                    WgMode::Auto => WireguardMode::Auto,
                    WgMode::Kernel => WireguardMode::Kernel,
                    WgMode::Userspace => WireguardMode::Userspace,
                    WgMode::External => WireguardMode::External,
                }),
                verbose_datapath,
                metrics_listen,
            })
            .await
        }
        Command::Down => down(&instance, &pins),
        Command::Status(JsonFlag { json }) => status(&instance, &pins, json),
        Command::Flows(args) => flows(&instance, &pins, args),
        Command::Stats { json, watch } => stats(&instance, &pins, json, watch),
        Command::Networks {
            command: NetworksCommand::Ls(JsonFlag { json }),
        } => networks(&instance, json),
        Command::Policy {
            command:
                PolicyCommand::Check {
                    from,
                    to,
                    proto,
                    port,
                    json,
                },
        } => policy_check(&instance, &from, &to, &proto, port, json),
        Command::Validate { config } => {
            let loaded = config::load(&config)?;
            for w in &loaded.warnings {
                println!("warning: {}: {}: {}", config.display(), w.field, w.message);
            }
            println!("{}: valid", config.display());
            Ok(())
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn down(instance: &str, pins: &PinDir) -> Result<()> {
    let dir = control::run_dir(instance);
    // Everything below acts in the daemon's namespace, not the caller's.
    identity::enter_daemon_netns(&dir)?;
    let state = control::read_state(instance);
    // Stop a running daemon first, so it doesn't re-attach; only if the
    // recorded pid is still that daemon.
    if let Some(pid) = identity::live_daemon(&dir) {
        // SAFETY: plain kill(2) on a pid checked to be our daemon.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    pins.remove()
        .with_context(|| format!("removing {}", pins.root().display()))?;
    if let Some(state) = &state {
        // An external interface is someone else's: only detach from it.
        let ours = state.wireguard_mode != wireguard::Mode::External;
        if ours && wireguard::iface_exists(&state.interface) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &state.interface])
                .status();
        }
    }
    datapath::safety_net::remove(instance).context("removing the safety-net table")?;
    sysctl::restore(&dir.join("sysctl.json"))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("routing-peer instance {instance} is down");
    Ok(())
}

fn status(instance: &str, pins: &PinDir, json: bool) -> Result<()> {
    let ctx = cli::context(instance);
    let Some(status) = ctx.status else {
        bail!("routing-peer is not running for instance {instance}");
    };
    if json {
        let doc = serde_json::json!({
            "running": ctx.running,
            "status": status,
            "safety_net": {
                "table": status.safety_net_table,
                "dropped": cli::safety_net_dropped(instance),
            },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    cli::print_status(&status, ctx.running, pins);
    Ok(())
}

fn names_for(instance: &str) -> compile::Names {
    control::read_names(instance).unwrap_or_default()
}

fn flows(instance: &str, pins: &PinDir, args: FlowsArgs) -> Result<()> {
    let filter = cli::FlowFilter {
        peer: args.peer,
        resource: args.resource,
        proto: args.proto,
        state: args.state,
        sort: args.sort,
        top: args.top,
    };
    let names = names_for(instance);
    if !args.watch {
        let flows = cli::filter_flows(cli::read_flows(pins, &names)?, &filter);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&flows)?);
        } else {
            cli::print_flows(&flows, None);
        }
        return Ok(());
    }
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_at = Instant::now();
    loop {
        let flows = cli::filter_flows(cli::read_flows(pins, &names)?, &filter);
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let mut rates = HashMap::new();
        for f in &flows {
            let id = cli::flow_id(f);
            let now = (f.packets_out + f.packets_in, f.bytes_out + f.bytes_in);
            if let Some((p, b)) = last.insert(id.clone(), now) {
                rates.insert(id, ((now.0 - p) as f64 / dt, (now.1 - b) as f64 / dt));
            }
        }
        print!("\x1b[2J\x1b[H");
        cli::print_flows(&flows, Some(&rates));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn stats(instance: &str, pins: &PinDir, json: bool, watch: bool) -> Result<()> {
    let names = names_for(instance);
    if !watch {
        let report = cli::read_stats(pins, &names)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            cli::print_stats(&report, None);
        }
        return Ok(());
    }
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_at = Instant::now();
    loop {
        let report = cli::read_stats(pins, &names)?;
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let mut rates = HashMap::new();
        for r in &report.resources {
            let now = (r.packets_out + r.packets_in, r.bytes_out + r.bytes_in);
            if let Some((p, b)) = last.insert(r.resource.clone(), now) {
                rates.insert(
                    r.resource.clone(),
                    ((now.0 - p) as f64 / dt, (now.1 - b) as f64 / dt),
                );
            }
        }
        print!("\x1b[2J\x1b[H");
        cli::print_stats(&report, Some(&rates));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn compiled_for(status: &control::Status) -> Result<(config::Config, compile::Compiled)> {
    let config = cli::load_config_of(status)?;
    let resolved: HashMap<String, Vec<std::net::IpAddr>> = status
        .resolved
        .iter()
        .map(|(n, ips)| {
            (
                n.clone(),
                ips.iter().filter_map(|i| i.parse().ok()).collect(),
            )
        })
        .collect();
    // The daemon's own view of its addresses, so the answer matches the data path.
    let compiled = compile::compile(
        &config,
        &status.self_addresses,
        &resolved,
        compile::Previous::from(&control::read_names(&status.instance).unwrap_or_default()),
    );
    Ok((config, compiled))
}

fn networks(instance: &str, json: bool) -> Result<()> {
    let ctx = cli::context(instance);
    let status = cli::require_state(&ctx, instance)?;
    let config = cli::load_config_of(&status)?;
    let mut out = Vec::new();
    for n in &config.networks {
        let resources: Vec<serde_json::Value> = n
            .resources
            .iter()
            .map(|r| {
                let kind = config::parse_resource_address(&r.address)
                    .map(|a| a.kind())
                    .unwrap_or("invalid");
                let resolved: Vec<String> = status
                    .resolved
                    .iter()
                    .find(|(name, _)| name == &r.name)
                    .map(|(_, ips)| ips.clone())
                    .unwrap_or_default();
                let policies: Vec<String> = config
                    .policies
                    .iter()
                    .filter(|p| {
                        p.destination_resources.contains(&r.name)
                            || p.destinations.iter().any(|g| r.groups.contains(g))
                    })
                    .map(|p| p.name.clone())
                    .collect();
                serde_json::json!({
                    "name": r.name, "type": kind, "address": r.address, "groups": r.groups,
                    "enabled": r.enabled, "resolved": resolved, "policies": policies,
                })
            })
            .collect();
        out.push(serde_json::json!({
            "name": n.name, "description": n.description, "masquerade": n.masquerade,
            "served": true, "routing_peer": status.name, "metric": status.metric,
            "resources": resources,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for n in &out {
        println!(
            "Network: {}  (served by {}, metric {}, masquerade {})",
            n["name"].as_str().unwrap_or(""),
            status.name,
            status.metric,
            if n["masquerade"].as_bool().unwrap_or(true) {
                "on"
            } else {
                "off"
            }
        );
        let mut rows = vec![vec![
            "  RESOURCE".to_string(),
            "TYPE".into(),
            "ADDRESS".into(),
            "RESOLVED".into(),
            "GROUPS".into(),
            "POLICIES".into(),
            "ENABLED".into(),
        ]];
        for r in n["resources"].as_array().into_iter().flatten() {
            let join = |v: &serde_json::Value| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            let resolved = join(&r["resolved"]);
            rows.push(vec![
                format!("  {}", r["name"].as_str().unwrap_or("")),
                r["type"].as_str().unwrap_or("").into(),
                r["address"].as_str().unwrap_or("").into(),
                if resolved.is_empty() {
                    "-".into()
                } else {
                    resolved
                },
                join(&r["groups"]),
                join(&r["policies"]),
                if r["enabled"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
            ]);
        }
        cli::print_table(&rows);
        println!();
    }
    Ok(())
}

fn policy_check(
    instance: &str,
    from: &str,
    to: &str,
    proto: &str,
    port: u16,
    json: bool,
) -> Result<()> {
    let ctx = cli::context(instance);
    let status = cli::require_state(&ctx, instance)?;
    let (config, compiled) = compiled_for(&status)?;
    let (dst, domain_note) = match to.parse::<std::net::IpAddr>() {
        Ok(ip) => (Some(ip), None),
        Err(_) => match check::domain_resource(&compiled, to) {
            Some(d) => {
                let ip = status
                    .resolved
                    .iter()
                    .find(|(n, _)| n == &d.name)
                    .and_then(|(_, ips)| ips.first())
                    .and_then(|i| i.parse().ok());
                (ip, Some(format!("{to} is domain resource `{}`", d.name)))
            }
            None => (
                None,
                Some(format!(
                    "{to} matches no domain resource: the DNS forwarder refuses it"
                )),
            ),
        },
    };
    let Some(dst) = dst else {
        let reason = domain_note.unwrap_or_default()
            + "; no address resolved for it yet (resolve it through the routing peer first)";
        if json {
            println!(
                "{}",
                serde_json::json!({ "allowed": false, "reason": reason })
            );
        } else {
            println!("DENY  {reason}");
        }
        return Ok(());
    };
    let src = check::source_addr(&config, from, dst.is_ipv6())?;
    let proto_num = check::proto_number(proto, dst.is_ipv6())?;
    let mut verdict = check::check(&compiled, src, dst, proto_num, port);
    if let (true, Some(rule)) = (verdict.allowed && verdict.chain == "forward", &verdict.rule) {
        // The resource whose policy granted it, which decides masquerade.
        if let Some(granting) = check::granting_resource(&config, dst, rule) {
            verdict.resource = Some(granting);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        if let Some(note) = domain_note {
            println!("{note}");
        }
        let masquerade = match verdict.masquerade {
            Some(true) => format!(
                ", masqueraded (resource `{}`)",
                verdict.resource.clone().unwrap_or_default()
            ),
            Some(false) => format!(
                ", not masqueraded (resource `{}`)",
                verdict.resource.clone().unwrap_or_default()
            ),
            None => String::new(),
        };
        println!(
            "{}  {} ({}) -> {} {proto}/{port} [{} chain]: {}{masquerade}",
            if verdict.allowed { "ALLOW" } else { "DENY " },
            verdict.peer.clone().unwrap_or_else(|| from.to_string()),
            src,
            dst,
            verdict.chain,
            verdict.reason
        );
    }
    Ok(())
}
