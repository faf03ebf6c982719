//! Where the running configuration comes from: the file, and with
//! `[netbird]`, the last good import from NetBird's API merged into it.
//! The last good import is kept in the run directory, so a restart while
//! the API is down starts from it rather than from nothing.

use std::collections::BTreeSet;

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};

use super::unix_now;
use crate::{
    config::{
        netbird::{self, poll::Outcome, Import},
        Config, Netbird,
    },
    control::{self, SharedStatus, SourceStatus},
};

pub(super) struct Source {
    instance: String,
    /// The file's configuration the import merges into.
    local: Config,
    imported: Option<Import>,
    pub syncs: mpsc::Receiver<Outcome>,
    tx: mpsc::Sender<Outcome>,
    poller: Option<JoinHandle<()>>,
    /// Warnings already logged: each once, not every poll.
    logged: BTreeSet<String>,
    pub status: SourceStatus,
}

fn last_import_file(instance: &str) -> std::path::PathBuf {
    control::run_dir(instance).join("netbird-import.json")
}

impl Source {
    /// Reads the source once, before the data path starts: the effective
    /// configuration to start with.
    pub async fn start(local: &Config, instance: &str) -> (Self, Config) {
        let (tx, syncs) = mpsc::channel(4);
        let mut s = Self {
            instance: instance.to_string(),
            local: local.clone(),
            imported: None,
            syncs,
            tx,
            poller: None,
            logged: BTreeSet::new(),
            status: SourceStatus {
                kind: "file".into(),
                ..Default::default()
            },
        };
        let Some(nb) = local.netbird.clone() else {
            return (s, local.clone());
        };
        s.status = netbird_status(&nb);
        let first = match netbird::Client::new(&nb) {
            Ok(mut client) => {
                let r = netbird::sync_once(&mut client, local, &nb).await;
                Outcome {
                    result: r,
                    requests: client.requests,
                }
            }
            Err(e) => Outcome {
                result: Err(e),
                requests: 0,
            },
        };
        let ok = first.result.is_ok();
        if s.accept(first, None).is_none() {
            match std::fs::read(last_import_file(instance))
                .ok()
                .and_then(|b| serde_json::from_slice::<Import>(&b).ok())
            {
                Some(last) => {
                    warn!("NetBird unreachable at start: running the last good import until a sync succeeds");
                    s.imported = Some(last);
                }
                None => warn!(
                    "NetBird unreachable at start and no earlier import: nothing is granted until a sync succeeds"
                ),
            }
        }
        let effective = s.effective(local);
        s.spawn(&nb, ok);
        (s, effective)
    }

    /// The configuration `local` (the file) stands for now.
    pub fn effective(&self, local: &Config) -> Config {
        match &local.netbird {
            Some(_) => netbird::merge(local, self.imported.as_ref()),
            None => local.clone(),
        }
    }

    /// Follows a changed file: a new `[netbird]` (or local settings)
    /// restarts the poller at once; none stops it.
    pub fn follow(&mut self, local: &Config, status: &SharedStatus) {
        let changed = *local != self.local;
        self.local = local.clone();
        match &local.netbird {
            Some(nb) if changed || self.poller.is_none() => {
                if self.status.management_url.as_deref() != Some(nb.management_url.as_str()) {
                    self.status = netbird_status(nb);
                }
                self.spawn(nb, false);
            }
            Some(_) => {}
            None => {
                if let Some(p) = self.poller.take() {
                    p.abort();
                }
                self.imported = None;
                self.status = SourceStatus {
                    kind: "file".into(),
                    ..Default::default()
                };
            }
        }
        crate::locks::lock(status).source = self.status.clone();
    }

    fn spawn(&mut self, nb: &Netbird, synced: bool) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
        let first = if synced {
            std::time::Duration::from_secs(nb.poll_secs)
        } else {
            std::time::Duration::ZERO
        };
        self.poller = Some(tokio::spawn(netbird::poll::run(
            self.local.clone(),
            nb.clone(),
            first,
            self.tx.clone(),
        )));
    }

    /// Takes one sync's outcome: the configuration to apply, or `None`
    /// (a fault, logged and counted; the running configuration stays).
    pub fn accept(&mut self, outcome: Outcome, status: Option<&SharedStatus>) -> Option<Config> {
        let now = unix_now();
        self.status.requests_per_sync = outcome.requests;
        let result = outcome.result.and_then(|(import, synced)| {
            // Merged again: the file may have changed since the poller
            // began. `sync_once` validated what it merged: only a different
            // merge needs validating again (at 100k rules, 0.2 s a poll).
            let merged = netbird::merge(&self.local, Some(&import));
            if merged == synced {
                return Ok((import, merged));
            }
            let (problems, _) = crate::config::validate(&merged);
            match problems.first() {
                Some(p) => Err(netbird::SyncError::Invalid(format!(
                    "{}: {}",
                    p.field, p.message
                ))),
                None => Ok((import, merged)),
            }
        });
        let applied = match result {
            Ok((import, merged)) => {
                for w in &import.warnings {
                    let line = format!("{}: {}", w.id, w.message);
                    if self.logged.insert(line.clone()) {
                        warn!(id = %w.id, "NetBird import: {}", w.message);
                    }
                }
                self.status.peer = Some(format!("{} ({})", import.me.name, import.me.id));
                self.status.warnings = import
                    .warnings
                    .iter()
                    .map(|w| format!("{}: {}", w.id, w.message))
                    .collect();
                self.status.last_sync_unix = Some(now);
                if self.imported.as_ref() != Some(&import) {
                    self.persist(&import);
                    info!(
                        peers = import.peers.len(),
                        networks = import.networks.len(),
                        policies = import.policies.len(),
                        requests = outcome.requests,
                        "NetBird sync: the account changed"
                    );
                }
                self.imported = Some(import);
                Some(merged)
            }
            Err(e) => {
                let reason = e.reason();
                error!(
                    reason,
                    "NetBird sync failed, running configuration kept: {e}"
                );
                *self.status.errors.entry(reason.to_string()).or_default() += 1;
                self.status.last_error = Some(e.to_string());
                self.status.last_error_reason = Some(reason.to_string());
                self.status.last_error_unix = Some(now);
                None
            }
        };
        if let Some(status) = status {
            crate::locks::lock(status).source = self.status.clone();
        }
        applied
    }

    fn persist(&self, import: &Import) {
        let path = last_import_file(&self.instance);
        let write = serde_json::to_vec(import)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b));
        if let Err(e) = write {
            warn!(error = %e, path = %path.display(), "keeping the last good NetBird import");
        }
    }

    /// The text `applied.toml` gets: the file's, or with `[netbird]` the
    /// standalone equivalent of what runs.
    pub fn applied_text(&self, config: &Config, file_text: &str) -> String {
        match self.local.netbird {
            Some(_) => toml::to_string(config).unwrap_or_else(|_| file_text.to_string()),
            None => file_text.to_string(),
        }
    }
}

fn netbird_status(nb: &Netbird) -> SourceStatus {
    SourceStatus {
        kind: "netbird".into(),
        management_url: Some(nb.management_url.clone()),
        ..Default::default()
    }
}
