//! The policy compiler: configuration in, map contents out.
//!
//! Peers that are sources of the same rules share a *source class*; address
//! prefixes that are destinations of the same rules share a *destination
//! class*. The policy map is keyed by (source class, destination class,
//! protocol, port), with "any protocol" and port ranges as shorter LPM
//! prefixes, so the kernel never scans rules, peers or resources: one hash
//! lookup, two LPM lookups, whatever the size of the configuration.
//!
//! Precedence: a drop beats an accept. LPM picks the most specific entry, so
//! the compiler drops any accept entry that lies inside (or equals) a drop
//! entry of the same class pair; where a drop lies inside an accept, LPM
//! already picks the drop.
//!
//! A prefix nested inside another resource's prefix (a /32 in a /24) gets
//! the rules of both. The routing peer's own addresses get only peer
//! (input-chain) rules: a resource policy never opens the routing peer.

mod delta;

pub use delta::{apply_policy_change, NeedsFullCompile};

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use routing_peer_common::{
    AddrKey, DestValue, MasqKey, PeerValue, PolicyKey, PolicyValue, ACTION_ACCEPT, ACTION_DROP,
    DEST_MASQUERADE, DEST_MASQ_BY_RULE, DEST_SELF, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, MAX_RESOURCES, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, SELF_KEY,
};

use crate::{
    config::{parse_resource_address, Action, Config, PolicyKind, Protocol, ResourceAddress},
    model::{addr_key, DestPrefix, FastMap, PolicyPrefix, Tables},
};

/// Ids the kernel stores, with the names the CLI shows for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    /// Index = id; 0 is "none".
    pub peers: Vec<String>,
    pub resources: Vec<String>,
    pub rules: Vec<String>,
}

/// A domain resource whose resolved addresses the DNS forwarder installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainResource {
    pub resource_id: u32,
    pub name: String,
    pub address: ResourceAddress,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub tables: Tables,
    pub names: Names,
    pub domains: Vec<DomainResource>,
    /// What an address the DNS forwarder resolves for a domain resource
    /// maps to, by resource id.
    pub domain_dests: HashMap<u32, DestValue>,
    pub peer_classes: usize,
    pub dest_classes: usize,
    pub src_class_ids: ClassIds,
    pub dst_class_ids: ClassIds,
    /// What `apply_policy_change` needs to update this in place.
    delta: DeltaState,
}

/// The compiler's intermediate results, kept so that a change of policies
/// can be applied to a compiled configuration without a full pass.
#[derive(Clone, Debug, Default)]
struct DeltaState {
    /// Enabled rules (and the built-in DNS rule) by id.
    rules: FastMap<u32, Rule>,
    rule_ids: FastMap<String, u32>,
    src: ClassSide,
    dst: ClassSide,
    /// The policy entries of each (source class, destination class) pair.
    pair_entries: FastMap<(u32, u32), Vec<PolicyPrefix>>,
    /// Peers by group, resources by group and by name (enabled ones).
    group_peers: FastMap<String, Vec<u32>>,
    group_resources: FastMap<String, Vec<u32>>,
    resource_ids: FastMap<String, u32>,
    /// Map keys of each source member (peer) and destination member.
    peer_keys: FastMap<u32, Vec<AddrKey>>,
    member_prefixes: FastMap<u32, Vec<DestPrefix>>,
    /// Resources whose prefix contains, lies in or equals another's: their
    /// rule sets depend on each other, so changes there take a full pass.
    nested: FastMap<u32, ()>,
}

/// One side's classes, from class id.
#[derive(Clone, Debug, Default)]
struct ClassSide {
    sets: FastMap<u32, RuleSet>,
    counts: FastMap<u32, u32>,
    by_rule: FastMap<u32, Vec<u32>>,
}

impl ClassSide {
    fn new(ids: &ClassIds, by_rule: FastMap<u32, Vec<u32>>) -> Self {
        let mut counts: FastMap<u32, u32> = FastMap::default();
        for class in ids.by_member.values() {
            *counts.entry(*class).or_default() += 1;
        }
        Self {
            sets: ids.ids.iter().map(|(set, id)| (*id, set.clone())).collect(),
            counts,
            by_rule,
        }
    }
}

/// A set of rule ids, sorted and without duplicates. A sorted vector, not
/// a BTreeSet: at 100k resources the sets (mostly of one rule) dominate
/// the compiler's memory, and so its time.
type RuleSet = Vec<u32>;

fn rule_set(mut rules: Vec<u32>) -> RuleSet {
    rules.sort_unstable();
    rules.dedup();
    rules
}

/// Class ids by rule set, as one compile hands them to the next.
#[derive(Clone, Debug, Default)]
pub struct ClassIds {
    ids: FastMap<RuleSet, u32>,
    /// The class of each member (peer id; resource id or a self key).
    by_member: FastMap<u32, u32>,
    /// The highest id handed out so far.
    last: u32,
}

/// Member keys of the routing peer's own addresses among destinations.
const SELF_OVERLAY_MEMBER: u32 = u32::MAX;
const SELF_LAN_MEMBER: u32 = u32::MAX - 1;

/// Collects every member's rule set, then hands out class ids in one go,
/// so that ids stay where they were: a set the previous compile knew keeps
/// its id; a changed set keeps its members' previous id if no unchanged
/// set holds it (one rule more for a group moves none of its peers and
/// rewrites only that rule's entries); anything else gets a new id.
struct ClassBuilder<'p> {
    previous: Option<&'p ClassIds>,
    sets: Vec<RuleSet>,
    slot_of: FastMap<RuleSet, usize>,
    members: Vec<(u32, usize)>,
}

impl<'p> ClassBuilder<'p> {
    fn after(previous: Option<&'p ClassIds>) -> Self {
        Self {
            previous,
            sets: Vec::new(),
            slot_of: FastMap::default(),
            members: Vec::new(),
        }
    }

    /// Files `member` under `rules`; returns the set's slot for `finish`.
    fn add(&mut self, member: u32, rules: RuleSet) -> usize {
        let slot = match self.slot_of.get(&rules) {
            Some(slot) => *slot,
            None => {
                self.sets.push(rules.clone());
                self.slot_of.insert(rules, self.sets.len() - 1);
                self.sets.len() - 1
            }
        };
        self.add_to_slot(member, slot);
        slot
    }

    fn add_to_slot(&mut self, member: u32, slot: usize) {
        self.members.push((member, slot));
    }

    /// The class id of every slot, and the ids to hand to the next compile.
    fn finish(self) -> (Vec<u32>, ClassIds) {
        let empty = ClassIds::default();
        let previous = self.previous.unwrap_or(&empty);
        let mut ids = vec![0u32; self.sets.len()];
        let mut claimed: FastMap<u32, ()> = FastMap::default();
        for (slot, set) in self.sets.iter().enumerate() {
            if let Some(id) = previous.ids.get(set) {
                ids[slot] = *id;
                claimed.insert(*id, ());
            }
        }
        for (member, slot) in &self.members {
            if ids[*slot] != 0 {
                continue;
            }
            if let Some(id) = previous.by_member.get(member) {
                if claimed.insert(*id, ()).is_none() {
                    ids[*slot] = *id;
                }
            }
        }
        let mut last = previous.last;
        for id in ids.iter_mut().filter(|id| **id == 0) {
            last += 1;
            *id = last;
        }
        let by_member = self
            .members
            .iter()
            .map(|(member, slot)| (*member, ids[*slot]))
            .collect();
        let classes = ClassIds {
            ids: self.sets.into_iter().zip(ids.iter().copied()).collect(),
            by_member,
            last,
        };
        (ids, classes)
    }
}

/// What a compile keeps from the one before it: ids by name and classes
/// by rule set, so that a small change is a small diff.
#[derive(Clone, Copy, Debug, Default)]
pub struct Previous<'a> {
    pub names: Option<&'a Names>,
    pub classes: Option<(&'a ClassIds, &'a ClassIds)>,
}

impl<'a> From<&'a Names> for Previous<'a> {
    /// After a restart only the names are known (from the state file).
    fn from(names: &'a Names) -> Self {
        Self {
            names: Some(names),
            classes: None,
        }
    }
}

impl Compiled {
    pub fn as_previous(&self) -> Previous<'_> {
        Previous {
            names: Some(&self.names),
            classes: Some((&self.src_class_ids, &self.dst_class_ids)),
        }
    }
}

/// One LPM block of the policy key space below a class pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Block {
    proto: Option<u8>,
    /// (first port, prefix bits of the 16-bit port).
    ports: Option<(u16, u32)>,
}

impl Block {
    fn contains(&self, other: &Block) -> bool {
        let proto = match (self.proto, other.proto) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let ports = match (self.ports, other.ports) {
            (None, _) => true,
            (Some((pa, ba)), Some((pb, bb))) => {
                ba <= bb && (u32::from(pa) >> (16 - ba)) == (u32::from(pb) >> (16 - ba))
            }
            (Some(_), None) => false,
        };
        proto && ports
    }

    fn prefix(&self, src_class: u32, dst_class: u32) -> PolicyPrefix {
        let (proto, port, prefix_len) = match (self.proto, self.ports) {
            (None, _) => (0, 0, POLICY_PREFIX_ANY_PROTO),
            (Some(p), None) => (p, 0, POLICY_PREFIX_ANY_PORT),
            (Some(p), Some((port, bits))) => (p, port, POLICY_PREFIX_ANY_PORT + bits),
        };
        PolicyPrefix {
            key: PolicyKey::new(src_class, dst_class, proto, port),
            prefix_len,
        }
    }
}

/// Splits an inclusive port range into aligned prefix blocks.
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        let mut size_bits = start.trailing_zeros().min(16);
        while size_bits > 0 && start + (1 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        out.push((start as u16, 16 - size_bits));
        start += 1 << size_bits;
    }
    out
}

fn blocks_of(protocol: Protocol, ranges: &[(u16, u16)]) -> Vec<Block> {
    let protos: &[u8] = match protocol {
        Protocol::All => {
            return vec![Block {
                proto: None,
                ports: None,
            }]
        }
        Protocol::Tcp => &[IPPROTO_TCP],
        Protocol::Udp => &[IPPROTO_UDP],
        Protocol::Icmp => &[IPPROTO_ICMP, IPPROTO_ICMPV6],
    };
    let mut out = Vec::new();
    for &proto in protos {
        if ranges.is_empty() {
            out.push(Block {
                proto: Some(proto),
                ports: None,
            });
        }
        for &(lo, hi) in ranges {
            out.extend(port_blocks(lo, hi).into_iter().map(|ports| Block {
                proto: Some(proto),
                ports: Some(ports),
            }));
        }
    }
    out
}

/// The compiled form of one enabled policy.
#[derive(Clone, Debug)]
struct Rule {
    id: u32,
    action: Action,
    blocks: Vec<Block>,
}

/// Entries for one class pair, drop precedence applied.
fn resolve(rules: &[&Rule]) -> Vec<(Block, PolicyValue)> {
    // Most pairs have one rule: nothing to take precedence over.
    if let [rule] = rules {
        let action = match rule.action {
            Action::Accept => ACTION_ACCEPT,
            Action::Drop => ACTION_DROP,
        };
        let value = PolicyValue {
            action,
            rule_id: rule.id,
        };
        return rule.blocks.iter().map(|b| (*b, value)).collect();
    }
    let drops: Vec<(Block, u32)> = rules
        .iter()
        .filter(|r| r.action == Action::Drop)
        .flat_map(|r| r.blocks.iter().map(move |b| (*b, r.id)))
        .collect();
    let mut out: FastMap<Block, PolicyValue> = FastMap::default();
    for (block, id) in &drops {
        out.entry(*block).or_insert(PolicyValue {
            action: ACTION_DROP,
            rule_id: *id,
        });
    }
    for rule in rules.iter().filter(|r| r.action == Action::Accept) {
        for block in &rule.blocks {
            if drops.iter().any(|(d, _)| d.contains(block)) {
                continue;
            }
            out.entry(*block).or_insert(PolicyValue {
                action: ACTION_ACCEPT,
                rule_id: rule.id,
            });
        }
    }
    out.into_iter().collect()
}

/// Name of the built-in rule that opens the DNS forwarder.
const DNS_RULE: &str = "built-in: DNS forwarder";

/// Ids that stay with their names from one compile to the next. Removing
/// the rule in the middle must not renumber the 50k after it: each would
/// be a map write, and live flows would show under another rule's name.
/// A freed id (an empty name) is handed out again only once `limit` fresh
/// ids are used up, so a new resource does not inherit a removed one's
/// counters. Returns the names by id (0 is "none") and the ids by name.
fn stable_ids<'a>(
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

/// Compiles `config`. `self_addrs` are the routing peer's own addresses
/// (overlay and LAN); `resolved` maps domain resource names to the addresses
/// the DNS forwarder currently holds for them; `previous` are the ids of the
/// configuration installed now, kept for names that stay.
pub fn compile(
    config: &Config,
    self_addrs: &[IpAddr],
    resolved: &HashMap<String, Vec<IpAddr>>,
    previous: Previous<'_>,
) -> Compiled {
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
    let (rule_slots, rule_ids) = stable_ids(
        previous.names.map(|p| p.rules.as_slice()),
        &rule_names,
        usize::MAX,
    );
    let (peer_slots, peer_ids) = stable_ids(
        previous.names.map(|p| p.peers.as_slice()),
        &peer_names,
        usize::MAX,
    );
    let (resource_slots, resource_ids) = stable_ids(
        previous.names.map(|p| p.resources.as_slice()),
        &resource_names,
        MAX_RESOURCES as usize,
    );
    let names = Names {
        peers: peer_slots,
        resources: resource_slots,
        rules: rule_slots,
    };
    let mut rules = Vec::new();
    for policy in &config.policies {
        if !policy.enabled {
            continue;
        }
        rules.push((
            policy,
            Rule {
                id: rule_ids[policy.name.as_str()],
                action: policy.action,
                blocks: blocks_of(policy.protocol, &policy.port_ranges()),
            },
        ));
    }

    // Every peer may query the DNS forwarder on the overlay addresses; the
    // forwarder does its own per-name access control.
    let dns_rule = Rule {
        id: rule_ids[DNS_RULE],
        action: Action::Accept,
        blocks: [IPPROTO_UDP, IPPROTO_TCP]
            .iter()
            .map(|&proto| Block {
                proto: Some(proto),
                ports: Some((config.dns.port, 16)),
            })
            .collect(),
    };

    // Indexes from groups and names to rules, so nothing below is quadratic.
    let mut by_source: FastMap<&str, Vec<u32>> = FastMap::default();
    let mut by_dest_group: FastMap<&str, Vec<u32>> = FastMap::default();
    let mut by_dest_resource: FastMap<&str, Vec<u32>> = FastMap::default();
    for (p, r) in &rules {
        for g in &p.sources {
            by_source.entry(g).or_default().push(r.id);
        }
        if p.kind == PolicyKind::Resource {
            for g in &p.destinations {
                by_dest_group.entry(g).or_default().push(r.id);
            }
            for name in &p.destination_resources {
                by_dest_resource.entry(name).or_default().push(r.id);
            }
        }
    }
    let collect = |index: &FastMap<&str, Vec<u32>>, keys: &mut dyn Iterator<Item = &str>| {
        rule_set(
            keys.filter_map(|k| index.get(k))
                .flatten()
                .copied()
                .collect(),
        )
    };

    // Source classes.
    let mut src_classes = ClassBuilder::after(previous.classes.map(|c| c.0));
    // Peers with the same groups share a class: compute each group set once
    // (10k peers in one group must not mean 10k copies of its rule set).
    let mut slot_of_groups: FastMap<Vec<&str>, usize> = FastMap::default();
    let mut peer_slots = Vec::with_capacity(config.peers.len());
    for peer in &config.peers {
        let peer_id = peer_ids[peer.name.as_str()];
        let mut groups: Vec<&str> = peer.groups.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        let slot = match slot_of_groups.get(&groups) {
            Some(slot) => {
                src_classes.add_to_slot(peer_id, *slot);
                *slot
            }
            None => {
                let mut member = collect(&by_source, &mut groups.iter().copied());
                member.push(dns_rule.id);
                let slot = src_classes.add(peer_id, rule_set(member));
                slot_of_groups.insert(groups, slot);
                slot
            }
        };
        peer_slots.push((peer, peer_id, slot));
    }
    let (src_ids, src_class_ids) = src_classes.finish();
    let mut peers = FastMap::default();
    let mut delta = DeltaState::default();
    for (peer, peer_id, slot) in peer_slots {
        for addr in &peer.addresses {
            let src_class = src_ids[slot];
            peers.insert(addr_key(*addr), PeerValue { peer_id, src_class });
        }
        for group in &peer.groups {
            delta
                .group_peers
                .entry(group.clone())
                .or_default()
                .push(peer_id);
        }
        delta.peer_keys.insert(
            peer_id,
            peer.addresses.iter().map(|a| addr_key(*a)).collect(),
        );
    }

    // Destination prefixes with their direct rule sets.
    struct Dest {
        net: IpNet,
        resource_id: u32,
        flags: u32,
        rules: RuleSet,
    }
    let mut dests: Vec<Dest> = Vec::new();
    let mut domains = Vec::new();
    let mut domain_rules: Vec<(u32, u32, RuleSet)> = Vec::new();
    for network in &config.networks {
        for res in &network.resources {
            let resource_id = resource_ids[res.name.as_str()];
            let Ok(address) = parse_resource_address(&res.address) else {
                continue;
            };
            if !res.enabled {
                continue;
            }
            let mut direct = collect(&by_dest_group, &mut res.groups.iter().map(String::as_str));
            if let Some(named) = by_dest_resource.get(res.name.as_str()) {
                direct.extend(named);
                direct = rule_set(direct);
            }
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
                    domain_rules.push((resource_id, flags, direct.clone()));
                    domains.push(DomainResource {
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
                dests.push(Dest {
                    net,
                    resource_id,
                    flags,
                    rules: direct.clone(),
                });
            }
        }
    }

    // Nesting: a prefix inherits the rules of every prefix that contains it.
    let mut by_net: FastMap<IpNet, RuleSet> = FastMap::default();
    for d in &dests {
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
    let mut nested_nets: FastMap<IpNet, ()> = FastMap::default();
    let inherited: Vec<RuleSet> = dests
        .iter()
        .map(|d| {
            let mut all = d.rules.clone();
            let v4 = d.net.addr().is_ipv4();
            let shorter = lengths
                .iter()
                .filter(|(fam, len)| *fam == v4 && *len < d.net.prefix_len())
                .map(|(_, len)| *len);
            for len in shorter {
                if let Ok(parent) = IpNet::new(d.net.addr(), len) {
                    if let Some(r) = by_net.get(&parent.trunc()) {
                        all.extend(r.iter().copied());
                        nested_nets.insert(parent.trunc(), ());
                        nested_nets.insert(d.net, ());
                    }
                }
            }
            // Two resources with the same prefix: both grant.
            all.extend(&by_net[&d.net]);
            rule_set(all)
        })
        .collect();

    let mut prefixes_per_net: FastMap<IpNet, u32> = FastMap::default();
    for d in &dests {
        *prefixes_per_net.entry(d.net).or_default() += 1;
    }
    // Masquerade follows the resource whose rule grants the flow: for a
    // nested prefix, the most specific resource whose own rules hold the
    // rule. Only where that differs from the prefix's own setting does the
    // data path need an entry (rule by rule).
    let mut own_by_net: FastMap<IpNet, Vec<(bool, &RuleSet)>> = FastMap::default();
    for d in &dests {
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
            let v4 = d.net.addr().is_ipv4();
            let mut chain: Vec<IpNet> = lengths
                .iter()
                .filter(|(fam, len)| *fam == v4 && *len < d.net.prefix_len())
                .filter_map(|(_, len)| IpNet::new(d.net.addr(), *len).ok().map(|n| n.trunc()))
                .collect();
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
    for d in &dests {
        if nested_nets.contains_key(&d.net) || prefixes_per_net[&d.net] > 1 {
            delta.nested.insert(d.resource_id, ());
        }
        delta
            .member_prefixes
            .entry(d.resource_id)
            .or_default()
            .push(DestPrefix::new(d.net));
    }
    let mut dst_classes = ClassBuilder::after(previous.classes.map(|c| c.1));
    let dest_slots: Vec<usize> = dests
        .iter()
        .zip(inherited)
        .map(|(d, rules_of)| dst_classes.add(d.resource_id, rules_of))
        .collect();
    let domain_slots: Vec<usize> = domain_rules
        .iter()
        .map(|(resource_id, _, rules_of)| dst_classes.add(*resource_id, rules_of.clone()))
        .collect();
    // Ids follow names, not positions: sort.
    let self_rules: RuleSet = rule_set(
        rules
            .iter()
            .filter(|(p, _)| {
                p.kind == PolicyKind::Peer
                    && p.destinations
                        .iter()
                        .any(|g| config.routing_peer.groups.contains(g))
            })
            .map(|(_, r)| r.id)
            .collect(),
    );
    let mut overlay_rules = self_rules.clone();
    overlay_rules.push(dns_rule.id);
    let overlay_slot = dst_classes.add(SELF_OVERLAY_MEMBER, rule_set(overlay_rules));
    let lan_slot = dst_classes.add(SELF_LAN_MEMBER, self_rules);
    let (dst_ids, dst_class_ids) = dst_classes.finish();

    let mut tables = Tables {
        peers,
        ..Default::default()
    };
    // Sized up front: growing a 100k-entry map rehashes it into fresh pages.
    tables.dests.reserve(dests.len() + self_addrs.len());
    for ((d, slot), by_rule) in dests.iter().zip(dest_slots).zip(&masq_by_rule) {
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
                dst_class: dst_ids[slot],
                flags,
            },
        );
    }
    let domain_dests: HashMap<u32, DestValue> = domain_rules
        .iter()
        .zip(domain_slots)
        .map(|((resource_id, flags, _), slot)| {
            (
                *resource_id,
                DestValue {
                    resource_id: *resource_id,
                    dst_class: dst_ids[slot],
                    flags: *flags,
                },
            )
        })
        .collect();
    // Any local address the FIB reports that is not listed here takes the
    // LAN addresses' class, found under `SELF_KEY`.
    let self_sentinel = DestPrefix {
        key: SELF_KEY,
        prefix_len: 32,
    };
    delta
        .member_prefixes
        .entry(SELF_LAN_MEMBER)
        .or_default()
        .push(self_sentinel);
    tables.dests.insert(
        self_sentinel,
        DestValue {
            resource_id: 0,
            dst_class: dst_ids[lan_slot],
            flags: DEST_SELF,
        },
    );
    for addr in self_addrs {
        let overlay = config
            .routing_peer
            .overlay_addresses
            .iter()
            .any(|n| n.addr() == *addr);
        let slot = if overlay { overlay_slot } else { lan_slot };
        let member = if overlay {
            SELF_OVERLAY_MEMBER
        } else {
            SELF_LAN_MEMBER
        };
        delta
            .member_prefixes
            .entry(member)
            .or_default()
            .push(DestPrefix::new(IpNet::from(*addr)));
        tables.dests.insert(
            DestPrefix::new(IpNet::from(*addr)),
            DestValue {
                resource_id: 0,
                dst_class: dst_ids[slot],
                flags: DEST_SELF,
            },
        );
    }

    // Policy entries for every class pair some rule connects.
    let all_rules: Vec<&Rule> = rules.iter().map(|(_, r)| r).chain([&dns_rule]).collect();
    let rule_by_id: FastMap<u32, &Rule> = all_rules.iter().map(|r| (r.id, *r)).collect();
    // Pairs come from each rule's classes, never from all class pairs.
    let by_rule = |classes: &ClassIds| {
        let mut m: FastMap<u32, Vec<u32>> = FastMap::default();
        for (members, id) in &classes.ids {
            for rule in members {
                m.entry(*rule).or_default().push(*id);
            }
        }
        m
    };
    let (src_by_rule, dst_by_rule) = (by_rule(&src_class_ids), by_rule(&dst_class_ids));
    let mut pairs: FastMap<(u32, u32), Vec<u32>> = FastMap::default();
    for rule in &all_rules {
        let (Some(srcs), Some(dsts)) = (src_by_rule.get(&rule.id), dst_by_rule.get(&rule.id))
        else {
            continue;
        };
        for s in srcs {
            for d in dsts {
                pairs.entry((*s, *d)).or_default().push(rule.id);
            }
        }
    }
    tables.policy.reserve(pairs.len());
    delta.pair_entries.reserve(pairs.len());
    for ((s, d), ids) in pairs {
        let pair_rules: Vec<&Rule> = ids.iter().map(|id| rule_by_id[id]).collect();
        let mut entries = Vec::new();
        for (block, value) in resolve(&pair_rules) {
            let prefix = block.prefix(s, d);
            tables.policy.insert(prefix, value);
            entries.push(prefix);
        }
        delta.pair_entries.insert((s, d), entries);
    }
    delta.src = ClassSide::new(&src_class_ids, src_by_rule);
    delta.dst = ClassSide::new(&dst_class_ids, dst_by_rule);
    delta.rule_ids = names
        .rules
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
        .map(|(id, n)| (n.clone(), id as u32))
        .collect();
    delta.rules = rules
        .into_iter()
        .map(|(_, r)| (r.id, r))
        .chain([(dns_rule.id, dns_rule)])
        .collect();

    Compiled {
        tables,
        names,
        domains,
        domain_dests,
        peer_classes: src_class_ids.ids.len(),
        dest_classes: dst_class_ids.ids.len(),
        src_class_ids,
        dst_class_ids,
        delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_aligned_blocks() {
        assert_eq!(port_blocks(443, 443), vec![(443, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8000, 8003), vec![(8000, 14)]);
        // 1-3: 1/16, 2/15.
        assert_eq!(port_blocks(1, 3), vec![(1, 16), (2, 15)]);
        let blocks = port_blocks(1000, 2000);
        let covered: u32 = blocks.iter().map(|(_, bits)| 1u32 << (16 - bits)).sum();
        assert_eq!(covered, 1001);
        assert!(blocks.len() <= 30, "{} blocks", blocks.len());
    }

    #[test]
    fn drop_beats_accept_whatever_the_specificity() {
        let accept = Rule {
            id: 1,
            action: Action::Accept,
            blocks: blocks_of(Protocol::Tcp, &[(443, 443)]),
        };
        let drop_all_tcp = Rule {
            id: 2,
            action: Action::Drop,
            blocks: blocks_of(Protocol::Tcp, &[]),
        };
        let resolved = resolve(&[&accept, &drop_all_tcp]);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].1.action, ACTION_DROP);

        // An accept wider than the drop stays; LPM picks the drop where it applies.
        let accept_all = Rule {
            id: 3,
            action: Action::Accept,
            blocks: blocks_of(Protocol::All, &[]),
        };
        let drop_ssh = Rule {
            id: 4,
            action: Action::Drop,
            blocks: blocks_of(Protocol::Tcp, &[(22, 22)]),
        };
        let resolved = resolve(&[&accept_all, &drop_ssh]);
        assert_eq!(resolved.len(), 2);
    }
}

#[cfg(test)]
mod dns_access_tests {
    use super::*;
    use crate::check;

    /// A routing peer with one peer, alice (100.64.0.2), in `group`.
    pub(super) fn gateway_with_alice(group: &str) -> String {
        format!(
            r#"
[routing_peer]
name = "gw"
overlay_interface = "wg0"
overlay_addresses = ["100.64.0.1/10"]
private_key_file = "/dev/null"
lan_interfaces = ["lan0"]

[[peers]]
name = "alice"
public_key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
addresses = ["100.64.0.2"]
groups = ["{group}"]
"#
        )
    }

    #[test]
    fn every_peer_may_query_the_dns_forwarder_on_the_overlay_address_only() {
        let text = gateway_with_alice("Development");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .config;
        let lan: IpAddr = "198.51.100.1".parse().unwrap();
        let overlay: IpAddr = "100.64.0.1".parse().unwrap();
        let compiled = compile(
            &config,
            &[overlay, lan],
            &HashMap::new(),
            Previous::default(),
        );
        let alice: IpAddr = "100.64.0.2".parse().unwrap();
        assert!(check::check(&compiled, alice, overlay, IPPROTO_UDP, 53).allowed);
        assert!(check::check(&compiled, alice, overlay, IPPROTO_TCP, 53).allowed);
        assert!(!check::check(&compiled, alice, overlay, IPPROTO_UDP, 54).allowed);
        assert!(!check::check(&compiled, alice, lan, IPPROTO_UDP, 53).allowed);
    }
}

#[cfg(test)]
mod stable_id_tests {
    use super::*;
    use crate::model::TablesDiff;

    fn config(rules: &[u32]) -> Config {
        let mut text = super::dns_access_tests::gateway_with_alice("Dev");
        text += "\n[[networks]]\nname = \"lan\"\n";
        for i in rules {
            text += &format!(
                "[[networks.resources]]\nname = \"r{i}\"\naddress = \"198.51.100.{i}/32\"\ngroups = [\"g{i}\"]\n"
            );
        }
        for i in rules {
            text += &format!(
                "[[policies]]\nname = \"p{i}\"\nsources = [\"Dev\"]\ndestinations = [\"g{i}\"]\nprotocol = \"tcp\"\nports = [{}]\n",
                1000 + i
            );
        }
        crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .config
    }

    fn ids(names: &[String]) -> HashMap<String, usize> {
        names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| (n.clone(), i))
            .collect()
    }

    #[test]
    fn removing_a_rule_in_the_middle_renumbers_nothing_else() {
        let own: [IpAddr; 1] = ["100.64.0.1".parse().unwrap()];
        let all: Vec<u32> = (1..=50).collect();
        let before = compile(&config(&all), &own, &HashMap::new(), Previous::default());
        let without_25: Vec<u32> = all.iter().copied().filter(|i| *i != 25).collect();
        let after = compile(
            &config(&without_25),
            &own,
            &HashMap::new(),
            before.as_previous(),
        );
        let (old_rules, new_rules) = (ids(&before.names.rules), ids(&after.names.rules));
        for (name, id) in &new_rules {
            assert_eq!(old_rules[name], *id, "{name} was renumbered");
        }
        assert!(!new_rules.contains_key("p25"));
        let (old_res, new_res) = (ids(&before.names.resources), ids(&after.names.resources));
        for (name, id) in &new_res {
            assert_eq!(old_res[name], *id, "{name} was renumbered");
        }
        // Only the removed rule's entries and its resource's prefix change.
        let diff = TablesDiff::between(&before.tables, &after.tables).stats();
        assert!(
            diff.written + diff.removed <= 4,
            "a one-rule removal rewrote {diff:?}"
        );
        // A rule added later gets a fresh id, not the removed rule's.
        let mut with_51 = without_25.clone();
        with_51.push(51);
        let again = compile(
            &config(&with_51),
            &own,
            &HashMap::new(),
            after.as_previous(),
        );
        let again_ids = ids(&again.names.rules);
        assert_ne!(again_ids["p51"], old_rules["p25"]);
        assert_eq!(again_ids["p26"], old_rules["p26"]);
        // Adding a rule for the same group keeps the group's class too.
        let diff = TablesDiff::between(&after.tables, &again.tables).stats();
        assert!(
            diff.written + diff.removed <= 4,
            "a one-rule addition rewrote {diff:?}"
        );
        assert_eq!(
            after.tables.peer("100.64.0.2".parse().unwrap()),
            again.tables.peer("100.64.0.2".parse().unwrap())
        );
    }

    #[test]
    fn freed_ids_are_reused_only_past_the_limit() {
        let previous: Vec<String> = ["", "a", "", "c"].iter().map(|s| s.to_string()).collect();
        let (names, ids) = stable_ids(Some(&previous), &["c", "d"], 10);
        assert_eq!(ids["c"], 3);
        assert_eq!(ids["d"], 4, "a fresh id while fresh ids remain");
        assert_eq!(names[1], "", "a's id stays free");
        let (_, ids) = stable_ids(Some(&previous), &["c", "d", "e"], 4);
        assert_eq!(
            (ids["d"], ids["e"]),
            (1, 2),
            "freed ids, lowest first, at the limit"
        );
    }
}
