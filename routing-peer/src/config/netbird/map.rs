//! NetBird's documents → this routing peer's model, as NetBird means them:
//! the networks some enabled router names this peer in (directly or through
//! its groups), their resources, every peer with its groups, and each
//! enabled policy rule as one policy per chain it reaches here. What the
//! model cannot express is reported with its id and grants nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::api::{self, Documents};
use crate::config::{
    parse_resource_address, Action, Network, Peer, Policy, PolicyKind, PortRange, Protocol,
    Resource, ResourceAddress,
};

/// One thing the import left out or narrowed, by NetBird id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Warning {
    pub id: String,
    pub message: String,
}

/// A sync that must not be applied: the last good configuration stays.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("this routing peer is not in /api/peers: {0}")]
    SelfNotFound(String),
    /// Documents read while the account changed (half an update).
    #[error("inconsistent documents (an update in progress?): {0}")]
    Inconsistent(String),
}

/// This routing peer as NetBird knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfPeer {
    pub id: String,
    pub name: String,
    pub group_ids: Vec<String>,
}

/// A network this peer routes for, with its router's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub network_id: String,
    pub metric: u16,
    pub masquerade: bool,
}

/// The imported model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub me: SelfPeer,
    pub groups: Vec<String>,
    pub peers: Vec<Peer>,
    pub networks: Vec<Network>,
    pub policies: Vec<Policy>,
    pub warnings: Vec<Warning>,
}

/// Finds this routing peer: by id or name when `selector` is given, else
/// by an overlay address.
pub fn find_self(
    peers: &[api::Peer],
    selector: Option<&str>,
    overlay: &[std::net::IpAddr],
) -> Result<SelfPeer, MapError> {
    let found = match selector {
        Some(s) => peers.iter().find(|p| p.id == s).or_else(|| {
            let named: Vec<_> = peers.iter().filter(|p| p.name == s).collect();
            (named.len() == 1).then(|| named[0])
        }),
        None => peers
            .iter()
            .find(|p| host_ip(&p.ip).is_some_and(|ip| overlay.contains(&ip))),
    };
    found
        .map(|p| SelfPeer {
            id: p.id.clone(),
            name: p.name.clone(),
            group_ids: p.groups.iter().map(|g| g.id.clone()).collect(),
        })
        .ok_or_else(|| {
            MapError::SelfNotFound(match selector {
                Some(s) => format!("no peer with id `{s}`, nor exactly one named `{s}`"),
                None => {
                    format!(
                    "no peer has the overlay address {}; set `peer` in [netbird] to its id or name",
                    overlay.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                )
                }
            })
        })
}

/// The networks an enabled router assigns to `me`. With several routers
/// naming it, the lowest metric wins (and brings its masquerade).
pub fn served(docs: &Documents, me: &SelfPeer) -> Result<Vec<Served>, MapError> {
    let routers: HashMap<&str, &api::NetworkRouter> =
        docs.routers.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = Vec::new();
    for n in &docs.networks {
        let mut best: Option<&api::NetworkRouter> = None;
        for id in &n.routers {
            let r = routers.get(id.as_str()).ok_or_else(|| {
                MapError::Inconsistent(format!(
                    "network {} lists router {id}, which /api/networks/routers does not have",
                    n.id
                ))
            })?;
            let mine = r.peer.as_deref() == Some(me.id.as_str())
                || r.peer_groups.iter().any(|g| me.group_ids.contains(g));
            if r.enabled && mine && best.is_none_or(|b| r.metric < b.metric) {
                best = Some(r);
            }
        }
        if let Some(r) = best {
            out.push(Served {
                network_id: n.id.clone(),
                metric: r.metric,
                masquerade: r.masquerade,
            });
        }
    }
    Ok(out)
}

/// A peer's `ip` (NetBird sends a bare address; accept `/32` too).
fn host_ip(raw: &str) -> Option<std::net::IpAddr> {
    raw.split('/').next()?.parse().ok()
}

/// Group names by id, unique: a name two groups share gets the id appended.
fn group_names(groups: &[api::Group]) -> HashMap<String, String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for g in groups {
        *count.entry(g.name.as_str()).or_default() += 1;
    }
    groups
        .iter()
        .map(|g| {
            let name = if count[g.name.as_str()] > 1 {
                format!("{} ({})", g.name, g.id)
            } else {
                g.name.clone()
            };
            (g.id.clone(), name)
        })
        .collect()
}

/// One import's inputs and the warnings it gathers.
pub(super) struct Ctx<'a> {
    pub docs: &'a Documents,
    pub me: &'a SelfPeer,
    names: HashMap<String, String>,
    warnings: Vec<Warning>,
}

impl Ctx<'_> {
    pub fn warn(&mut self, id: &str, message: String) {
        self.warnings.push(Warning {
            id: id.to_string(),
            message,
        });
    }

    /// The name of group `id`, or the inconsistency that it is gone.
    pub fn group(&self, id: &str, whose: &str) -> Result<String, MapError> {
        self.names.get(id).cloned().ok_or_else(|| {
            MapError::Inconsistent(format!(
                "{whose} names group {id}, which /api/groups does not have"
            ))
        })
    }
}

/// Maps one sync's documents. `overlay` is this peer's overlay addresses.
pub fn import(
    docs: &Documents,
    selector: Option<&str>,
    overlay: &[std::net::IpAddr],
) -> Result<Import, MapError> {
    let me = find_self(&docs.peers, selector, overlay)?;
    let served = served(docs, &me)?;
    let mut cx = Ctx {
        docs,
        me: &me,
        names: group_names(&docs.groups),
        warnings: Vec::new(),
    };
    for r in &docs.routers {
        report_unknown(&mut cx, &r.id, "router", &r.unknown);
    }
    let groups = me
        .group_ids
        .iter()
        .map(|g| cx.group(g, &format!("this peer ({})", me.id)))
        .collect::<Result<Vec<_>, _>>()?;
    let peers = peers(&mut cx)?;
    let (networks, resource_ids) = networks(&mut cx, &served)?;
    let peer_groups: HashSet<String> = peers
        .iter()
        .flat_map(|p| p.groups.iter().cloned())
        .chain(groups.iter().cloned())
        .collect();
    let resource_groups: HashSet<String> = networks
        .iter()
        .flat_map(|n| &n.resources)
        .flat_map(|r| r.groups.iter().cloned())
        .collect();
    let known = super::rules::Known {
        resources: &resource_ids,
        resource_groups: &resource_groups,
        peer_groups: &peer_groups,
        own_groups: &groups,
    };
    let policies = super::rules::policies(&mut cx, &known)?;
    let mut warnings = std::mem::take(&mut cx.warnings);
    warnings.sort();
    warnings.dedup();
    Ok(Import {
        me,
        groups,
        peers,
        networks,
        policies,
        warnings,
    })
}

fn report_unknown(cx: &mut Ctx, id: &str, what: &str, unknown: &api::Unknown) {
    for field in unknown.keys() {
        cx.warn(
            id,
            format!("{what} field `{field}` is not understood by this version; ignored"),
        );
    }
}

/// Every peer but this one, with its overlay address and groups.
fn peers(cx: &mut Ctx) -> Result<Vec<Peer>, MapError> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for p in &cx.docs.peers {
        *count.entry(p.name.as_str()).or_default() += 1;
    }
    let mut out = Vec::new();
    for p in &cx.docs.peers {
        if p.id == cx.me.id {
            continue;
        }
        let Some(ip) = host_ip(&p.ip) else {
            cx.warn(
                &p.id,
                format!(
                    "peer `{}` has no usable overlay address `{}`; left out",
                    p.name, p.ip
                ),
            );
            continue;
        };
        let groups = p
            .groups
            .iter()
            .map(|g| cx.group(&g.id, &format!("peer {}", p.id)))
            .collect::<Result<Vec<_>, _>>()?;
        let name = if count[p.name.as_str()] > 1 {
            format!("{} ({})", p.name, p.id)
        } else {
            p.name.clone()
        };
        out.push(Peer {
            name,
            public_key: String::new(),
            addresses: vec![ip],
            endpoint: None,
            persistent_keepalive: None,
            groups,
        });
    }
    Ok(out)
}

/// The served networks with their resources; also resource id → name.
fn networks(
    cx: &mut Ctx,
    served: &[Served],
) -> Result<(Vec<Network>, BTreeMap<String, String>), MapError> {
    let mut out = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut taken: HashSet<String> = HashSet::new();
    for s in served {
        let Some(n) = cx.docs.networks.iter().find(|n| n.id == s.network_id) else {
            continue;
        };
        let docs = cx
            .docs
            .resources
            .get(&n.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let listed: BTreeSet<&str> = docs.iter().map(|r| r.id.as_str()).collect();
        if let Some(missing) = n.resources.iter().find(|id| !listed.contains(id.as_str())) {
            return Err(MapError::Inconsistent(format!(
                "network {} lists resource {missing}, which its resources document lacks",
                n.id
            )));
        }
        let mut resources = Vec::new();
        for r in docs {
            report_unknown(cx, &r.id, "resource", &r.unknown);
            if let Err(why) = check_type(r) {
                cx.warn(&r.id, format!("resource `{}` left out: {why}", r.name));
                continue;
            }
            let groups = r
                .groups
                .iter()
                .map(|g| cx.group(&g.id, &format!("resource {}", r.id)))
                .collect::<Result<Vec<_>, _>>()?;
            let name = if taken.contains(&r.name) {
                format!("{} ({})", r.name, r.id)
            } else {
                r.name.clone()
            };
            taken.insert(name.clone());
            names.insert(r.id.clone(), name.clone());
            resources.push(Resource {
                name,
                address: r.address.clone(),
                groups,
                enabled: r.enabled,
            });
        }
        out.push(Network {
            name: if n.name.is_empty() {
                n.id.clone()
            } else {
                n.name.clone()
            },
            description: n.description.clone(),
            masquerade: s.masquerade,
            metric: Some(s.metric),
            resources,
        });
    }
    Ok((out, names))
}

/// The address must be what the type says: a host is one address, never a
/// range; anything else would widen the grant.
fn check_type(r: &api::NetworkResource) -> Result<(), String> {
    let parsed = parse_resource_address(&r.address)?;
    let fits = matches!(
        (r.kind.as_str(), &parsed),
        ("host", ResourceAddress::Host(_))
            | (
                "subnet",
                ResourceAddress::Subnet(_) | ResourceAddress::Host(_)
            )
            | (
                "domain",
                ResourceAddress::Domain(_) | ResourceAddress::Wildcard(_)
            )
    );
    if fits {
        Ok(())
    } else {
        Err(format!(
            "type `{}` does not match address `{}` ({})",
            r.kind,
            r.address,
            parsed.kind()
        ))
    }
}

pub(super) fn protocol(raw: &str) -> Option<Protocol> {
    Some(match raw {
        "all" => Protocol::All,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        _ => return None,
    })
}

pub(super) fn action(raw: &str) -> Option<Action> {
    Some(match raw {
        "accept" => Action::Accept,
        "drop" => Action::Drop,
        _ => return None,
    })
}

/// A rule's ports (strings in NetBird's API) and ranges.
pub(super) fn ports(rule: &api::PolicyRule) -> Result<(Vec<u32>, Vec<PortRange>), String> {
    let ports = rule
        .ports
        .iter()
        .map(|p| match p.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n),
            _ => Err(format!("port `{p}` is not a number from 1 to 65535")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ranges = rule
        .port_ranges
        .iter()
        .map(|r| {
            if (1..=65535).contains(&r.start) && (r.start..=65535).contains(&r.end) {
                Ok(PortRange {
                    start: r.start,
                    end: r.end,
                })
            } else {
                Err(format!(
                    "port range {}-{} is not within 1-65535",
                    r.start, r.end
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ports, ranges))
}

pub(super) fn new_policy(name: String, kind: PolicyKind) -> Policy {
    Policy {
        name,
        enabled: true,
        kind,
        sources: Vec::new(),
        destinations: Vec::new(),
        destination_resources: Vec::new(),
        protocol: Protocol::All,
        ports: Vec::new(),
        port_ranges: Vec::new(),
        action: Action::Accept,
        posture_checks: Vec::new(),
    }
}
