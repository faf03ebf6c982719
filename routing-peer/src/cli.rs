//! The operator commands. Counters and flows come straight from the pinned
//! maps, so they work while the daemon is down or restarting; names and
//! peer status come from the daemon (its control socket, or its last state
//! file when it isn't running).

use std::{collections::HashMap, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use routing_peer_common::{
    map_names, CtEntry, CtKey, DatapathConfig, Family, ResourceCounters, CT_FLAG_MASQUERADE,
    CT_ICMP, CT_OTHER, CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_RESET, CT_TCP_SYN_SENT,
    CT_UDP_REPLIED, CT_UDP_UNREPLIED, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::Serialize;

use crate::{
    compile::Names,
    control::{self, Status},
    datapath::{gc::monotonic_ns, tables::addr_from_key, PinDir},
    stats,
};

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn human_count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        p => format!("proto-{p}"),
    }
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        CT_TCP_SYN_SENT => "syn-sent",
        CT_TCP_ESTABLISHED => "established",
        CT_TCP_CLOSING => "closing",
        CT_TCP_RESET => "reset",
        CT_UDP_UNREPLIED => "unreplied",
        CT_UDP_REPLIED => "replied",
        CT_ICMP => "icmp",
        CT_OTHER => "other",
        _ => "unknown",
    }
}

/// Names and config for display: from the running daemon, else its state file.
pub struct DaemonView {
    pub status: Option<Status>,
    pub running: bool,
}

pub fn context(instance: &str) -> DaemonView {
    match control::query_status(instance) {
        Some(s) => DaemonView {
            status: Some(s),
            running: true,
        },
        None => DaemonView {
            status: control::read_state(instance),
            running: false,
        },
    }
}

fn name_of(list: &[String], id: u32) -> String {
    list.get(id as usize)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("#{id}"))
}

fn open_pinned(pins: &PinDir, name: &str) -> Result<MapData> {
    MapData::from_pin(pins.map(name)).map_err(|_| {
        anyhow::anyhow!(
            "no data path pinned at {} (is routing-peer running for this instance?)",
            pins.root().display()
        )
    })
}

/// One flow as `flows --json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flow {
    pub peer: String,
    pub peer_addr: String,
    pub peer_port: u16,
    pub resource: String,
    pub remote_addr: String,
    pub remote_port: u16,
    pub proto: String,
    pub state: String,
    /// The masquerade mapping, `addr:port`, when masqueraded.
    pub nat: Option<String>,
    pub rule: String,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub age_secs: u64,
    pub idle_secs: u64,
}

pub fn read_flows(pins: &PinDir, names: &Names) -> Result<Vec<Flow>> {
    let data = open_pinned(pins, map_names::CONNTRACK)?;
    let ct = BpfHashMap::<_, CtKey, CtEntry>::try_from(Map::LruHashMap(data))?;
    let now = monotonic_ns();
    // Timeouts as the data path applies them; defaults if unreadable.
    let cfg = open_pinned(pins, map_names::CONFIG)
        .ok()
        .and_then(|d| aya::maps::Array::<_, DatapathConfig>::try_from(Map::Array(d)).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .unwrap_or_default();
    let mut flows = Vec::new();
    for item in ct.iter() {
        let Ok((k, e)) = item else { continue };
        if is_expired(&e, &cfg, now) {
            continue; // the data path ignores it; GC deletes it soon
        }
        let family = Family::from_tag(u32::from(k.family));
        let peer_addr = addr_from_key(family, k.peer);
        let remote = addr_from_key(family, k.remote);
        let nat = (e.flags & CT_FLAG_MASQUERADE != 0).then(|| {
            let a = addr_from_key(family, e.nat_addr);
            format!("{}:{}", bracket(a), e.nat_port)
        });
        flows.push(Flow {
            peer: name_of(&names.peers, e.peer_id),
            peer_addr: peer_addr.to_string(),
            peer_port: k.peer_port,
            resource: name_of(&names.resources, e.resource_id),
            remote_addr: remote.to_string(),
            remote_port: k.remote_port,
            proto: proto_name(k.proto),
            state: state_name(e.state).into(),
            nat,
            rule: name_of(&names.rules, e.rule_id),
            packets_out: e.fwd.packets,
            bytes_out: e.fwd.bytes,
            packets_in: e.rev.packets,
            bytes_in: e.rev.bytes,
            age_secs: now.saturating_sub(e.first_seen_ns) / 1_000_000_000,
            idle_secs: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        });
    }
    Ok(flows)
}

/// An entry past its idle timeout: gone for the data path, though GC has
/// not deleted it yet.
pub fn is_expired(e: &CtEntry, cfg: &DatapathConfig, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > cfg.timeout_ns(e.state)
}

fn bracket(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    pub peer: Option<String>,
    pub resource: Option<String>,
    pub proto: Option<String>,
    pub state: Option<String>,
    pub sort: Option<String>,
    pub top: Option<usize>,
}

pub fn filter_flows(mut flows: Vec<Flow>, f: &FlowFilter) -> Vec<Flow> {
    flows.retain(|fl| {
        f.peer
            .as_ref()
            .is_none_or(|p| &fl.peer == p || &fl.peer_addr == p)
            && f.resource.as_ref().is_none_or(|r| &fl.resource == r)
            && f.proto.as_ref().is_none_or(|p| &fl.proto == p)
            && f.state.as_ref().is_none_or(|s| &fl.state == s)
    });
    match f.sort.as_deref() {
        Some("packets") => {
            flows.sort_by_key(|fl| std::cmp::Reverse(fl.packets_out + fl.packets_in))
        }
        Some("age") => flows.sort_by_key(|fl| std::cmp::Reverse(fl.age_secs)),
        _ => flows.sort_by_key(|fl| std::cmp::Reverse(fl.bytes_out + fl.bytes_in)),
    }
    if let Some(n) = f.top {
        flows.truncate(n);
    }
    flows
}

pub fn print_flows(flows: &[Flow], rates: Option<&HashMap<String, (f64, f64)>>) {
    let mut rows = vec![vec![
        "PEER".to_string(),
        "SOURCE".into(),
        "RESOURCE".into(),
        "DESTINATION".into(),
        "PROTO".into(),
        "STATE".into(),
        "NAT".into(),
        "RULE".into(),
        "PKTS OUT/IN".into(),
        "BYTES OUT/IN".into(),
        "AGE".into(),
        "IDLE".into(),
    ]];
    if rates.is_some() {
        rows[0].push("RATE".into());
    }
    for f in flows {
        let mut row = vec![
            f.peer.clone(),
            format!("{}:{}", f.peer_addr, f.peer_port),
            f.resource.clone(),
            format!("{}:{}", f.remote_addr, f.remote_port),
            f.proto.clone(),
            f.state.clone(),
            f.nat.clone().unwrap_or_else(|| "-".into()),
            f.rule.clone(),
            format!("{}/{}", f.packets_out, f.packets_in),
            format!("{}/{}", human_bytes(f.bytes_out), human_bytes(f.bytes_in)),
            human_duration(f.age_secs),
            human_duration(f.idle_secs),
        ];
        if let Some(rates) = rates {
            let (pps, bps) = rates.get(&flow_id(f)).copied().unwrap_or((0.0, 0.0));
            row.push(format!(
                "{} pps {}/s",
                human_count(pps),
                human_bytes(bps as u64)
            ));
        }
        rows.push(row);
    }
    print_table(&rows);
}

pub fn flow_id(f: &Flow) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        f.proto, f.peer_addr, f.peer_port, f.remote_addr, f.remote_port
    )
}

pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Per-resource totals as `stats --json` prints them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResourceStats {
    pub resource: String,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub denied_packets: u64,
    pub new_flows: u64,
    pub active_flows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub hooks: Vec<stats::NamedCounter>,
    pub drops: Vec<stats::NamedCounter>,
    /// Packets handed to the kernel, by reason.
    pub handoffs: Vec<stats::NamedCounter>,
    pub resources: Vec<ResourceStats>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u32,
    /// Entries the LRU table evicted to make room (derived; see `CtAccounting`).
    pub conntrack_evictions: u64,
}

pub fn read_stats(pins: &PinDir, names: &Names) -> Result<StatsReport> {
    let snapshot = stats::read_pinned(pins)?;
    let flows = read_flows(pins, names)?;
    // Active flows per resource, counted in one pass over the flows (not
    // one pass per resource: 100k × 100k at scale).
    let mut active: HashMap<&str, u64> = HashMap::new();
    for f in &flows {
        *active.entry(f.resource.as_str()).or_default() += 1;
    }
    let data = open_pinned(pins, map_names::RESOURCE_STATS)?;
    let arr = PerCpuArray::<_, ResourceCounters>::try_from(Map::PerCpuArray(data))?;
    let mut resources = Vec::new();
    // An empty name is a removed resource's id, held so that ids stay stable.
    let live = names.resources.iter().enumerate().skip(1);
    for (id, name) in live.filter(|(_, n)| !n.is_empty()) {
        let mut total = ResourceCounters::default();
        if let Ok(per_cpu) = arr.get(&(id as u32), 0) {
            per_cpu.iter().for_each(|c| total.add(c));
        }
        resources.push(ResourceStats {
            resource: name.clone(),
            packets_out: total.fwd.packets,
            bytes_out: total.fwd.bytes,
            packets_in: total.rev.packets,
            bytes_in: total.rev.bytes,
            denied_packets: total.denied.packets,
            new_flows: total.new_flows,
            active_flows: active.get(name.as_str()).copied().unwrap_or(0),
        });
    }
    let ct = open_pinned(pins, map_names::CONNTRACK)?;
    let capacity = aya::maps::MapInfo::from_id(ct.info()?.id())
        .map(|i| i.max_entries())
        .unwrap_or(0);
    let events = Map::PerCpuArray(open_pinned(pins, map_names::CT_EVENTS)?);
    let gc = Map::Array(open_pinned(pins, map_names::CT_GC)?);
    // Evictions are derived from what the map holds, expired entries GC
    // has not deleted yet included.
    let entries = {
        let data = open_pinned(pins, map_names::CONNTRACK)?;
        BpfHashMap::<_, CtKey, CtEntry>::try_from(Map::LruHashMap(data))?
            .keys()
            .count() as u64
    };
    let accounting = stats::ct_accounting(&events, &gc, entries)?;
    Ok(StatsReport {
        hooks: snapshot.hooks,
        drops: snapshot.drops,
        handoffs: snapshot.handoffs,
        resources,
        conntrack_entries: entries,
        conntrack_capacity: capacity,
        conntrack_evictions: accounting.evictions,
    })
}

pub fn print_stats(report: &StatsReport, rates: Option<&HashMap<String, (f64, f64)>>) {
    let mut rows = vec![vec![
        "RESOURCE".to_string(),
        "FLOWS".into(),
        "NEW".into(),
        "PKTS OUT".into(),
        "BYTES OUT".into(),
        "PKTS IN".into(),
        "BYTES IN".into(),
        "DENIED".into(),
    ]];
    if rates.is_some() {
        rows[0].push("RATE".into());
    }
    for r in &report.resources {
        let mut row = vec![
            r.resource.clone(),
            r.active_flows.to_string(),
            r.new_flows.to_string(),
            r.packets_out.to_string(),
            human_bytes(r.bytes_out),
            r.packets_in.to_string(),
            human_bytes(r.bytes_in),
            r.denied_packets.to_string(),
        ];
        if let Some(rates) = rates {
            let (pps, bps) = rates.get(&r.resource).copied().unwrap_or((0.0, 0.0));
            row.push(format!(
                "{} pps {}/s",
                human_count(pps),
                human_bytes(bps as u64)
            ));
        }
        rows.push(row);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "DROP REASON".to_string(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    for d in &report.drops {
        rows.push(vec![
            d.name.to_string(),
            d.packets.to_string(),
            human_bytes(d.bytes),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "TO KERNEL".to_string(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    for h in &report.handoffs {
        rows.push(vec![
            h.name.to_string(),
            h.packets.to_string(),
            human_bytes(h.bytes),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec!["HOOK".to_string(), "PACKETS".into(), "BYTES".into()]];
    for h in &report.hooks {
        rows.push(vec![
            h.name.to_string(),
            h.packets.to_string(),
            human_bytes(h.bytes),
        ]);
    }
    print_table(&rows);
    println!(
        "\nconntrack: {} / {} entries, {} evicted (LRU)",
        report.conntrack_entries, report.conntrack_capacity, report.conntrack_evictions
    );
}

pub fn print_status(status: &Status, running: bool, pins: &PinDir) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if !running {
        println!(
            "routing-peer is not running for instance {} (showing its last state)",
            status.instance
        );
    }
    println!("routing peer: {}  metric {}", status.name, status.metric);
    println!(
        "wireguard:    {:?} mode, interface {}, listen port {}",
        status.wireguard_mode, status.interface, status.listen_port
    );
    println!("public key:   {}", status.public_key);
    println!(
        "config:       {} (generation {}, reloaded {} ago)",
        status.config_path,
        status.generation,
        human_duration(now.saturating_sub(status.last_reload_unix))
    );
    match crate::datapath::safety_net::dropped(&status.instance) {
        Some(n) => println!(
            "safety net:   nft table inet {}, {n} packets the kernel would have forwarded dropped",
            status.safety_net_table
        ),
        None => println!(
            "safety net:   MISSING (nft table inet {})",
            status.safety_net_table
        ),
    }
    println!();
    let mut rows = vec![vec![
        "PEER".to_string(),
        "ADDRESSES".into(),
        "ENDPOINT".into(),
        "HANDSHAKE".into(),
        "RX".into(),
        "TX".into(),
        "STATE".into(),
    ]];
    for p in &status.peers {
        rows.push(vec![
            p.name.clone(),
            p.addresses.join(","),
            p.endpoint.clone().unwrap_or_else(|| "-".into()),
            p.handshake_age_secs
                .map(|a| format!("{} ago", human_duration(a)))
                .unwrap_or_else(|| "never".into()),
            human_bytes(p.rx_bytes),
            human_bytes(p.tx_bytes),
            if p.up { "up" } else { "down" }.into(),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "PROGRAM".to_string(),
        "HOOK".into(),
        "INTERFACE".into(),
        "ATTACHED".into(),
    ]];
    for p in &status.programs {
        let attached = pins.link(&p.program, &p.interface).exists();
        rows.push(vec![
            p.program.clone(),
            p.hook.clone(),
            p.interface.clone(),
            if attached { "yes (pinned link)" } else { "no" }.into(),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec!["MAP".to_string(), "ENTRIES".into(), "CAPACITY".into()]];
    for name in [
        map_names::CONNTRACK,
        map_names::NAT_FWD,
        map_names::PEERS[0],
        map_names::DESTS[0],
        map_names::POLICY[0],
    ] {
        if let Some((used, cap)) = occupancy(pins, name) {
            rows.push(vec![name.to_string(), used.to_string(), cap.to_string()]);
        }
    }
    print_table(&rows);
}

/// Entries and capacity of a pinned map.
pub fn occupancy(pins: &PinDir, name: &str) -> Option<(u64, u32)> {
    let data = MapData::from_pin(pins.map(name)).ok()?;
    let info = data.info().ok()?;
    let cap = info.max_entries();
    let used = match name {
        n if n == map_names::CONNTRACK => {
            BpfHashMap::<_, CtKey, CtEntry>::try_from(Map::LruHashMap(data))
                .ok()?
                .keys()
                .count()
        }
        n if n == map_names::NAT_FWD => BpfHashMap::<
            _,
            routing_peer_common::NatEndpoint,
            routing_peer_common::NatEndpoint,
        >::try_from(Map::LruHashMap(data))
        .ok()?
        .keys()
        .count(),
        n if n.starts_with("PEERS") => {
            BpfHashMap::<_, routing_peer_common::AddrKey, routing_peer_common::PeerValue>::try_from(
                Map::HashMap(data),
            )
            .ok()?
            .keys()
            .count()
        }
        n if n.starts_with("DESTS") => aya::maps::LpmTrie::<
            _,
            routing_peer_common::AddrKey,
            routing_peer_common::DestValue,
        >::try_from(Map::LpmTrie(data))
        .ok()?
        .keys()
        .count(),
        _ => aya::maps::LpmTrie::<
            _,
            routing_peer_common::PolicyKey,
            routing_peer_common::PolicyValue,
        >::try_from(Map::LpmTrie(data))
        .ok()?
        .keys()
        .count(),
    };
    Some((used as u64, cap))
}

pub fn require_state(ctx: &DaemonView, instance: &str) -> Result<Status> {
    ctx.status.clone().with_context(|| {
        format!("routing-peer is not running for instance {instance}, and has no saved state")
    })
}

/// The configuration the daemon applied (not the file on disk, which may
/// have changed or failed to load since).
pub fn load_config_of(status: &Status) -> Result<crate::config::Config> {
    let path = Path::new(&status.config_path);
    let applied = crate::control::applied_file(&status.instance);
    match std::fs::read_to_string(&applied) {
        Ok(text) => Ok(crate::config::parse(path, &text)?.config),
        Err(_) => Ok(crate::config::load(path)?.config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_past_their_timeout_are_expired() {
        let cfg = DatapathConfig::default();
        let e = CtEntry {
            state: CT_UDP_UNREPLIED,
            last_seen_ns: 1_000_000_000,
            ..Default::default()
        };
        let unreplied = cfg.udp_unreplied_ns;
        assert!(!is_expired(&e, &cfg, 1_000_000_000 + unreplied));
        assert!(is_expired(&e, &cfg, 1_000_000_001 + unreplied));
    }
}
