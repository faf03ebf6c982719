//! Where events go: a bounded buffer of the latest (`observe --since`),
//! the live `observe` clients, and the counters `status` and `/metrics`
//! show. Events are kept as the kernel wrote them and named only when a
//! client reads them: a gateway opening 100k flows a second with nobody
//! watching pays a copy per event, not a record of strings.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use routing_peer_common::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::record::{self, Namer, Record};

/// An event with what names it: the clocks when it was read, and the
/// names of the configuration running then.
pub struct Stamped {
    pub event: Event,
    pub mono_now: u64,
    pub wall_now: SystemTime,
    pub namer: Arc<Namer>,
}

impl Stamped {
    pub fn record(&self) -> Record {
        self.namer.record(&self.event, self.mono_now, self.wall_now)
    }

    /// As the record's `time_unix_ms`, without making the record.
    pub fn time_unix_ms(&self) -> u64 {
        record::unix_ms(record::wall_time(
            self.event.time_ns,
            self.mono_now,
            self.wall_now,
        ))
    }
}

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
    recent: Mutex<VecDeque<Arc<Stamped>>>,
    live: broadcast::Sender<Arc<Stamped>>,
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
    pub fn publish(&self, event: Stamped) {
        let event = Arc::new(event);
        let kind = record::kind_name(event.event.kind);
        let mut counters = crate::locks::lock(&self.counters);
        match counters.published.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                counters.published.insert(kind.to_string(), 1);
            }
        }
        drop(counters);
        let mut recent = crate::locks::lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        drop(recent);
        // No client listening is fine.
        let _ = self.live.send(event);
    }

    /// The kept events from `since_unix_ms` on, and the live stream after them.
    pub fn subscribe(
        &self,
        since_unix_ms: Option<u64>,
    ) -> (Vec<Arc<Stamped>>, broadcast::Receiver<Arc<Stamped>>) {
        let recent = crate::locks::lock(&self.recent);
        let rx = self.live.subscribe();
        let replay = match since_unix_ms {
            Some(t) => recent
                .iter()
                .filter(|r| r.time_unix_ms() >= t)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use routing_peer_common::EventKind;

    use super::*;

    fn stamped(kind: EventKind, time_ns: u64, namer: &Arc<Namer>) -> Stamped {
        Stamped {
            event: Event {
                time_ns,
                family: 4,
                proto: 17,
                kind: kind as u8,
                ..Default::default()
            },
            mono_now: 10_000_000_000,
            wall_now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            namer: namer.clone(),
        }
    }

    /// Kept events replay from `--since` on, as the records they name,
    /// at most `RECENT` of them; the counters count them by type.
    #[test]
    fn events_replay_since_a_time_named_as_records() {
        let hub = Hub::default();
        let namer = Arc::new(Namer::default());
        // 1 s, 0.5 s and 0.1 s before the stamps' "now".
        hub.publish(stamped(EventKind::Start, 9_000_000_000, &namer));
        hub.publish(stamped(EventKind::Drop, 9_500_000_000, &namer));
        hub.publish(stamped(EventKind::End, 9_900_000_000, &namer));
        let now_ms = 1_800_000_000_000;
        let (replay, _live) = hub.subscribe(Some(now_ms - 500));
        let kinds: Vec<String> = replay.iter().map(|s| s.record().kind).collect();
        assert_eq!(kinds, ["drop", "end"]);
        assert_eq!(replay[0].time_unix_ms(), replay[0].record().time_unix_ms);
        assert_eq!(replay[0].time_unix_ms(), now_ms - 500);
        assert!(hub.subscribe(None).0.is_empty());
        let published = crate::locks::lock(&hub.counters).published.clone();
        assert_eq!(
            published.into_iter().collect::<Vec<_>>(),
            [("drop".into(), 1), ("end".into(), 1), ("start".into(), 1)]
        );
        for i in 0..RECENT as u64 + 5 {
            hub.publish(stamped(EventKind::Start, 9_000_000_000 + i, &namer));
        }
        assert_eq!(hub.subscribe(Some(0)).0.len(), RECENT);
    }

    /// A live client gets each event once published.
    #[test]
    fn a_live_client_receives_what_is_published() {
        let hub = Hub::default();
        let namer = Arc::new(Namer::default());
        let (_, mut live) = hub.subscribe(None);
        hub.publish(stamped(EventKind::End, 9_000_000_000, &namer));
        let got = live.try_recv().expect("one event");
        assert_eq!(got.record().kind, "end");
        assert!(live.try_recv().is_err());
    }
}
