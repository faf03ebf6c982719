//! The `routing-peer` binary: the daemon and the operator commands.

use clap::Parser;
use routing_peer::cli::{self, args::Cli};

/// A reload of a 100k-rule configuration allocates millions of small
/// objects (TOML values, rule sets, map entries); mimalloc halves the time
/// glibc's allocator spends on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Errors meant for the operator print as one line (the cause chain joined
/// with `: `), without a backtrace whatever RUST_BACKTRACE says.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    match cli::run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routing-peer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
