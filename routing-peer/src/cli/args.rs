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
