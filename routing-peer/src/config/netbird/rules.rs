//! NetBird policy rules → policies of this routing peer. A rule reaches
//! the forward chain through its resource destinations (groups holding a
//! served resource, or `destinationResource`) and the input chain through
//! this peer's own groups (or `destinationResource` of type `peer` naming
//! it); a bidirectional rule with this peer among its sources also admits
//! its destination peers. A rule it cannot express grants nothing.

use std::collections::{BTreeMap, HashSet};

use super::{
    api,
    map::{action, new_policy, ports, protocol, Ctx, MapError},
};
use crate::config::{Policy, PolicyKind, Protocol};

/// What the rules are checked against.
pub(super) struct Known<'a> {
    /// Served resources: id → name.
    pub resources: &'a BTreeMap<String, String>,
    /// Groups holding a served resource.
    pub resource_groups: &'a HashSet<String>,
    /// Groups holding a peer (this one included).
    pub peer_groups: &'a HashSet<String>,
    /// This routing peer's groups.
    pub own_groups: &'a [String],
}

pub(super) fn policies(cx: &mut Ctx, known: &Known) -> Result<Vec<Policy>, MapError> {
    let mut out: Vec<Policy> = Vec::new();
    for p in &cx.docs.policies {
        if !p.enabled {
            continue;
        }
        if !p.unknown.is_empty() {
            let fields: Vec<&String> = p.unknown.keys().collect();
            cx.warn(&p.id, format!("policy `{}` has fields this version does not understand ({fields:?}): it grants nothing here", p.name));
            continue;
        }
        let before = out.len();
        for r in p.rules.iter().filter(|r| r.enabled) {
            let name = if p.rules.len() == 1 {
                p.name.clone()
            } else {
                format!("{} / {}", p.name, r.name)
            };
            match rule(cx, known, r, &name)? {
                Ok(mut made) => {
                    for m in &mut made {
                        m.posture_checks = p.source_posture_checks.clone();
                    }
                    out.extend(made);
                }
                Err(why) => cx.warn(
                    if r.id.is_empty() { &p.id } else { &r.id },
                    format!("rule `{name}`: {why}; it grants nothing here"),
                ),
            }
        }
        if out.len() > before && !p.source_posture_checks.is_empty() {
            cx.warn(
                &p.id,
                format!(
                    "policy `{}` requires posture checks, whose results NetBird's API does not expose: it grants nothing here",
                    p.name
                ),
            );
        }
    }
    unique_names(&mut out);
    Ok(out)
}

/// The policies one rule makes here (none when it does not reach this
/// peer), or why it cannot be expressed.
fn rule(
    cx: &Ctx,
    known: &Known,
    r: &api::PolicyRule,
    name: &str,
) -> Result<Result<Vec<Policy>, String>, MapError> {
    let sources = group_names(cx, &r.sources, &format!("rule {}", r.id))?;
    let dests = group_names(cx, &r.destinations, &format!("rule {}", r.id))?;
    Ok(expressible(r).map(|template| {
        let mut made = Vec::new();
        let mut to_resources: Vec<String> = dests
            .iter()
            .filter(|g| known.resource_groups.contains(*g))
            .cloned()
            .collect();
        let mut resource_names = Vec::new();
        let mut to_me: Vec<String> = dests
            .iter()
            .filter(|g| known.own_groups.contains(g))
            .cloned()
            .collect();
        if let Some(d) = &r.destination_resource {
            if d.kind == "peer" {
                if d.id == cx.me.id {
                    to_me = known.own_groups.to_vec();
                }
            } else if let Some(n) = known.resources.get(&d.id) {
                resource_names.push(n.clone());
            }
        }
        let peer_sources = |groups: &[String]| -> Vec<String> {
            groups
                .iter()
                .filter(|g| known.peer_groups.contains(*g))
                .cloned()
                .collect()
        };
        let srcs = peer_sources(&sources);
        to_resources.sort();
        to_resources.dedup();
        if !srcs.is_empty() && (!to_resources.is_empty() || !resource_names.is_empty()) {
            let mut p = template.clone_named(name, PolicyKind::Resource);
            p.sources = srcs.clone();
            p.destinations = to_resources;
            p.destination_resources = resource_names;
            made.push(p);
        }
        if !srcs.is_empty() && !to_me.is_empty() {
            let suffix = if made.is_empty() { "" } else { " (this peer)" };
            let mut p = template.clone_named(&format!("{name}{suffix}"), PolicyKind::Peer);
            p.sources = srcs;
            p.destinations = to_me;
            made.push(p);
        }
        // Bidirectional: the destinations' peers may open connections to
        // this peer when it is among the sources.
        let mine_in_sources: Vec<String> = sources
            .iter()
            .filter(|g| known.own_groups.contains(g))
            .cloned()
            .collect();
        let reverse_sources = peer_sources(&dests);
        if r.bidirectional && !mine_in_sources.is_empty() && !reverse_sources.is_empty() {
            let mut p = template.clone_named(&format!("{name} (reverse)"), PolicyKind::Peer);
            p.sources = reverse_sources;
            p.destinations = mine_in_sources;
            made.push(p);
        }
        made
    }))
}

/// The rule's protocol, ports and action, or what it has that cannot be
/// expressed here.
fn expressible(r: &api::PolicyRule) -> Result<Policy, String> {
    if !r.unknown.is_empty() {
        let fields: Vec<&String> = r.unknown.keys().collect();
        return Err(format!(
            "fields this version does not understand ({fields:?})"
        ));
    }
    if r.source_resource.is_some() {
        return Err("a source resource (a policy from a resource) cannot be expressed".into());
    }
    if let Some(d) = &r.destination_resource {
        if !matches!(d.kind.as_str(), "host" | "subnet" | "domain" | "peer") {
            return Err(format!("destination resource type `{}` is unknown", d.kind));
        }
    }
    let proto = match (r.protocol.as_str(), protocol(&r.protocol)) {
        ("netbird-ssh", _) => return Err("`netbird-ssh` rules belong to the NetBird agent".into()),
        (_, Some(p)) => p,
        (other, None) => return Err(format!("protocol `{other}` is unknown")),
    };
    let act = action(&r.action).ok_or_else(|| format!("action `{}` is unknown", r.action))?;
    let (port_list, ranges) = ports(r)?;
    if (!port_list.is_empty() || !ranges.is_empty())
        && !matches!(proto, Protocol::Tcp | Protocol::Udp)
    {
        return Err(format!("ports with protocol `{}`", r.protocol));
    }
    let mut p = new_policy(String::new(), PolicyKind::Resource);
    p.protocol = proto;
    p.action = act;
    p.ports = port_list;
    p.port_ranges = ranges;
    Ok(p)
}

fn group_names(
    cx: &Ctx,
    groups: &[api::GroupMinimum],
    whose: &str,
) -> Result<Vec<String>, MapError> {
    groups.iter().map(|g| cx.group(&g.id, whose)).collect()
}

trait Named {
    fn clone_named(&self, name: &str, kind: PolicyKind) -> Policy;
}

impl Named for Policy {
    fn clone_named(&self, name: &str, kind: PolicyKind) -> Policy {
        Policy {
            name: name.to_string(),
            kind,
            ..self.clone()
        }
    }
}

/// Two NetBird policies may share a name; ours may not.
fn unique_names(policies: &mut [Policy]) {
    let mut seen: HashSet<String> = HashSet::new();
    for p in policies.iter_mut() {
        let mut n = 2;
        let base = p.name.clone();
        while !seen.insert(p.name.clone()) {
            p.name = format!("{base} #{n}");
            n += 1;
        }
    }
}
