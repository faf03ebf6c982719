//! The one read model: flows, counters, occupancy and per-resource totals,
//! read from the pinned maps. The CLI renders it, `/metrics` exports it;
//! neither reads the maps itself.

use std::{collections::HashMap, net::IpAddr};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use routing_peer_common::{
    map_names, CtEntry, CtKey, DatapathConfig, Family, FragEntry, FragEvent, FragKey,
    ResourceCounters, CT_FLAG_MASQUERADE, CT_ICMP, CT_OTHER, CT_TCP_CLOSING, CT_TCP_ESTABLISHED,
    CT_TCP_RESET, CT_TCP_SYN_SENT, CT_UDP_REPLIED, CT_UDP_UNREPLIED, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP,
};
use serde::Serialize;

use crate::{
    compile::Names,
    datapath::{gc::monotonic_ns, PinDir},
    model::addr_from_key,
    stats,
};

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

pub fn name_of(list: &[String], id: u32) -> String {
    list.get(id as usize)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("#{id}"))
}

pub fn open_pinned(pins: &PinDir, name: &str) -> Result<MapData> {
    MapData::from_pin(pins.map(name)).map_err(|_| {
        anyhow::anyhow!(
            "no data path pinned at {} (is routing-peer running for this instance?)",
            pins.root().display()
        )
    })
}

/// One flow as `flows --json` prints it.
///
/// Directions: the code says *forward* (peer → resource, the direction
/// that opened the flow) and *reply*; operators read them as *out* and
/// *in*, from the peer's side. Here, and only here, one becomes the other.
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
    /// Fragmented datagrams seen on this flow, either way.
    pub fragmented_datagrams: u32,
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
            packets_out: e.forward.packets,
            bytes_out: e.forward.bytes,
            packets_in: e.reply.packets,
            bytes_in: e.reply.bytes,
            age_secs: now.saturating_sub(e.first_seen_ns) / 1_000_000_000,
            idle_secs: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            fragmented_datagrams: e.fragmented,
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
    pub fragments: FragmentStats,
}

/// The fragment map's pressure and what fragments did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FragmentStats {
    /// Datagrams whose first-fragment verdict the map holds (expired ones
    /// included until the LRU reuses their room).
    pub datagrams: u64,
    pub capacity: u32,
    /// Datagrams the LRU evicted to make room: inserted − held now.
    pub evictions: u64,
    /// First fragments recorded; later fragments that followed them;
    /// passes around the hold.
    pub tracked: u64,
    pub followed: u64,
    pub held: u64,
}

/// The fragment map and counters, read from the pins.
pub fn read_fragments(pins: &PinDir) -> Result<FragmentStats> {
    let data = open_pinned(pins, map_names::FRAGS)?;
    let capacity = data.info()?.max_entries();
    let datagrams = BpfHashMap::<_, FragKey, FragEntry>::try_from(Map::LruHashMap(data))?
        .keys()
        .count() as u64;
    let data = open_pinned(pins, map_names::FRAG_STATS)?;
    let events = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))?;
    let sum = |event: FragEvent| -> u64 {
        events
            .get(&(event as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    };
    Ok(FragmentStats {
        datagrams,
        capacity,
        evictions: sum(FragEvent::Inserted).saturating_sub(datagrams),
        tracked: sum(FragEvent::Tracked),
        followed: sum(FragEvent::Followed),
        held: sum(FragEvent::Held),
    })
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
            packets_out: total.forward.packets,
            bytes_out: total.forward.bytes,
            packets_in: total.reply.packets,
            bytes_in: total.reply.bytes,
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
        fragments: read_fragments(pins)?,
    })
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
        n if n == map_names::FRAGS => {
            BpfHashMap::<_, FragKey, FragEntry>::try_from(Map::LruHashMap(data))
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
