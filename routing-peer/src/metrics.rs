//! The opt-in Prometheus endpoint (`run --metrics-listen ADDR`).
//!
//! Every scrape reads the pinned maps and the daemon's status afresh into a
//! new registry, so the numbers are exactly what `stats` and `status` show.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{control::SharedStatus, datapath::PinDir, observe};
use routing_peer_common::map_names;

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) -> Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(value);
    registry.register(Box::new(g))?;
    Ok(())
}

/// The exposition text for one scrape.
pub fn render(pins: &PinDir, status: &SharedStatus) -> Result<String> {
    let status = crate::locks::lock(status).clone();
    let stats = observe::read_stats(pins, &status.names)?;
    let r = Registry::new();

    let packets = counter_vec(
        &r,
        "routing_peer_resource_packets_total",
        "Packets per resource and direction (out: peer to resource).",
        &["resource", "direction"],
    )?;
    let bytes = counter_vec(
        &r,
        "routing_peer_resource_bytes_total",
        "Bytes per resource and direction.",
        &["resource", "direction"],
    )?;
    let denied = counter_vec(
        &r,
        "routing_peer_resource_denied_packets_total",
        "Packets to a resource that policy denied.",
        &["resource"],
    )?;
    let flows = counter_vec(
        &r,
        "routing_peer_resource_flows_total",
        "Flows opened per resource.",
        &["resource"],
    )?;
    let active = gauge_vec(
        &r,
        "routing_peer_resource_active_flows",
        "Flows per resource in conntrack now.",
        &["resource"],
    )?;
    for res in &stats.resources {
        let name = res.resource.as_str();
        packets
            .with_label_values(&[name, "out"])
            .inc_by(res.packets_out);
        packets
            .with_label_values(&[name, "in"])
            .inc_by(res.packets_in);
        bytes
            .with_label_values(&[name, "out"])
            .inc_by(res.bytes_out);
        bytes.with_label_values(&[name, "in"]).inc_by(res.bytes_in);
        denied.with_label_values(&[name]).inc_by(res.denied_packets);
        flows.with_label_values(&[name]).inc_by(res.new_flows);
        active
            .with_label_values(&[name])
            .set(res.active_flows as i64);
    }
    let drop_packets = counter_vec(
        &r,
        "routing_peer_drop_packets_total",
        "Packets dropped, by reason.",
        &["reason"],
    )?;
    let drop_bytes = counter_vec(
        &r,
        "routing_peer_drop_bytes_total",
        "Bytes dropped, by reason.",
        &["reason"],
    )?;
    for d in &stats.drops {
        drop_packets.with_label_values(&[d.name]).inc_by(d.packets);
        drop_bytes.with_label_values(&[d.name]).inc_by(d.bytes);
    }
    let handoff_packets = counter_vec(
        &r,
        "routing_peer_handoff_packets_total",
        "Packets handed to the kernel after policy, by reason.",
        &["reason"],
    )?;
    for h in &stats.handoffs {
        handoff_packets
            .with_label_values(&[h.name])
            .inc_by(h.packets);
    }
    gauge(
        &r,
        "routing_peer_conntrack_entries",
        "Conntrack entries.",
        stats.conntrack_entries as i64,
    )?;
    gauge(
        &r,
        "routing_peer_conntrack_capacity",
        "Conntrack capacity.",
        i64::from(stats.conntrack_capacity),
    )?;
    let evictions = prometheus::IntCounter::new(
        "routing_peer_conntrack_evictions_total",
        "Conntrack entries evicted by the LRU to make room.",
    )?;
    evictions.inc_by(stats.conntrack_evictions);
    r.register(Box::new(evictions))?;
    let f = &stats.fragments;
    gauge(
        &r,
        "routing_peer_fragment_datagrams",
        "Datagrams whose first-fragment verdict the fragment map holds.",
        f.datagrams as i64,
    )?;
    gauge(
        &r,
        "routing_peer_fragment_capacity",
        "Fragment map capacity (fragments.max_datagrams).",
        i64::from(f.capacity),
    )?;
    let frag_events = counter_vec(
        &r,
        "routing_peer_fragment_events_total",
        "Fragments: first ones tracked, later ones followed, hold passes, datagrams evicted.",
        &["event"],
    )?;
    for (event, n) in [
        ("tracked", f.tracked),
        ("followed", f.followed),
        ("held", f.held),
        ("evicted", f.evictions),
    ] {
        frag_events.with_label_values(&[event]).inc_by(n);
    }
    if let Some((used, cap)) = observe::occupancy(pins, map_names::NAT_FWD) {
        gauge(
            &r,
            "routing_peer_nat_mappings",
            "Masquerade mappings.",
            used as i64,
        )?;
        gauge(
            &r,
            "routing_peer_nat_capacity",
            "Masquerade mapping capacity.",
            i64::from(cap),
        )?;
    }
    let up = gauge_vec(
        &r,
        "routing_peer_peer_up",
        "1 when the peer's tunnel is up.",
        &["peer"],
    )?;
    let age = gauge_vec(
        &r,
        "routing_peer_peer_handshake_age_seconds",
        "Seconds since the peer's last handshake.",
        &["peer"],
    )?;
    for p in &status.peers {
        up.with_label_values(&[p.name.as_str()])
            .set(i64::from(p.up));
        if let Some(a) = p.handshake_age_secs {
            age.with_label_values(&[p.name.as_str()]).set(a as i64);
        }
    }
    let dns = &status.dns;
    for (name, help, value) in [
        (
            "routing_peer_dns_queries_total",
            "DNS queries received.",
            dns.queries,
        ),
        (
            "routing_peer_dns_refused_total",
            "DNS queries refused.",
            dns.refused,
        ),
        (
            "routing_peer_dns_upstream_failures_total",
            "DNS queries no upstream answered.",
            dns.upstream_failures,
        ),
        (
            "routing_peer_dns_installed_total",
            "Resolved addresses installed.",
            dns.installed,
        ),
        (
            "routing_peer_dns_expired_total",
            "Resolved addresses expired.",
            dns.expired,
        ),
    ] {
        let c = prometheus::IntCounter::new(name, help)?;
        c.inc_by(value);
        r.register(Box::new(c))?;
    }
    source(&r, &status.source)?;
    events(&r, &status.events)?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Flow and drop events: published by type, aggregated, lost, export errors.
fn events(r: &Registry, e: &crate::events::EventCounters) -> Result<()> {
    let published = counter_vec(
        r,
        "routing_peer_events_total",
        "Events published to observe and the exporters, by type (start, end, drop).",
        &["type"],
    )?;
    for (kind, n) in &e.published {
        published.with_label_values(&[kind.as_str()]).inc_by(*n);
    }
    for (name, help, value) in [
        (
            "routing_peer_events_aggregated_total",
            "Dropped packets counted into an aggregate instead of an event of their own.",
            e.aggregated,
        ),
        (
            "routing_peer_events_lost_total",
            "Events the ring buffer had no room for.",
            e.lost,
        ),
        (
            "routing_peer_events_unaggregated_total",
            "Drops reported one by one because the aggregate table was full.",
            e.unaggregated,
        ),
    ] {
        let c = prometheus::IntCounter::new(name, help)?;
        c.inc_by(value);
        r.register(Box::new(c))?;
    }
    let errors = counter_vec(
        r,
        "routing_peer_event_export_errors_total",
        "Events an exporter failed to write, by exporter (file, ipfix).",
        &["exporter"],
    )?;
    for (exporter, n) in &e.export_errors {
        errors.with_label_values(&[exporter.as_str()]).inc_by(*n);
    }
    Ok(())
}

/// The NetBird source's sync age and faults (absent for a file source).
fn source(r: &Registry, source: &crate::control::SourceStatus) -> Result<()> {
    if source.kind != "netbird" {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Never synced: the age since the epoch, so an alert on age fires.
    let age = now.saturating_sub(source.last_sync_unix.unwrap_or(0));
    gauge(
        r,
        "routing_peer_source_sync_age_seconds",
        "Seconds since the last successful sync from NetBird's API.",
        age as i64,
    )?;
    let errors = counter_vec(
        r,
        "routing_peer_source_sync_errors_total",
        "Failed syncs from NetBird's API by reason; the running configuration stays.",
        &["reason"],
    )?;
    for (reason, n) in &source.errors {
        errors.with_label_values(&[reason.as_str()]).inc_by(*n);
    }
    Ok(())
}

/// Binds the metrics listener (before the daemon reports itself up).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics on {addr}"))?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(listener)
}

/// Serves GET /metrics until the task is dropped.
pub async fn serve(listener: TcpListener, instance: String, status: SharedStatus) -> Result<()> {
    let pins = PinDir::new(&instance);
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut request = [0u8; 1024];
        let n = match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut request),
        )
        .await
        {
            Ok(Ok(n)) => n,
            _ => continue,
        };
        let line = String::from_utf8_lossy(&request[..n]);
        let response = if line.starts_with("GET /metrics") {
            match render(&pins, &status) {
                Ok(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                Err(e) => {
                    warn!("metrics: {e:#}");
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                }
            }
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        };
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netbird_source_has_its_age_and_faults() {
        let r = Registry::new();
        let mut s = crate::control::SourceStatus {
            kind: "netbird".into(),
            ..Default::default()
        };
        s.errors.insert("timeout".into(), 2);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        s.last_sync_unix = Some(now - 5);
        source(&r, &s).unwrap();
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("routing_peer_source_sync_errors_total{reason=\"timeout\"} 2"),
            "{text}"
        );
        let age: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("routing_peer_source_sync_age_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no age in:\n{text}"));
        assert!((5..=6).contains(&age), "{age}");
        // A file source has neither.
        let r = Registry::new();
        source(&r, &Default::default()).unwrap();
        assert!(r.gather().is_empty());
    }

    #[test]
    fn events_are_counted_by_type_and_exporter() {
        let r = Registry::new();
        let mut e = crate::events::EventCounters {
            aggregated: 99_999,
            lost: 3,
            ..Default::default()
        };
        e.published.insert("drop".into(), 12);
        e.export_errors.insert("ipfix".into(), 1);
        events(&r, &e).unwrap();
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "routing_peer_events_total{type=\"drop\"} 12",
            "routing_peer_events_aggregated_total 99999",
            "routing_peer_events_lost_total 3",
            "routing_peer_event_export_errors_total{exporter=\"ipfix\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
