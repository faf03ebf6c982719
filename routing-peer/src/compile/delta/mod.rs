//! A change of policies applied to a compiled configuration in place.
//!
//! A full compile walks every peer, resource and rule (about 130 ms at 100k
//! rules and resources). When only policies changed, the work can follow
//! the change instead: a rule that comes or goes moves the peers of its
//! source groups and the resources of its destinations into classes with
//! one rule more or less, and only the class pairs that rule (or a class
//! that changed) connects need their entries resolved again. A class whose
//! members all move keeps its id with the new set, so the usual change
//! rewrites only that rule's entries.
//!
//! Anything else (peers, networks, the routing peer itself, the order of
//! policies, nested or domain resources among the members, many changes at
//! once) returns why, and the caller compiles in full. The result is the
//! same as a full compile's up to the numbering of new classes; the tests
//! below check that on random changes.

use super::{
    blocks::{blocks_of, resolve, Rule},
    classes::{ClassIds, ClassSide, RuleSet, SELF_LAN_MEMBER, SELF_OVERLAY_MEMBER},
    Compiled, FastMap,
};
use crate::{
    config::{Config, Policy, PolicyKind},
    model::{TableChanges, TablesDiff},
};

/// Above this many changed policies a full compile is as quick.
const MAX_CHANGES: usize = 64;

/// Which side of the policy key a class is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// One policy's effect on membership: its id and who it applies to.
struct Membership {
    id: u32,
    peers: Vec<u32>,
    dests: Vec<u32>,
}

/// Why a change takes the full compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeedsFullCompile {
    #[error("more than policies changed")]
    NotOnlyPolicies,
    #[error("policies were reordered")]
    Reordered,
    #[error("more than {MAX_CHANGES} policies changed")]
    TooManyChanges,
    #[error("a changed policy reaches a nested or domain resource")]
    NestedOrDomain,
    /// The compiled tables disagree with themselves (a bug): the full
    /// compile rebuilds them from the configuration.
    #[error("the compiled state is inconsistent ({0})")]
    Inconsistent(&'static str),
}

/// Applies `new`'s policies to `compiled` (built from `old`) and returns
/// the map changes; when a full compile is needed, says why and touches
/// nothing.
pub fn apply_policy_change(
    compiled: &mut Compiled,
    old: &Config,
    new: &Config,
) -> Result<TablesDiff, NeedsFullCompile> {
    use NeedsFullCompile::*;
    if old.routing_peer != new.routing_peer
        || old.peers != new.peers
        || old.networks != new.networks
        || old.dns != new.dns
        || compiled.delta.rules.is_empty()
    {
        return Err(NotOnlyPolicies);
    }
    let old_index: FastMap<&str, usize> = old
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let new_index: FastMap<&str, usize> = new
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    // Policies that stay must keep their order: it decides which rule an
    // entry is attributed to.
    let mut last_old = None;
    let mut changed: Vec<(Option<&Policy>, Option<&Policy>)> = Vec::new();
    for p in &new.policies {
        match old_index.get(p.name.as_str()) {
            Some(&i) => {
                if last_old.is_some_and(|l| i < l) {
                    return Err(Reordered);
                }
                last_old = Some(i);
                if old.policies[i] != *p {
                    changed.push((Some(&old.policies[i]), Some(p)));
                }
            }
            None => changed.push((None, Some(p))),
        }
        if changed.len() > MAX_CHANGES {
            return Err(TooManyChanges);
        }
    }
    for p in &old.policies {
        if !new_index.contains_key(p.name.as_str()) {
            changed.push((Some(p), None));
        }
    }
    if changed.len() > MAX_CHANGES {
        return Err(TooManyChanges);
    }

    // Ids for new names (as the full compile's stable ids would give them,
    // in configuration order), before anything else is touched.
    let mut next_id = compiled.names.rules.len() as u32;
    let mut fresh_ids: FastMap<&str, u32> = FastMap::default();
    for p in &new.policies {
        if !compiled.delta.rule_ids.contains_key(&p.name) {
            fresh_ids.insert(p.name.as_str(), next_id);
            next_id += 1;
        }
    }
    let id_of = |name: &str| -> u32 {
        fresh_ids
            .get(name)
            .copied()
            .unwrap_or_else(|| compiled.delta.rule_ids[name])
    };

    // Who each old and new version applies to; a nested or domain resource
    // among them needs the full pass.
    let retract: Vec<Membership> = changed
        .iter()
        .filter_map(|(old_p, _)| *old_p)
        .filter(|p| p.applies())
        .map(|p| membership(compiled, old, p, id_of(&p.name)))
        .collect();
    let assert: Vec<(Membership, &Policy)> = changed
        .iter()
        .filter_map(|(_, new_p)| *new_p)
        .filter(|p| p.applies())
        .map(|p| (membership(compiled, new, p, id_of(&p.name)), p))
        .collect();
    let nested = &compiled.delta.nested;
    if retract
        .iter()
        .chain(assert.iter().map(|(m, _)| m))
        .any(|m| m.dests.iter().any(|d| nested.contains_key(d)))
    {
        return Err(NestedOrDomain);
    }

    // From here on `compiled` changes.
    for (name, id) in &fresh_ids {
        let slot = *id as usize;
        if compiled.names.rules.len() <= slot {
            compiled.names.rules.resize(slot + 1, String::new());
        }
        compiled.names.rules[slot] = (*name).to_string();
        compiled.delta.rule_ids.insert((*name).to_string(), *id);
    }
    for (old_p, new_p) in &changed {
        if let (Some(p), None) = (old_p, new_p) {
            let id = compiled
                .delta
                .rule_ids
                .remove(&p.name)
                .ok_or(Inconsistent("a removed rule had no id"))?;
            if let Some(name) = compiled.names.rules.get_mut(id as usize) {
                name.clear();
            }
        }
    }
    let mut update = Update {
        compiled,
        changes: TableChanges::default(),
        dirty: FastMap::default(),
    };
    for m in &retract {
        update.move_members(Side::Src, m.id, &m.peers, false)?;
        update.move_members(Side::Dst, m.id, &m.dests, false)?;
        update.compiled.delta.rules.remove(&m.id);
    }
    for (m, p) in &assert {
        let rule = Rule {
            id: m.id,
            action: p.action,
            blocks: blocks_of(p.protocol, &p.port_ranges()),
        };
        update.compiled.delta.rules.insert(m.id, rule);
        update.move_members(Side::Src, m.id, &m.peers, true)?;
        update.move_members(Side::Dst, m.id, &m.dests, true)?;
        // A rule whose members stayed but whose ports or action changed.
        update.dirty_pairs_of_rule(m.id);
    }
    for m in &retract {
        update.dirty_pairs_of_rule(m.id);
    }
    update.resolve_dirty(&new_index);
    let Update {
        compiled, changes, ..
    } = update;
    compiled.peer_classes = compiled.src_class_ids.ids.len();
    compiled.dest_classes = compiled.dst_class_ids.ids.len();
    Ok(changes.into())
}

/// The peers and destination members `policy` applies to, as the full
/// compile decides it.
fn membership(compiled: &Compiled, config: &Config, policy: &Policy, id: u32) -> Membership {
    let delta = &compiled.delta;
    let mut peers: Vec<u32> = policy
        .sources
        .iter()
        .filter_map(|g| delta.group_peers.get(g))
        .flatten()
        .copied()
        .collect();
    let mut dests: Vec<u32> = Vec::new();
    match policy.kind {
        PolicyKind::Resource => {
            dests.extend(
                policy
                    .destinations
                    .iter()
                    .filter_map(|g| delta.group_resources.get(g))
                    .flatten(),
            );
            dests.extend(
                policy
                    .destination_resources
                    .iter()
                    .filter_map(|n| delta.resource_ids.get(n)),
            );
        }
        PolicyKind::Peer => {
            let to_us = policy
                .destinations
                .iter()
                .any(|g| config.routing_peer.groups.contains(g));
            if to_us {
                dests.extend([SELF_OVERLAY_MEMBER, SELF_LAN_MEMBER]);
            }
        }
    }
    for list in [&mut peers, &mut dests] {
        list.sort_unstable();
        list.dedup();
    }
    Membership { id, peers, dests }
}

struct Update<'c> {
    compiled: &'c mut Compiled,
    changes: TableChanges,
    /// Class pairs whose entries must be resolved again.
    dirty: FastMap<(u32, u32), ()>,
}

impl Update<'_> {
    fn side(&mut self, side: Side) -> (&mut ClassIds, &mut ClassSide, &ClassSide) {
        let c = &mut *self.compiled;
        match side {
            Side::Src => (&mut c.src_class_ids, &mut c.delta.src, &c.delta.dst),
            Side::Dst => (&mut c.dst_class_ids, &mut c.delta.dst, &c.delta.src),
        }
    }

    fn mark(&mut self, side: Side, class: u32, other: u32) {
        let pair = match side {
            Side::Src => (class, other),
            Side::Dst => (other, class),
        };
        self.dirty.insert(pair, ());
    }

    /// Marks every pair `class` forms through the rules of its set.
    fn mark_all_pairs(&mut self, side: Side, class: u32) {
        let (_, this, other) = self.side(side);
        let others: Vec<u32> = this.sets[&class]
            .iter()
            .filter_map(|rule| other.by_rule.get(rule))
            .flatten()
            .copied()
            .collect();
        for o in others {
            self.mark(side, class, o);
        }
    }

    /// Marks the pairs `class` forms through `rule`.
    fn mark_rule_pairs(&mut self, side: Side, class: u32, rule: u32) {
        let (_, _, other) = self.side(side);
        let others: Vec<u32> = other.by_rule.get(&rule).cloned().unwrap_or_default();
        for o in others {
            self.mark(side, class, o);
        }
    }

    fn dirty_pairs_of_rule(&mut self, rule: u32) {
        let src = self.compiled.delta.src.by_rule.get(&rule).cloned();
        let dst = self.compiled.delta.dst.by_rule.get(&rule).cloned();
        for s in src.iter().flatten() {
            for d in dst.iter().flatten() {
                self.dirty.insert((*s, *d), ());
            }
        }
    }

    /// Gives `members` `rule` (`add`) or takes it away, moving them between
    /// classes and recording the changed peer and destination entries.
    fn move_members(
        &mut self,
        side: Side,
        rule: u32,
        members: &[u32],
        add: bool,
    ) -> Result<(), NeedsFullCompile> {
        let mut by_class: FastMap<u32, Vec<u32>> = FastMap::default();
        {
            let (ids, this, _) = self.side(side);
            for m in members {
                let Some(class) = ids.by_member.get(m) else {
                    continue;
                };
                if this.sets[class].binary_search(&rule).is_ok() != add {
                    by_class.entry(*class).or_default().push(*m);
                }
            }
        }
        let mut classes: Vec<(u32, Vec<u32>)> = by_class.into_iter().collect();
        classes.sort_unstable_by_key(|(c, _)| *c);
        for (class, moving) in classes {
            let (ids, this, _) = self.side(side);
            let mut set: RuleSet = this.sets[&class].clone();
            match set.binary_search(&rule) {
                Ok(at) if !add => {
                    set.remove(at);
                }
                Err(at) if add => set.insert(at, rule),
                _ => {
                    return Err(NeedsFullCompile::Inconsistent(
                        "a class already had its rule",
                    ))
                }
            }
            if let Some(&existing) = ids.ids.get(&set) {
                self.relocate(side, class, existing, &moving)?;
                continue;
            }
            if moving.len() as u32 == this.counts[&class] {
                // Every member moves: the class keeps its id, with the new set.
                let slot = this
                    .sets
                    .get_mut(&class)
                    .ok_or(NeedsFullCompile::Inconsistent("a class without a rule set"))?;
                let old_set = std::mem::replace(slot, set.clone());
                ids.ids.remove(&old_set);
                ids.ids.insert(set, class);
                let users = this.by_rule.entry(rule).or_default();
                if add {
                    users.push(class);
                } else {
                    users.retain(|c| *c != class);
                }
                self.mark_rule_pairs(side, class, rule);
                continue;
            }
            ids.last += 1;
            let fresh = ids.last;
            ids.ids.insert(set.clone(), fresh);
            for r in &set {
                this.by_rule.entry(*r).or_default().push(fresh);
            }
            this.sets.insert(fresh, set);
            this.counts.insert(fresh, 0);
            self.relocate(side, class, fresh, &moving)?;
            self.mark_all_pairs(side, fresh);
        }
        Ok(())
    }

    /// Moves `members` from class `from` to `to`; a class left empty goes,
    /// with its entries.
    fn relocate(
        &mut self,
        side: Side,
        from: u32,
        to: u32,
        members: &[u32],
    ) -> Result<(), NeedsFullCompile> {
        const UNCOUNTED: NeedsFullCompile =
            NeedsFullCompile::Inconsistent("a class without a count");
        {
            let (ids, this, _) = self.side(side);
            for m in members {
                ids.by_member.insert(*m, to);
            }
            *this.counts.get_mut(&from).ok_or(UNCOUNTED)? -= members.len() as u32;
            *this.counts.get_mut(&to).ok_or(UNCOUNTED)? += members.len() as u32;
        }
        for m in members {
            self.rewrite_member(side, *m, to);
        }
        let (_, this, _) = self.side(side);
        if this.counts[&from] == 0 {
            self.mark_all_pairs(side, from);
            let (ids, this, _) = self.side(side);
            this.counts.remove(&from);
            let set = this
                .sets
                .remove(&from)
                .ok_or(NeedsFullCompile::Inconsistent("a class without a rule set"))?;
            for r in &set {
                if let Some(users) = this.by_rule.get_mut(r) {
                    users.retain(|c| *c != from);
                }
            }
            ids.ids.remove(&set);
        }
        Ok(())
    }

    /// Points `member`'s map entries at `class`.
    fn rewrite_member(&mut self, side: Side, member: u32, class: u32) {
        let c = &mut *self.compiled;
        match side {
            Side::Src => {
                for key in c.delta.peer_keys.get(&member).into_iter().flatten() {
                    if let Some(v) = c.tables.peers.get_mut(key) {
                        v.src_class = class;
                        self.changes.peers.insert(*key, Some(*v));
                    }
                }
            }
            Side::Dst => {
                for prefix in c.delta.member_prefixes.get(&member).into_iter().flatten() {
                    if let Some(v) = c.tables.dests.get_mut(prefix) {
                        v.dst_class = class;
                        self.changes.dests.insert(*prefix, Some(*v));
                    }
                }
            }
        }
    }

    /// Resolves every dirty pair again from its classes' current sets and
    /// records the entries that differ. Rules go in the order of
    /// `position_by_name` (the configuration's, with the built-in DNS rule
    /// last): it decides which rule an entry names.
    fn resolve_dirty(&mut self, position_by_name: &FastMap<&str, usize>) {
        let dirty: Vec<(u32, u32)> = self.dirty.drain().map(|(p, _)| p).collect();
        let c = &mut *self.compiled;
        let names = &c.names.rules;
        let position = |id: u32| {
            position_by_name
                .get(names[id as usize].as_str())
                .copied()
                .unwrap_or(usize::MAX)
        };
        for (s, d) in dirty {
            let mut rules: Vec<&Rule> = match (c.delta.src.sets.get(&s), c.delta.dst.sets.get(&d)) {
                (Some(a), Some(b)) => intersect(a, b)
                    .filter_map(|id| c.delta.rules.get(&id))
                    .collect(),
                _ => Vec::new(),
            };
            rules.sort_by_key(|r| position(r.id));
            let fresh: Vec<_> = resolve(&rules)
                .into_iter()
                .map(|(block, value)| (block.prefix(s, d), value))
                .collect();
            let stale = c.delta.pair_entries.remove(&(s, d)).unwrap_or_default();
            for prefix in stale {
                if !fresh.iter().any(|(p, _)| *p == prefix) {
                    c.tables.policy.remove(&prefix);
                    self.changes.policy.insert(prefix, None);
                }
            }
            for (prefix, value) in &fresh {
                if c.tables.policy.get(prefix) != Some(value) {
                    c.tables.policy.insert(*prefix, *value);
                    self.changes.policy.insert(*prefix, Some(*value));
                }
            }
            if !fresh.is_empty() {
                c.delta
                    .pair_entries
                    .insert((s, d), fresh.into_iter().map(|(p, _)| p).collect());
            }
        }
    }
}

/// The ids in both sorted sets: walks the smaller, searches the larger.
fn intersect<'a>(a: &'a RuleSet, b: &'a RuleSet) -> impl Iterator<Item = u32> + 'a {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .copied()
        .filter(move |id| large.binary_search(id).is_ok())
}

#[cfg(test)]
mod tests;
