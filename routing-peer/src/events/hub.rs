//! Where records go: a bounded buffer of the latest (`observe --since`),
//! the live `observe` clients, and the counters `status` and `/metrics`
//! show.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::record::Record;

/// Records kept for `observe --since`.
pub const RECENT: usize = 4096;

/// What the events did, for `status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventCounters {
    /// Records published, by type (`start`, `end`, `drop`).
    pub published: BTreeMap<String, u64>,
    /// Dropped packets reported inside aggregates rather than one by one.
    pub aggregated: u64,
    /// Events the ring buffer had no room for.
    pub lost: u64,
    /// Drops reported one by one, the aggregate table being full.
    pub unaggregated: u64,
    /// Export failures, by exporter (`file`, `ipfix`).
    pub export_errors: BTreeMap<String, u64>,
}

pub struct Hub {
    recent: Mutex<VecDeque<Arc<Record>>>,
    live: broadcast::Sender<Arc<Record>>,
    pub counters: Mutex<EventCounters>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            live: broadcast::channel(RECENT).0,
            counters: Mutex::default(),
        }
    }
}

impl Hub {
    pub fn publish(&self, record: Record) {
        let record = Arc::new(record);
        *crate::locks::lock(&self.counters)
            .published
            .entry(record.kind.clone())
            .or_default() += 1;
        let mut recent = crate::locks::lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        drop(recent);
        // No client listening is fine.
        let _ = self.live.send(record);
    }

    /// The kept records from `since_unix_ms` on, and the live stream after them.
    pub fn subscribe(
        &self,
        since_unix_ms: Option<u64>,
    ) -> (Vec<Arc<Record>>, broadcast::Receiver<Arc<Record>>) {
        let recent = crate::locks::lock(&self.recent);
        let rx = self.live.subscribe();
        let replay = match since_unix_ms {
            Some(t) => recent
                .iter()
                .filter(|r| r.time_unix_ms >= t)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (replay, rx)
    }

    pub fn export_error(&self, exporter: &str) {
        *crate::locks::lock(&self.counters)
            .export_errors
            .entry(exporter.to_string())
            .or_default() += 1;
    }
}
