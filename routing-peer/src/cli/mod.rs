//! The operator commands. Counters and flows come straight from the pinned
//! maps (through `observe`), so they work while the daemon is down or
//! restarting; names and peer status come from the daemon (its control
//! socket, or its last state file when it isn't running).

pub mod args;
pub mod flows;
pub mod netbird;
pub mod networks;
pub mod observe;
pub mod policy;
pub mod stats;
pub mod status;
pub mod table;
pub mod watch;

use std::path::Path;

use anyhow::{bail, Context, Result};

use self::args::{Cli, Command, JsonFlag, NetbirdCommand, NetworksCommand, PolicyCommand};
use crate::{
    compile::Names,
    config::{self, Config},
    control::{self, Status},
    daemon,
    datapath::PinDir,
};

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<()> {
    // Everything but `validate` reads or changes the data path, pins and
    // the daemon's state: say so, rather than "not running".
    let needs_root = !matches!(
        cli.command,
        Command::Validate { .. }
            | Command::Netbird {
                command: NetbirdCommand::Import { .. }
            }
    );
    if needs_root && !is_root() {
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
                wireguard,
                verbose_datapath,
                metrics_listen,
            })
            .await
        }
        Command::Down => status::down(&instance, &pins),
        Command::Status(JsonFlag { json }) => status::run(&instance, &pins, json),
        Command::Flows(args) => flows::run(&instance, &pins, args),
        Command::Observe(args) => observe::run(&instance, args),
        Command::Stats { json, watch } => stats::run(&instance, &pins, json, watch),
        Command::Networks {
            command: NetworksCommand::Ls(JsonFlag { json }),
        } => networks::run(&instance, json),
        Command::Policy {
            command: PolicyCommand::Check(args),
        } => policy::run(&instance, args),
        Command::Netbird { command } => netbird::run(&instance, command).await,
        Command::Validate { config } => validate(&config),
    }
}

fn validate(path: &Path) -> Result<()> {
    let loaded = config::load(path)?;
    for w in &loaded.warnings {
        println!("warning: {}: {}: {}", path.display(), w.field, w.message);
    }
    println!("{}: valid", path.display());
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Names and config for display: from the running daemon, else its state file.
pub struct DaemonView {
    pub status: Option<Status>,
    pub running: bool,
}

pub fn context(instance: &str) -> DaemonView {
    match control::query_status(instance) {
        Some(s) => DaemonView {
            status: Some(s),
            running: true,
        },
        None => DaemonView {
            status: control::read_state(instance),
            running: false,
        },
    }
}

pub fn require_state(ctx: &DaemonView, instance: &str) -> Result<Status> {
    ctx.status.clone().with_context(|| {
        format!("routing-peer is not running for instance {instance}, and has no saved state")
    })
}

fn names_for(instance: &str) -> Names {
    control::read_names(instance).unwrap_or_default()
}

/// The configuration the daemon applied (not the file on disk, which may
/// have changed or failed to load since).
pub fn load_config_of(status: &Status) -> Result<Config> {
    let path = Path::new(&status.config_path);
    match std::fs::read_to_string(control::applied_file(&status.instance)) {
        Ok(text) => Ok(config::parse(path, &text)?.config),
        Err(_) => Ok(config::load(path)?.config),
    }
}
