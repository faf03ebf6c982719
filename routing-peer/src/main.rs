use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use routing_peer::{
    datapath::{self, PinDir},
    stats,
};
use routing_peer_common::program_names;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "routing-peer",
    version,
    about = "eBPF routing peer for WireGuard overlays"
)]
struct Cli {
    /// Instance name: pins live under /sys/fs/bpf/routing-peer/<instance>.
    #[arg(long, global = true, default_value = "default")]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data path and run until SIGINT/SIGTERM.
    Run {
        /// Overlay (WireGuard/TUN, or a veth stand-in) interface.
        #[arg(long)]
        overlay: String,
        /// LAN interface.
        #[arg(long)]
        lan: String,
        /// Forward kernel debug logs (aya-log) to tracing.
        #[arg(long)]
        verbose_datapath: bool,
    },
    /// Show data path counters from the pinned maps.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Detach everything and remove this instance's pins.
    Down,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let pins = PinDir::new(&cli.instance);
    match cli.command {
        Command::Run {
            overlay,
            lan,
            verbose_datapath,
        } => run(&pins, &overlay, &lan, verbose_datapath).await,
        Command::Stats { json } => print_stats(&pins, json),
        Command::Down => {
            pins.remove()
                .with_context(|| format!("removing {}", pins.root().display()))?;
            println!("routing-peer instance {} is down", cli.instance);
            Ok(())
        }
    }
}

async fn run(pins: &PinDir, overlay: &str, lan: &str, verbose: bool) -> Result<()> {
    let mut ebpf = datapath::load(Some(pins), datapath::log_level_for(verbose))
        .context("loading the data path")?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf).context("initialising aya-log")?;
    let overlay_program = datapath::overlay_program_for(overlay)?;
    datapath::attach_tc(&mut ebpf, overlay_program, overlay, pins)?;
    datapath::attach_xdp(&mut ebpf, program_names::LAN_XDP, lan, pins)?;
    info!(overlay, lan, pins = %pins.root().display(), "data path running");

    // SAFETY: the ring buffer's fd is owned by `logger`, which the AsyncFd
    // owns until it is dropped, so the fd outlives its registration.
    let mut logs = unsafe { AsyncFd::register(logger) }
        .map_err(|e| anyhow::anyhow!("polling aya-log: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            guard = logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // The pinned links keep the data path up; `routing-peer down` removes it.
    info!("daemon exiting; the data path stays attached until `routing-peer down`");
    Ok(())
}

fn print_stats(pins: &PinDir, json: bool) -> Result<()> {
    let snapshot = match stats::read_pinned(pins) {
        Ok(s) => s,
        Err(stats::StatsError::NotRunning(path)) => {
            warn!("no data path pinned at {path}");
            anyhow::bail!("routing-peer is not running (no pins at {path})");
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(());
    }
    println!("{:<18} {:>12} {:>14}", "HOOK", "PACKETS", "BYTES");
    for c in &snapshot.hooks {
        println!("{:<18} {:>12} {:>14}", c.name, c.packets, c.bytes);
    }
    println!();
    println!("{:<18} {:>12} {:>14}", "DROP REASON", "PACKETS", "BYTES");
    for c in &snapshot.drops {
        println!("{:<18} {:>12} {:>14}", c.name, c.packets, c.bytes);
    }
    Ok(())
}
