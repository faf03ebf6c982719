//! Stable ids: rules, peers and resources keep their ids by name from one
//! compile to the next, and the names the CLI shows for them.

use routing_peer_common::MAX_RESOURCES;

use crate::{config::Config, model::FastMap};

/// Ids the kernel stores, with the names the CLI shows for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    /// Index = id; 0 is "none".
    pub peers: Vec<String>,
    pub resources: Vec<String>,
    pub rules: Vec<String>,
}

/// The ids of one compile, by name.
pub(super) struct Ids<'c> {
    pub(super) rules: FastMap<&'c str, u32>,
    pub(super) peers: FastMap<&'c str, u32>,
    pub(super) resources: FastMap<&'c str, u32>,
}

/// Ids for every rule (and the built-in DNS rule), peer and resource of
/// `config`, keeping those of `previous` for names that stay.
pub(super) fn assign<'c>(config: &'c Config, previous: Option<&Names>) -> (Names, Ids<'c>) {
    let rule_names: Vec<&str> = config
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .chain([DNS_RULE])
        .collect();
    let peer_names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
    let resource_names: Vec<&str> = config
        .networks
        .iter()
        .flat_map(|n| &n.resources)
        .map(|r| r.name.as_str())
        .collect();
    let (rule_slots, rules) = stable_ids(
        previous.map(|p| p.rules.as_slice()),
        &rule_names,
        usize::MAX,
    );
    let (peer_slots, peers) = stable_ids(
        previous.map(|p| p.peers.as_slice()),
        &peer_names,
        usize::MAX,
    );
    let (resource_slots, resources) = stable_ids(
        previous.map(|p| p.resources.as_slice()),
        &resource_names,
        MAX_RESOURCES as usize,
    );
    let names = Names {
        peers: peer_slots,
        resources: resource_slots,
        rules: rule_slots,
    };
    (
        names,
        Ids {
            rules,
            peers,
            resources,
        },
    )
}

/// Name of the built-in rule that opens the DNS forwarder.
pub(super) const DNS_RULE: &str = "built-in: DNS forwarder";

/// Ids that stay with their names from one compile to the next. Removing
/// the rule in the middle must not renumber the 50k after it: each would
/// be a map write, and live flows would show under another rule's name.
/// A freed id (an empty name) is handed out again only once `limit` fresh
/// ids are used up, so a new resource does not inherit a removed one's
/// counters. Returns the names by id (0 is "none") and the ids by name.
pub(super) fn stable_ids<'a>(
    previous: Option<&[String]>,
    wanted: &[&'a str],
    limit: usize,
) -> (Vec<String>, FastMap<&'a str, u32>) {
    let previous = previous.unwrap_or_default();
    let known: FastMap<&str, u32> = previous
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, n)| !n.is_empty())
        .map(|(id, n)| (n.as_str(), id as u32))
        .collect();
    let mut names = vec![String::new(); previous.len().max(1)];
    let mut ids: FastMap<&'a str, u32> = FastMap::default();
    ids.reserve(wanted.len());
    for name in wanted {
        if let Some(&id) = known.get(name) {
            names[id as usize] = (*name).to_string();
            ids.insert(name, id);
        }
    }
    let mut free = (1..names.len())
        .filter(|&i| names[i].is_empty())
        .collect::<Vec<_>>();
    free.reverse();
    for name in wanted {
        if ids.contains_key(name) {
            continue;
        }
        let id = match free.pop() {
            Some(id) if names.len() >= limit => id,
            _ => {
                names.push(String::new());
                names.len() - 1
            }
        };
        names[id] = (*name).to_string();
        ids.insert(name, id as u32);
    }
    (names, ids)
}
