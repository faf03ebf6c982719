//! NetBird's management API as a source of configuration (`[netbird]`).
//!
//! The local file keeps what is the gateway's own (interfaces, conntrack,
//! DNS upstreams); peers, networks, policies and this peer's groups come
//! from the account, read with a service user's token over REST
//! (`client`), mapped as NetBird means them (`map`, `rules`), merged into
//! an ordinary configuration (`merge`) and validated, compiled and
//! reloaded in place like a file change (`poll` feeds the daemon).

pub mod api;
pub mod client;
pub mod diff;
pub mod map;
pub mod poll;
mod rules;
#[cfg(test)]
mod tests;

use crate::config::{Config, Netbird};

pub use client::{Client, SyncError};
pub use map::{Import, Warning};

/// Where NetBird clients send a routing peer their queries for domain
/// resources: 22054, and 5353 for clients and accounts before v0.59.
pub const DNS_PORTS: [u16; 2] = [22054, 5353];

/// The standalone configuration equivalent to `local` with `import`: no
/// `[netbird]`, the imported peers, networks, policies and groups, and the
/// forwarder on NetBird's DNS ports too. Without an import (no sync yet),
/// the same with nothing granted.
pub fn merge(local: &Config, import: Option<&Import>) -> Config {
    let mut c = local.clone();
    c.netbird = None;
    for port in DNS_PORTS {
        if c.dns.port != port && !c.dns.extra_ports.contains(&port) {
            c.dns.extra_ports.push(port);
        }
    }
    if let Some(i) = import {
        c.routing_peer.groups = i.groups.clone();
        c.peers = i.peers.clone();
        c.networks = i.networks.clone();
        c.policies = i.policies.clone();
    }
    c
}

/// `config` as TOML, headed by where it came from and what was left out.
pub fn render(config: &Config, source: &Netbird, import: &Import) -> anyhow::Result<String> {
    let mut out = format!(
        "# Imported from NetBird ({}) for peer `{}` ({}).\n# A standalone configuration: `routing-peer check --config` accepts it.\n",
        source.management_url, import.me.name, import.me.id
    );
    for w in &import.warnings {
        out.push_str(&format!("# warning: {}: {}\n", w.id, w.message));
    }
    out.push('\n');
    out.push_str(&toml::to_string(config)?);
    Ok(out)
}

/// One sync, start to finish: the documents, the import, and the merged
/// configuration, validated.
pub async fn sync_once(
    client: &mut Client,
    local: &Config,
    source: &Netbird,
) -> Result<(Import, Config), SyncError> {
    let overlay: Vec<std::net::IpAddr> = local
        .routing_peer
        .overlay_addresses
        .iter()
        .map(|n| n.addr())
        .collect();
    let docs = client.documents(source.peer.as_deref(), &overlay).await?;
    let import = map::import(&docs, source.peer.as_deref(), &overlay)?;
    let merged = merge(local, Some(&import));
    let (problems, _) = crate::config::validate(&merged);
    if let Some(p) = problems.first() {
        return Err(SyncError::Invalid(format!(
            "{}: {} ({} problem(s))",
            p.field,
            p.message,
            problems.len()
        )));
    }
    Ok((import, merged))
}
