//! The daemon's side of events: stamped with the running configuration's
//! names and handed to the hub (`observe`), and named for the exporters.

use std::{sync::Arc, time::SystemTime};

use anyhow::Result;
use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use routing_peer_common::{Event, EventStat};
use tracing::warn;

use super::Daemon;
use crate::{
    config,
    datapath::gc,
    events::{file::JsonLines, ipfix::Ipfix, reader, reader::Reader, Hub, Namer, Stamped},
};

pub(super) struct Events {
    reader: Reader,
    pub hub: Arc<Hub>,
    namer: Arc<Namer>,
    /// The names changed (a reload, resolved addresses): rebuild first.
    pub stale: bool,
    file: Option<JsonLines>,
    ipfix: Option<Ipfix>,
    exports: config::Events,
    /// Flows whose end the kernel reported since the last GC pass: GC's
    /// "vanished" ones among them are not evictions.
    kernel_ended: std::collections::HashSet<routing_peer_common::CtKey>,
}

impl Events {
    pub fn take(ebpf: &mut Ebpf, settings: &config::Events) -> Result<(Self, RingBuf<MapData>)> {
        let (reader, ring) = Reader::take(ebpf)?;
        let mut events = Self {
            reader,
            hub: Arc::new(Hub::default()),
            namer: Arc::default(),
            stale: true,
            file: None,
            ipfix: None,
            exports: config::Events::default(),
            kernel_ended: Default::default(),
        };
        events.configure(settings);
        Ok((events, ring))
    }

    /// Follows the `[events]` settings: exporters opened or closed.
    pub fn configure(&mut self, settings: &config::Events) {
        if *settings == self.exports && (self.file.is_some() || settings.file.is_none()) {
            return;
        }
        self.file = settings
            .file
            .as_ref()
            .map(|p| JsonLines::new(p.clone(), settings.file_max_bytes, settings.file_keep));
        self.ipfix = settings
            .ipfix_collector
            .and_then(|to| match Ipfix::new(to) {
                Ok(x) => Some(x),
                Err(e) => {
                    warn!(collector = %to, "IPFIX export: {e}");
                    self.hub.export_error("ipfix");
                    None
                }
            });
        self.exports = settings.clone();
    }
}

impl Daemon {
    /// Events from the kernel (ring buffer), drop aggregates, and GC's
    /// ends: named, kept and exported.
    pub(super) fn publish_events(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let ev = &mut self.events;
        if ev.stale {
            let resolved: Vec<_> = self
                .resolved
                .iter()
                .map(|(n, a)| (n.clone(), a.keys().copied().collect()))
                .collect();
            ev.namer = Arc::new(Namer::new(&self.config, &self.compiled.names, &resolved));
            ev.stale = false;
        }
        let (mono, wall) = (gc::monotonic_ns(), SystemTime::now());
        let mut ipfix_batch = Vec::new();
        for e in &events {
            if e.kind == routing_peer_common::EventKind::End as u8 {
                ev.kernel_ended.insert(reader::flow_key(e));
            }
            let stamped = Stamped {
                event: *e,
                mono_now: mono,
                wall_now: wall,
                namer: ev.namer.clone(),
            };
            // Named here only for an exporter; `observe` names its own.
            if ev.file.is_some() || ev.ipfix.is_some() {
                let record = stamped.record();
                if let Some(file) = ev.file.as_mut() {
                    let line = serde_json::to_string(&record).unwrap_or_default();
                    if let Err(err) = file.write(&line) {
                        warn!(error = %err, "event file export");
                        ev.hub.export_error("file");
                    }
                }
                if ev.ipfix.is_some() {
                    ipfix_batch.push(record);
                }
            }
            ev.hub.publish(stamped);
        }
        if let Some(ipfix) = ev.ipfix.as_mut() {
            if let Err(err) = ipfix.send(&ipfix_batch) {
                warn!(error = %err, "IPFIX export");
                ev.hub.export_error("ipfix");
            }
        }
    }

    /// Once a second: the drops counted into aggregates since.
    pub(super) fn flush_drop_events(&mut self) {
        let events = self.events.reader.flush_drops(gc::monotonic_ns());
        self.publish_events(events);
    }

    /// GC's removals, and the flows it found gone that no end reported
    /// (LRU evictions), as flow ends.
    pub(super) fn publish_ends(&mut self, stats: &gc::GcStats) {
        let now = gc::monotonic_ns();
        let kernel_ended = std::mem::take(&mut self.events.kernel_ended);
        let events = stats
            .ended
            .iter()
            .map(|(k, e)| reader::gc_end(k, e, now, false))
            .chain(
                stats
                    .vanished
                    .iter()
                    .filter(|(k, _)| !kernel_ended.contains(k))
                    .map(|(k, e)| reader::gc_end(k, e, now, true)),
            )
            .collect();
        self.publish_events(events);
    }

    /// The counters `status` and `/metrics` show.
    pub(super) fn event_counters(&self) -> crate::events::EventCounters {
        let mut c = crate::locks::lock(&self.events.hub.counters).clone();
        let kernel = self.events.reader.stats();
        c.aggregated = kernel[EventStat::Aggregated as usize];
        c.lost = kernel[EventStat::Lost as usize];
        c.unaggregated = kernel[EventStat::Unaggregated as usize];
        c
    }
}
