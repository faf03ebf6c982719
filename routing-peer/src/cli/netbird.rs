//! `routing-peer netbird import|diff`: one sync from NetBird's API, printed
//! as the standalone TOML it amounts to, or as the change it would make to
//! the running configuration. The token never appears in either.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{args::NetbirdCommand, context, load_config_of, require_state};
use crate::config::{self, netbird, Config, Netbird};

pub async fn run(instance: &str, command: NetbirdCommand) -> Result<()> {
    match command {
        NetbirdCommand::Import { config } => {
            let (local, source) = source_of(&config)?;
            let (import, merged) = sync(&local, &source).await?;
            print!("{}", netbird::render(&merged, &source, &import)?);
            Ok(())
        }
        NetbirdCommand::Diff { config } => {
            let (local, source) = source_of(&config)?;
            let status = require_state(&context(instance), instance)?;
            let running = load_config_of(&status)?;
            let (_, merged) = sync(&local, &source).await?;
            let lines = netbird::diff::diff(&running, &merged);
            if lines.is_empty() {
                println!("no change: the running configuration matches NetBird");
            }
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
    }
}

fn source_of(path: &Path) -> Result<(Config, Netbird)> {
    let local = config::load(path)?.config;
    let Some(source) = local.netbird.clone() else {
        bail!(
            "{}: no [netbird] section: add management_url and token_file",
            path.display()
        );
    };
    Ok((local, source))
}

async fn sync(local: &Config, source: &Netbird) -> Result<(netbird::Import, Config)> {
    let mut client = netbird::Client::new(source)?;
    netbird::sync_once(&mut client, local, source)
        .await
        .with_context(|| format!("reading NetBird at {}", source.management_url))
}
