//! Classes: peers that are sources of the same rules share a source class;
//! destinations of the same rules share a destination class. Class ids
//! stay where they were across compiles, so a small change is a small diff.

use routing_peer_common::PeerValue;

use super::{blocks::Rule, ids::Ids, DeltaState};
use crate::{
    config::{Config, Policy, PolicyKind},
    model::{addr_key, FastMap},
};

/// One side's classes, from class id.
#[derive(Clone, Debug, Default)]
pub(super) struct ClassSide {
    pub(super) sets: FastMap<u32, RuleSet>,
    pub(super) counts: FastMap<u32, u32>,
    pub(super) by_rule: FastMap<u32, Vec<u32>>,
}

impl ClassSide {
    pub(super) fn new(ids: &ClassIds, by_rule: FastMap<u32, Vec<u32>>) -> Self {
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
pub(super) type RuleSet = Vec<u32>;

pub(super) fn rule_set(mut rules: Vec<u32>) -> RuleSet {
    rules.sort_unstable();
    rules.dedup();
    rules
}

/// Class ids by rule set, as one compile hands them to the next.
#[derive(Clone, Debug, Default)]
pub struct ClassIds {
    pub(super) ids: FastMap<RuleSet, u32>,
    /// The class of each member (peer id; resource id or a self key).
    pub(super) by_member: FastMap<u32, u32>,
    /// The highest id handed out so far.
    pub(super) last: u32,
}

/// Member keys of the routing peer's own addresses among destinations.
pub(super) const SELF_OVERLAY_MEMBER: u32 = u32::MAX;
pub(super) const SELF_LAN_MEMBER: u32 = u32::MAX - 1;

/// Collects every member's rule set, then hands out class ids in one go,
/// so that ids stay where they were: a set the previous compile knew keeps
/// its id; a changed set keeps its members' previous id if no unchanged
/// set holds it (one rule more for a group moves none of its peers and
/// rewrites only that rule's entries); anything else gets a new id.
pub(super) struct ClassBuilder<'p> {
    previous: Option<&'p ClassIds>,
    sets: Vec<RuleSet>,
    slot_of: FastMap<RuleSet, usize>,
    members: Vec<(u32, usize)>,
}

impl<'p> ClassBuilder<'p> {
    pub(super) fn after(previous: Option<&'p ClassIds>) -> Self {
        Self {
            previous,
            sets: Vec::new(),
            slot_of: FastMap::default(),
            members: Vec::new(),
        }
    }

    /// Files `member` under `rules`; returns the set's slot for `finish`.
    pub(super) fn add(&mut self, member: u32, rules: RuleSet) -> usize {
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

    pub(super) fn add_to_slot(&mut self, member: u32, slot: usize) {
        self.members.push((member, slot));
    }

    /// The class id of every slot, and the ids to hand to the next compile.
    pub(super) fn finish(self) -> (Vec<u32>, ClassIds) {
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
/// Rules by source group, destination group and destination resource, so
/// that nothing in the compiler is quadratic.
#[derive(Default)]
pub(super) struct RuleIndex<'c> {
    by_source: FastMap<&'c str, Vec<u32>>,
    by_dest_group: FastMap<&'c str, Vec<u32>>,
    by_dest_resource: FastMap<&'c str, Vec<u32>>,
}

impl<'c> RuleIndex<'c> {
    pub(super) fn new(rules: &[(&'c Policy, Rule)]) -> Self {
        let mut index = Self::default();
        for (p, r) in rules {
            for g in &p.sources {
                index.by_source.entry(g).or_default().push(r.id);
            }
            if p.kind == PolicyKind::Resource {
                for g in &p.destinations {
                    index.by_dest_group.entry(g).or_default().push(r.id);
                }
                for name in &p.destination_resources {
                    index.by_dest_resource.entry(name).or_default().push(r.id);
                }
            }
        }
        index
    }

    /// The rules whose sources name one of `groups`.
    pub(super) fn granted_from<'a>(&self, groups: impl Iterator<Item = &'a str>) -> RuleSet {
        collect(&self.by_source, groups)
    }

    /// The rules that name the resource `name` or one of its `groups`.
    pub(super) fn granted_to<'a>(
        &self,
        name: &str,
        groups: impl Iterator<Item = &'a str>,
    ) -> RuleSet {
        let mut rules = collect(&self.by_dest_group, groups);
        if let Some(named) = self.by_dest_resource.get(name) {
            rules.extend(named);
            rules = rule_set(rules);
        }
        rules
    }
}

fn collect<'a>(index: &FastMap<&str, Vec<u32>>, keys: impl Iterator<Item = &'a str>) -> RuleSet {
    rule_set(
        keys.filter_map(|k| index.get(k))
            .flatten()
            .copied()
            .collect(),
    )
}

/// Source classes: peers with the same groups share a class. Each group
/// set is resolved once (10k peers in one group must not mean 10k copies
/// of its rule set). Returns the peer map and the class ids.
pub(super) fn sources(
    config: &Config,
    ids: &Ids<'_>,
    index: &RuleIndex<'_>,
    dns_rule: u32,
    previous: Option<&ClassIds>,
    delta: &mut DeltaState,
) -> (FastMap<routing_peer_common::AddrKey, PeerValue>, ClassIds) {
    let mut src_classes = ClassBuilder::after(previous);
    let mut slot_of_groups: FastMap<Vec<&str>, usize> = FastMap::default();
    let mut peer_slots = Vec::with_capacity(config.peers.len());
    for peer in &config.peers {
        let peer_id = ids.peers[peer.name.as_str()];
        let mut groups: Vec<&str> = peer.groups.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        let slot = match slot_of_groups.get(&groups) {
            Some(slot) => {
                src_classes.add_to_slot(peer_id, *slot);
                *slot
            }
            None => {
                let mut member = index.granted_from(groups.iter().copied());
                member.push(dns_rule);
                let slot = src_classes.add(peer_id, rule_set(member));
                slot_of_groups.insert(groups, slot);
                slot
            }
        };
        peer_slots.push((peer, peer_id, slot));
    }
    let (src_ids, src_class_ids) = src_classes.finish();
    let mut peers = FastMap::default();
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
    (peers, src_class_ids)
}

/// The peer (input-chain) rules whose destinations name one of the routing
/// peer's own groups: the only rules that reach its addresses.
pub(super) fn self_rules(config: &Config, rules: &[(&Policy, Rule)]) -> RuleSet {
    rule_set(
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
    )
}
