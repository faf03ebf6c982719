//! What the daemon knows that the maps don't: peer status, names, the
//! running configuration. Served on a root-only unix socket while the daemon
//! runs, and mirrored into a state file so the CLI can name things while it
//! doesn't.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
};

use crate::{compile::Names, config::WireguardMode};

pub const RUN_ROOT: &str = "/run/routing-peer";

pub fn run_dir(instance: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(instance)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    pub name: String,
    pub addresses: Vec<String>,
    pub public_key: String,
    pub endpoint: Option<String>,
    /// Seconds since the last handshake; `None` if there was none.
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub up: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramReport {
    pub program: String,
    pub hook: String,
    pub interface: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub name: String,
    pub wireguard_mode: WireguardMode,
    pub interface: String,
    pub listen_port: u16,
    pub public_key: String,
    pub metric: u16,
    pub config_path: String,
    pub generation: u32,
    pub last_reload_unix: u64,
    pub peers: Vec<PeerReport>,
    pub programs: Vec<ProgramReport>,
    /// Domain resource name → addresses currently installed.
    pub resolved: Vec<(String, Vec<String>)>,
    pub dns: crate::dns::CounterSnapshot,
    /// The routing peer's own addresses (overlay and LAN): the input chain.
    pub self_addresses: Vec<std::net::IpAddr>,
    /// The safety-net nftables table (see `datapath::safety_net`).
    #[serde(default)]
    pub safety_net_table: String,
    /// Where the configuration comes from, and how its syncs go.
    #[serde(default)]
    pub source: SourceStatus,
    /// Flow and drop events: published, aggregated, lost, export errors.
    #[serde(default)]
    pub events: crate::events::EventCounters,
    /// Names by id, for the CLI's tables. Not in the status document: at
    /// 100k rules they are megabytes, and every `status` would carry them.
    /// They live in `names.json` beside the state file.
    #[serde(skip)]
    pub names: Arc<Names>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// The configuration's source: the file alone, or NetBird's API through it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// `file` or `netbird`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
    /// This routing peer in NetBird: `name (id)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The last sync that applied (or found nothing to change).
    #[serde(default)]
    pub last_sync_unix: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_reason: Option<String>,
    #[serde(default)]
    pub last_error_unix: Option<u64>,
    /// Failed syncs by reason, since start.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// What the last import left out or narrowed.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Requests the last sync made.
    #[serde(default)]
    pub requests_per_sync: u64,
}

/// The configuration text the daemon last applied: what the operator's
/// tools (`policy check`, `networks ls`) answer for, whatever the file on
/// disk says since.
pub fn applied_file(instance: &str) -> PathBuf {
    run_dir(instance).join("applied.toml")
}

pub fn state_file(instance: &str) -> PathBuf {
    run_dir(instance).join("state.json")
}

pub fn socket_path(instance: &str) -> PathBuf {
    run_dir(instance).join("control.sock")
}

/// Writes the state file atomically (rename), readable by root only.
pub fn write_state(instance: &str, status: &Status) -> Result<()> {
    let dir = run_dir(instance);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, state_file(instance))?;
    Ok(())
}

pub fn names_file(instance: &str) -> PathBuf {
    run_dir(instance).join("names.json")
}

/// Writes the names of the installed configuration, atomically.
pub fn write_names(instance: &str, names: &Names) -> Result<()> {
    let dir = run_dir(instance);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("names.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(names)?)?;
    std::fs::rename(&tmp, names_file(instance))?;
    Ok(())
}

pub fn read_names(instance: &str) -> Option<Names> {
    let text = std::fs::read(names_file(instance)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn read_state(instance: &str) -> Option<Status> {
    let text = std::fs::read(state_file(instance)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Serves `status` requests: one JSON document per connection.
pub async fn serve(
    instance: String,
    status: SharedStatus,
    hub: std::sync::Arc<crate::events::Hub>,
) -> Result<()> {
    let path = socket_path(&instance);
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(run_dir(&instance))?;
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let status = status.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            if let Some(since) = line.trim().strip_prefix("observe") {
                stream_events(&mut write, &hub, since.trim().parse().ok()).await;
                return;
            }
            let reply = match line.trim() {
                "status" => {
                    let snapshot = crate::locks::lock(&status).clone();
                    serde_json::to_string(&snapshot).unwrap_or_default()
                }
                other => {
                    serde_json::json!({ "error": format!("unknown request `{other}`") }).to_string()
                }
            };
            let _ = write.write_all(reply.as_bytes()).await;
            let _ = write.write_all(b"\n").await;
        });
    }
}

/// `observe`: the kept events since `since_unix_ms` (none without it),
/// then every new one, as JSON-lines records, until the client goes.
async fn stream_events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    hub: &crate::events::Hub,
    since_unix_ms: Option<u64>,
) {
    let (replay, mut live) = hub.subscribe(since_unix_ms);
    let line = |r: &crate::events::Stamped| {
        let mut l = serde_json::to_string(&r.record()).unwrap_or_default();
        l.push('\n');
        l
    };
    for r in &replay {
        if write.write_all(line(r).as_bytes()).await.is_err() {
            return;
        }
    }
    loop {
        match live.recv().await {
            Ok(r) => {
                if write.write_all(line(&r).as_bytes()).await.is_err() {
                    return;
                }
            }
            // A client too slow for the stream misses records, and is told.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = format!("{{\"type\":\"lagged\",\"count\":{n}}}\n");
                if write.write_all(note.as_bytes()).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Asks a running daemon for its status; `None` when none answers.
pub fn query_status(instance: &str) -> Option<Status> {
    let mut stream = UnixStream::connect(socket_path(instance)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(b"status\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}
