//! One event as operators read it: the stable JSON schema of
//! `observe --json` and the JSON-lines export (docs/events.md).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use routing_peer_common::{DropReason, EndReason, Event, EventKind, Family, EVENT_FROM_LAN};

use crate::{compile::Names, config::Config};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    /// `start`, `end` or `drop`.
    #[serde(rename = "type")]
    pub kind: String,
    pub peer: Option<String>,
    pub src: String,
    pub src_port: u16,
    pub resource: Option<String>,
    pub dst: String,
    pub dst_port: u16,
    pub proto: String,
    /// Drops: the drop reason; ends: `timeout`, `close`, `reset`, `revoked`.
    pub reason: Option<String>,
    /// The rule that allowed the flow, or (`policy-drop`) dropped the packet.
    pub rule: Option<String>,
    /// Drops: the packets this record stands for (aggregated).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// Drops: true for the count of packets since the first of an
    /// aggregate (which came as a record of its own, `count` 1).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub aggregated: bool,
    /// Drops: `overlay` (from a peer) or `lan`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
    /// Drops: the first packet's TCP flags, e.g. `SYN`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tcp_flags: Option<String>,
    /// Starts and ends of masqueraded flows: the translated source.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nat_src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nat_src_port: Option<u16>,
    /// Ends: peer → resource, and back.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub packets_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub packets_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<u64>,
    /// For the exporters: start and end in milliseconds since the epoch.
    #[serde(skip)]
    pub start_unix_ms: u64,
    #[serde(skip)]
    pub time_unix_ms: u64,
    #[serde(skip)]
    pub reason_code: u8,
}

/// Names for ids and addresses: the installed configuration's.
#[derive(Default)]
pub struct Namer {
    names: Names,
    peers: HashMap<IpAddr, String>,
    /// Longest prefix first.
    resources: Vec<(IpNet, String)>,
}

impl Namer {
    pub fn new(config: &Config, names: &Names, resolved: &[(String, Vec<IpAddr>)]) -> Self {
        let peers = config
            .peers
            .iter()
            .flat_map(|p| p.addresses.iter().map(|a| (*a, p.name.clone())))
            .collect();
        let mut resources: Vec<(IpNet, String)> = config
            .networks
            .iter()
            .flat_map(|n| &n.resources)
            .filter_map(
                |r| match crate::config::parse_resource_address(&r.address) {
                    Ok(crate::config::ResourceAddress::Host(net))
                    | Ok(crate::config::ResourceAddress::Subnet(net)) => {
                        Some((net, r.name.clone()))
                    }
                    _ => None,
                },
            )
            .chain(
                resolved
                    .iter()
                    .flat_map(|(name, ips)| ips.iter().map(|ip| (IpNet::from(*ip), name.clone()))),
            )
            .collect();
        resources.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self {
            names: names.clone(),
            peers,
            resources,
        }
    }

    fn by_id(list: &[String], id: u32) -> Option<String> {
        (id != 0)
            .then(|| list.get(id as usize).cloned())
            .flatten()
            .filter(|n| !n.is_empty())
    }

    fn peer(&self, id: u32, addr: IpAddr) -> Option<String> {
        Self::by_id(&self.names.peers, id).or_else(|| self.peers.get(&addr).cloned())
    }

    fn resource(&self, id: u32, addr: IpAddr) -> Option<String> {
        Self::by_id(&self.names.resources, id).or_else(|| {
            self.resources
                .iter()
                .find(|(net, _)| net.contains(&addr))
                .map(|(_, n)| n.clone())
        })
    }

    /// `ev` as a record; `mono_now` and `wall_now` place its monotonic time.
    pub fn record(&self, ev: &Event, mono_now: u64, wall_now: SystemTime) -> Record {
        let wall = |mono: u64| wall_time(mono, mono_now, wall_now);
        let (src, dst) = (addr(ev.family, ev.src), addr(ev.family, ev.dst));
        let kind = kind_name(ev.kind);
        let is_drop = kind == "drop";
        let is_end = kind == "end";
        let (peer, resource) = if is_drop && ev.hook == EVENT_FROM_LAN {
            // From the LAN: the source may be a resource, the destination a peer.
            (
                self.peer(ev.peer_id, dst),
                self.resource(ev.resource_id, src),
            )
        } else {
            (
                self.peer(ev.peer_id, src),
                self.resource(ev.resource_id, dst),
            )
        };
        let nat = ev.nat_addr != [0; 4] && !is_drop;
        let at = wall(ev.time_ns);
        Record {
            time: humantime::format_rfc3339_millis(at).to_string(),
            kind: kind.into(),
            peer,
            src: src.to_string(),
            src_port: ev.sport,
            resource,
            dst: dst.to_string(),
            dst_port: ev.dport,
            proto: proto_name(ev.proto),
            reason: match kind {
                "drop" => Some(drop_reason(ev.reason)),
                "end" => Some(EndReason::from_u8(ev.reason).name().into()),
                _ => None,
            },
            rule: Self::by_id(&self.names.rules, ev.rule_id),
            count: is_drop.then_some(u64::from(ev.count)),
            aggregated: is_drop && ev._pad[0] == super::reader::AGGREGATE,
            from: is_drop.then(|| {
                if ev.hook == EVENT_FROM_LAN {
                    "lan"
                } else {
                    "overlay"
                }
                .to_string()
            }),
            tcp_flags: (is_drop && ev.proto == 6).then(|| tcp_flags(ev.tcp_flags)),
            nat_src: nat.then(|| addr(ev.family, ev.nat_addr).to_string()),
            nat_src_port: nat.then_some(ev.nat_port),
            packets_out: is_end.then_some(ev.forward.packets),
            bytes_out: is_end.then_some(ev.forward.bytes),
            packets_in: is_end.then_some(ev.reply.packets),
            bytes_in: is_end.then_some(ev.reply.bytes),
            duration_ms: is_end.then(|| ev.time_ns.saturating_sub(ev.first_seen_ns) / 1_000_000),
            start_unix_ms: if is_drop {
                unix_ms(at)
            } else {
                unix_ms(wall(ev.first_seen_ns))
            },
            time_unix_ms: unix_ms(at),
            reason_code: ev.reason,
        }
    }
}

/// The record type of an event kind: `start`, `end` or `drop`.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        k if k == EventKind::Start as u8 => "start",
        k if k == EventKind::End as u8 => "end",
        _ => "drop",
    }
}

/// The wall-clock time of monotonic `mono`, given both clocks now.
pub fn wall_time(mono: u64, mono_now: u64, wall_now: SystemTime) -> SystemTime {
    wall_now - Duration::from_nanos(mono_now.saturating_sub(mono))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An event's address (its `family` tag, 4 or 6).
fn addr(family: u8, words: [u32; 4]) -> IpAddr {
    crate::model::addr_from_key(Family::from_tag(u32::from(family)), words)
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn drop_reason(code: u8) -> String {
    DropReason::ALL
        .get(code as usize)
        .map(|r| r.name().to_string())
        .unwrap_or_else(|| format!("reason-{code}"))
}

fn tcp_flags(flags: u8) -> String {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_peer_common::PacketCounter;

    fn v4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    #[test]
    fn a_drop_and_an_end_read_as_the_schema_says() {
        let names = Names {
            peers: vec!["".into(), "sales".into()],
            resources: vec!["".into(), "Internal Wiki".into()],
            rules: vec!["".into(), "Dev to apps".into()],
        };
        let text = crate::testing::office("wt0", true, "");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .config;
        let namer = Namer::new(&config, &names, &[]);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let drop = Event {
            time_ns: 9_000_000_000,
            src: v4([100, 64, 0, 3]),
            dst: v4([198, 51, 100, 5]),
            sport: 40000,
            dport: 443,
            family: 4,
            proto: 6,
            tcp_flags: 0x02,
            kind: EventKind::Drop as u8,
            reason: DropReason::NoPolicy as u8,
            count: 7,
            peer_id: 1,
            ..Default::default()
        };
        let r = namer.record(&drop, 10_000_000_000, wall);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["type"], "drop");
        assert_eq!(json["time"], "2027-01-15T07:59:59.000Z");
        assert_eq!(json["peer"], "sales");
        assert_eq!(json["reason"], "no-policy");
        assert_eq!(json["count"], 7);
        assert_eq!(json["tcp_flags"], "SYN");
        assert_eq!(json["from"], "overlay");
        assert!(json.get("packets_out").is_none());
        assert!(
            json.get("aggregated").is_none(),
            "the first of an aggregate"
        );
        let end = Event {
            time_ns: 10_000_000_000,
            first_seen_ns: 4_000_000_000,
            forward: PacketCounter {
                packets: 5,
                bytes: 300,
            },
            reply: PacketCounter {
                packets: 4,
                bytes: 900,
            },
            kind: EventKind::End as u8,
            reason: EndReason::Close as u8,
            rule_id: 1,
            resource_id: 1,
            nat_addr: v4([198, 51, 100, 1]),
            nat_port: 40000,
            ..drop
        };
        let r = namer.record(&end, 10_000_000_000, wall);
        assert_eq!(
            (r.kind.as_str(), r.reason.as_deref(), r.rule.as_deref()),
            ("end", Some("close"), Some("Dev to apps"))
        );
        assert_eq!(
            (r.packets_out, r.bytes_in, r.duration_ms),
            (Some(5), Some(900), Some(6000))
        );
        assert_eq!(r.nat_src.as_deref(), Some("198.51.100.1"));
        assert_eq!(r.resource.as_deref(), Some("Internal Wiki"));
    }
}
