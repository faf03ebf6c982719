//! Destinations: resource prefixes with their rule sets, nesting (a prefix
//! inherits the rules of every prefix that contains it), masquerade by the
//! granting resource, and the routing peer's own addresses.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use routing_peer_common::{
    DestValue, MasqKey, DEST_MASQUERADE, DEST_MASQ_BY_RULE, DEST_SELF, SELF_KEY,
};

use super::{
    classes::{rule_set, RuleIndex, RuleSet, SELF_LAN_MEMBER, SELF_OVERLAY_MEMBER},
    ids::Ids,
    DeltaState, DomainResource,
};
use crate::{
    config::{parse_resource_address, Config, ResourceAddress},
    model::{DestPrefix, FastMap, Tables},
};

/// One destination prefix with its direct rule set.
pub(super) struct Dest {
    pub(super) net: IpNet,
    pub(super) resource_id: u32,
    pub(super) flags: u32,
    pub(super) rules: RuleSet,
}

/// A domain resource's class inputs: its addresses come from the forwarder.
pub(super) struct DomainRules {
    pub(super) resource_id: u32,
    pub(super) flags: u32,
    pub(super) rules: RuleSet,
}

/// The enabled resources' prefixes (domains: as resolved now) and domains.
pub(super) struct Destinations {
    pub(super) dests: Vec<Dest>,
    pub(super) domains: Vec<DomainResource>,
    pub(super) domain_rules: Vec<DomainRules>,
}

pub(super) fn collect(
    config: &Config,
    ids: &Ids<'_>,
    index: &RuleIndex<'_>,
    resolved: &HashMap<String, Vec<IpAddr>>,
    delta: &mut DeltaState,
) -> Destinations {
    let mut out = Destinations {
        dests: Vec::new(),
        domains: Vec::new(),
        domain_rules: Vec::new(),
    };
    for network in &config.networks {
        for res in &network.resources {
            let resource_id = ids.resources[res.name.as_str()];
            let Ok(address) = parse_resource_address(&res.address) else {
                continue;
            };
            if !res.enabled {
                continue;
            }
            let direct = index.granted_to(&res.name, res.groups.iter().map(String::as_str));
            let flags = if network.masquerade {
                DEST_MASQUERADE
            } else {
                0
            };
            for group in &res.groups {
                delta
                    .group_resources
                    .entry(group.clone())
                    .or_default()
                    .push(resource_id);
            }
            delta.resource_ids.insert(res.name.clone(), resource_id);
            let nets: Vec<IpNet> = match &address {
                ResourceAddress::Host(n) | ResourceAddress::Subnet(n) => vec![*n],
                ResourceAddress::Domain(_) | ResourceAddress::Wildcard(_) => {
                    // Resolved addresses come and go between compiles.
                    delta.nested.insert(resource_id, ());
                    out.domain_rules.push(DomainRules {
                        resource_id,
                        flags,
                        rules: direct.clone(),
                    });
                    out.domains.push(DomainResource {
                        resource_id,
                        name: res.name.clone(),
                        address: address.clone(),
                        groups: res.groups.clone(),
                    });
                    resolved
                        .get(&res.name)
                        .into_iter()
                        .flatten()
                        .map(|ip| IpNet::from(*ip))
                        .collect()
                }
            };
            for net in nets {
                out.dests.push(Dest {
                    net,
                    resource_id,
                    flags,
                    rules: direct.clone(),
                });
            }
        }
    }
    out
}

/// What nesting gives each destination (same order as the destinations).
pub(super) struct Nesting {
    /// Its own rules with those of every prefix that contains it.
    pub(super) inherited: Vec<RuleSet>,
    /// (rule, masquerade) where the granting resource's setting differs
    /// from the prefix's own; empty for most.
    pub(super) masq_by_rule: Vec<Vec<(u32, bool)>>,
}

pub(super) fn nest(dests: &[Dest], delta: &mut DeltaState) -> Nesting {
    let mut by_net: FastMap<IpNet, RuleSet> = FastMap::default();
    for d in dests {
        by_net.entry(d.net).or_default().extend(&d.rules);
    }
    for rules in by_net.values_mut() {
        *rules = rule_set(std::mem::take(rules));
    }
    // Only prefix lengths that some resource has can hold a parent.
    let lengths: BTreeSet<(bool, u8)> = by_net
        .keys()
        .map(|n| (n.addr().is_ipv4(), n.prefix_len()))
        .collect();
    let parents = |net: IpNet| {
        let v4 = net.addr().is_ipv4();
        lengths
            .iter()
            .filter(move |(fam, len)| *fam == v4 && *len < net.prefix_len())
            .filter_map(move |(_, len)| IpNet::new(net.addr(), *len).ok().map(|n| n.trunc()))
    };
    let mut nested_nets: FastMap<IpNet, ()> = FastMap::default();
    let inherited: Vec<RuleSet> = dests
        .iter()
        .map(|d| {
            let mut all = d.rules.clone();
            for parent in parents(d.net) {
                if let Some(r) = by_net.get(&parent) {
                    all.extend(r.iter().copied());
                    nested_nets.insert(parent, ());
                    nested_nets.insert(d.net, ());
                }
            }
            // Two resources with the same prefix: both grant.
            all.extend(&by_net[&d.net]);
            rule_set(all)
        })
        .collect();

    let mut prefixes_per_net: FastMap<IpNet, u32> = FastMap::default();
    for d in dests {
        *prefixes_per_net.entry(d.net).or_default() += 1;
    }
    // Masquerade follows the resource whose rule grants the flow: for a
    // nested prefix, the most specific resource whose own rules hold the
    // rule. Only where that differs from the prefix's own setting does the
    // data path need an entry (rule by rule).
    let mut own_by_net: FastMap<IpNet, Vec<(bool, &RuleSet)>> = FastMap::default();
    for d in dests {
        own_by_net
            .entry(d.net)
            .or_default()
            .push((d.flags & DEST_MASQUERADE != 0, &d.rules));
    }
    let masq_by_rule: Vec<Vec<(u32, bool)>> = dests
        .iter()
        .zip(&inherited)
        .map(|(d, all)| {
            if !nested_nets.contains_key(&d.net) && prefixes_per_net[&d.net] == 1 {
                return Vec::new();
            }
            let own = d.flags & DEST_MASQUERADE != 0;
            let mut chain: Vec<IpNet> = parents(d.net).collect();
            chain.reverse(); // longest (most specific) parent first
            let granting = |rule: u32| -> bool {
                if d.rules.binary_search(&rule).is_ok() {
                    return own;
                }
                std::iter::once(d.net)
                    .chain(chain.iter().copied())
                    .filter_map(|net| own_by_net.get(&net))
                    .flat_map(|owners| owners.iter())
                    .find(|(_, rules)| rules.binary_search(&rule).is_ok())
                    .map(|(masq, _)| *masq)
                    .unwrap_or(own)
            };
            all.iter()
                .map(|r| (*r, granting(*r)))
                .filter(|(_, masq)| *masq != own)
                .collect()
        })
        .collect();
    for d in dests {
        if nested_nets.contains_key(&d.net) || prefixes_per_net[&d.net] > 1 {
            delta.nested.insert(d.resource_id, ());
        }
        delta
            .member_prefixes
            .entry(d.resource_id)
            .or_default()
            .push(DestPrefix::new(d.net));
    }
    Nesting {
        inherited,
        masq_by_rule,
    }
}

/// Writes each destination with its class, and its masquerade-by-rule
/// entries where it has any.
pub(super) fn install(
    tables: &mut Tables,
    dests: &[Dest],
    classes: impl Iterator<Item = u32>,
    masq_by_rule: &[Vec<(u32, bool)>],
) {
    for ((d, dst_class), by_rule) in dests.iter().zip(classes).zip(masq_by_rule) {
        let mut flags = d.flags;
        if !by_rule.is_empty() {
            flags |= DEST_MASQ_BY_RULE;
            for (rule_id, masq) in by_rule {
                tables.masq.insert(
                    MasqKey {
                        resource_id: d.resource_id,
                        rule_id: *rule_id,
                    },
                    u32::from(*masq),
                );
            }
        }
        tables.dests.insert(
            DestPrefix::new(d.net),
            DestValue {
                resource_id: d.resource_id,
                dst_class,
                flags,
            },
        );
    }
}

/// The routing peer's own addresses: overlay ones in `overlay_class`, LAN
/// ones in `lan_class`. Any local address the FIB reports that is not
/// listed here takes the LAN addresses' class, found under `SELF_KEY`.
pub(super) fn install_self(
    tables: &mut Tables,
    delta: &mut DeltaState,
    config: &Config,
    self_addrs: &[IpAddr],
    overlay_class: u32,
    lan_class: u32,
) {
    let sentinel = DestPrefix {
        key: SELF_KEY,
        prefix_len: 32,
    };
    let own = |prefix: DestPrefix,
               member: u32,
               dst_class: u32,
               tables: &mut Tables,
               delta: &mut DeltaState| {
        delta
            .member_prefixes
            .entry(member)
            .or_default()
            .push(prefix);
        tables.dests.insert(
            prefix,
            DestValue {
                resource_id: 0,
                dst_class,
                flags: DEST_SELF,
            },
        );
    };
    own(sentinel, SELF_LAN_MEMBER, lan_class, tables, delta);
    for addr in self_addrs {
        let overlay = config
            .routing_peer
            .overlay_addresses
            .iter()
            .any(|n| n.addr() == *addr);
        let (member, class) = if overlay {
            (SELF_OVERLAY_MEMBER, overlay_class)
        } else {
            (SELF_LAN_MEMBER, lan_class)
        };
        own(
            DestPrefix::new(IpNet::from(*addr)),
            member,
            class,
            tables,
            delta,
        );
    }
}
