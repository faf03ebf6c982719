//! What a sync would change, entity by entity: `routing-peer netbird diff`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;

/// Lines: `+ kind name`, `- kind name`, `~ kind name` with before and after.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    section(
        &mut out,
        "peer",
        by_name(&old.peers, |p| &p.name),
        by_name(&new.peers, |p| &p.name),
    );
    let networks = |c: &Config| {
        c.networks
            .iter()
            .map(|n| {
                let mut shell = n.clone();
                shell.resources.clear();
                (n.name.clone(), json(&shell))
            })
            .collect::<BTreeMap<_, _>>()
    };
    section(&mut out, "network", networks(old), networks(new));
    let resources = |c: &Config| {
        c.networks
            .iter()
            .flat_map(|n| {
                n.resources
                    .iter()
                    .map(move |r| (format!("{} in {}", r.name, n.name), json(r)))
            })
            .collect::<BTreeMap<_, _>>()
    };
    section(&mut out, "resource", resources(old), resources(new));
    section(
        &mut out,
        "policy",
        by_name(&old.policies, |p| &p.name),
        by_name(&new.policies, |p| &p.name),
    );
    if old.routing_peer.groups != new.routing_peer.groups {
        out.push(format!(
            "~ this peer's groups: {:?} -> {:?}",
            old.routing_peer.groups, new.routing_peer.groups
        ));
    }
    out
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn by_name<T: Serialize>(items: &[T], name: impl Fn(&T) -> &String) -> BTreeMap<String, String> {
    items.iter().map(|i| (name(i).clone(), json(i))).collect()
}

fn section(
    out: &mut Vec<String>,
    kind: &str,
    old: BTreeMap<String, String>,
    new: BTreeMap<String, String>,
) {
    for (name, now) in &new {
        match old.get(name) {
            None => out.push(format!("+ {kind} `{name}`: {now}")),
            Some(was) if was != now => {
                out.push(format!("~ {kind} `{name}`"));
                out.push(format!("    was: {was}"));
                out.push(format!("    now: {now}"));
            }
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(format!("- {kind} `{name}`"));
    }
}
