//! The command line, as clap reads it.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::WireguardMode;

#[derive(Parser)]
#[command(
    name = "routing-peer",
    version,
    about = "eBPF routing peer for WireGuard overlay networks"
)]
pub struct Cli {
    /// Instance name: state lives under /sys/fs/bpf/routing-peer/<instance> and /run/routing-peer/<instance>.
    #[arg(long, global = true, default_value = "default")]
    pub instance: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the routing peer: WireGuard, the data path, hot reload.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Override the configured WireGuard mode.
        #[arg(long, value_enum)]
        wireguard: Option<WireguardMode>,
        /// Forward kernel debug logs (aya-log) to the daemon's log.
        #[arg(long)]
        verbose_datapath: bool,
        /// Serve Prometheus metrics on http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Detach everything, stop WireGuard and remove this instance's state.
    Down,
    /// WireGuard, peers, programs, maps and configuration generation.
    Status(JsonFlag),
    /// Live flows from conntrack.
    Flows(FlowsArgs),
    /// Flow starts, ends and drops as the data path decides them, live.
    Observe(ObserveArgs),
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
    /// NetBird's management API as the configuration source.
    Netbird {
        #[command(subcommand)]
        command: NetbirdCommand,
    },
    /// Validate a configuration file without running it.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Args)]
pub struct JsonFlag {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FlowsArgs {
    #[arg(long)]
    pub json: bool,
    /// Peer name or overlay address.
    #[arg(long)]
    pub peer: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub proto: Option<String>,
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, value_parser = ["bytes", "packets", "age"])]
    pub sort: Option<String>,
    #[arg(long)]
    pub top: Option<usize>,
    /// Refresh every second, with rates.
    #[arg(long)]
    pub watch: bool,
    /// Top talkers: flows, packets and bytes summed per peer or resource.
    #[arg(long, value_parser = ["peer", "resource"])]
    pub by: Option<String>,
}

#[derive(Args)]
pub struct ObserveArgs {
    /// JSON lines (docs/events.md has the schema).
    #[arg(long)]
    pub json: bool,
    /// Peer name or overlay address.
    #[arg(long)]
    pub peer: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long, value_parser = ["forwarded", "dropped"])]
    pub verdict: Option<String>,
    /// Drop reason (`no-policy`, …) or end reason (`close`, …).
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub proto: Option<String>,
    /// Either port.
    #[arg(long)]
    pub port: Option<u16>,
    /// First replay the daemon's recent events this far back (`30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this long (`10s`).
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Subcommand)]
pub enum NetworksCommand {
    /// List networks, resources, resolved addresses and the policies that use them.
    Ls(JsonFlag),
}

#[derive(Subcommand)]
pub enum NetbirdCommand {
    /// Print the standalone TOML equivalent of what NetBird holds now.
    Import {
        /// A configuration with a [netbird] section.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// What the next sync would change in the running configuration.
    Diff {
        /// The configuration the daemon runs (its [netbird] section).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Would this traffic pass, and which rule decides?
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Peer name or overlay address.
    #[arg(long)]
    pub from: String,
    /// IP address or domain name.
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long)]
    pub json: bool,
}
