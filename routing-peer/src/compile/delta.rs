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
    blocks_of, resolve, ClassIds, ClassSide, Compiled, FastMap, Rule, RuleSet, SELF_LAN_MEMBER,
    SELF_OVERLAY_MEMBER,
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
        .filter(|p| p.enabled)
        .map(|p| membership(compiled, old, p, id_of(&p.name)))
        .collect();
    let assert: Vec<(Membership, &Policy)> = changed
        .iter()
        .filter_map(|(_, new_p)| *new_p)
        .filter(|p| p.enabled)
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
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::{
        compile::{compile, Previous},
        config::{parse, Action, Protocol},
        model::Tables,
    };

    /// xorshift64: reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const PEER_GROUPS: usize = 5;
    const RESOURCE_GROUPS: usize = 6;
    const RESOURCES: usize = 20;

    fn random_policy(rng: &mut Rng, name: &str) -> Policy {
        let pick = |rng: &mut Rng, prefix: &str, n: usize| -> Vec<String> {
            let mut v: Vec<String> = (0..1 + rng.below(2))
                .map(|_| format!("{prefix}{}", rng.below(n)))
                .collect();
            v.dedup();
            v
        };
        let peer_kind = rng.below(8) == 0;
        let (destinations, destination_resources) = if peer_kind {
            (vec!["Routing Peers".to_string()], Vec::new())
        } else if rng.below(4) == 0 {
            (Vec::new(), vec![format!("r{}", rng.below(RESOURCES))])
        } else {
            (pick(rng, "h", RESOURCE_GROUPS), Vec::new())
        };
        let protocol = [Protocol::All, Protocol::Tcp, Protocol::Udp, Protocol::Icmp][rng.below(4)];
        let ports = if matches!(protocol, Protocol::Tcp | Protocol::Udp) {
            (0..rng.below(3))
                .map(|_| 20 + rng.below(6) as u32)
                .collect()
        } else {
            Vec::new()
        };
        Policy {
            name: name.to_string(),
            enabled: rng.below(10) != 0,
            kind: if peer_kind {
                PolicyKind::Peer
            } else {
                PolicyKind::Resource
            },
            sources: pick(rng, "g", PEER_GROUPS),
            destinations,
            destination_resources,
            protocol,
            ports,
            port_ranges: Vec::new(),
            action: if rng.below(5) == 0 {
                Action::Drop
            } else {
                Action::Accept
            },
        }
    }

    /// Peers and resources cover every group; `nested` adds a /24 around
    /// some of the /32s, which the delta must hand to the full compile.
    fn random_config(rng: &mut Rng, nested: bool) -> Config {
        let mut text = String::from(
            "[routing_peer]\nname = \"gw\"\noverlay_interface = \"wg0\"\n\
             overlay_addresses = [\"100.64.0.1/10\"]\nprivate_key_file = \"/dev/null\"\n\
             lan_interfaces = [\"lan0\"]\ngroups = [\"Routing Peers\"]\n",
        );
        for i in 0..12 {
            let mut key = [0u8; 32];
            key[0] = i as u8 + 1;
            let extra = format!("g{}", rng.below(PEER_GROUPS));
            text += &format!(
                "[[peers]]\nname = \"p{i}\"\npublic_key = \"{}\"\naddresses = [\"100.64.1.{i}\"]\ngroups = [\"g{}\", \"{extra}\"]\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key),
                i % PEER_GROUPS,
            );
        }
        text += "[[networks]]\nname = \"lan\"\n";
        for i in 0..RESOURCES {
            let extra = format!("h{}", rng.below(RESOURCE_GROUPS));
            text += &format!(
                "[[networks.resources]]\nname = \"r{i}\"\naddress = \"198.51.{}.{i}/32\"\ngroups = [\"h{}\", \"{extra}\"]\n",
                if nested && i < 4 { 100 } else { 101 },
                i % RESOURCE_GROUPS,
            );
        }
        if nested {
            text += "[[networks.resources]]\nname = \"net\"\naddress = \"198.51.100.0/24\"\ngroups = [\"h0\"]\n";
        }
        let mut config = parse(std::path::Path::new("t.toml"), &text)
            .expect("valid")
            .config;
        config.policies = (0..15)
            .map(|i| random_policy(rng, &format!("rule{i}")))
            .collect();
        config
    }

    fn mutate(rng: &mut Rng, config: &Config, serial: &mut usize) -> Config {
        let mut next = config.clone();
        for _ in 0..1 + rng.below(2) {
            let n = next.policies.len();
            match rng.below(6) {
                0 if n > 1 => {
                    next.policies.remove(rng.below(n));
                }
                1 => {
                    *serial += 1;
                    let p = random_policy(rng, &format!("added{serial}"));
                    next.policies.insert(rng.below(n + 1), p);
                }
                2 if n > 0 => {
                    let i = rng.below(n);
                    next.policies[i].ports = vec![20 + rng.below(6) as u32];
                    next.policies[i].protocol = Protocol::Tcp;
                }
                3 if n > 0 => {
                    let i = rng.below(n);
                    next.policies[i].action = match next.policies[i].action {
                        Action::Accept => Action::Drop,
                        Action::Drop => Action::Accept,
                    };
                }
                4 if n > 0 => {
                    let i = rng.below(n);
                    let name = next.policies[i].name.clone();
                    next.policies[i] = random_policy(rng, &name);
                }
                _ if n > 0 => {
                    let i = rng.below(n);
                    next.policies[i].enabled = !next.policies[i].enabled;
                }
                _ => {}
            }
        }
        next
    }

    type Canonical = (
        BTreeMap<String, (u32, RuleSet)>,
        BTreeMap<String, (u32, u32, RuleSet)>,
        BTreeMap<(RuleSet, RuleSet, u8, [u8; 2], u32), (u32, u32)>,
    );

    /// The tables with class ids replaced by their rule sets: two compiles
    /// agree when these are equal, whatever they numbered new classes.
    fn canonical(c: &Compiled) -> Canonical {
        let sets = |ids: &ClassIds| -> HashMap<u32, RuleSet> {
            ids.ids.iter().map(|(s, id)| (*id, s.clone())).collect()
        };
        let (src, dst) = (sets(&c.src_class_ids), sets(&c.dst_class_ids));
        let peers = c
            .tables
            .peers
            .iter()
            .map(|(k, v)| (format!("{k:?}"), (v.peer_id, src[&v.src_class].clone())))
            .collect();
        let dests = c
            .tables
            .dests
            .iter()
            .map(|(k, v)| {
                (
                    format!("{k:?}"),
                    (v.resource_id, v.flags, dst[&v.dst_class].clone()),
                )
            })
            .collect();
        let policy = c
            .tables
            .policy
            .iter()
            .map(|(k, v)| {
                let s = u32::from_be_bytes(k.key.src_class);
                let d = u32::from_be_bytes(k.key.dst_class);
                (
                    (
                        src[&s].clone(),
                        dst[&d].clone(),
                        k.key.proto,
                        k.key.port,
                        k.prefix_len,
                    ),
                    (v.action, v.rule_id),
                )
            })
            .collect();
        (peers, dests, policy)
    }

    /// Keys whose entries differ (in place, full), the first few per map.
    fn differences(a: &Canonical, b: &Canonical) -> Vec<String> {
        fn diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
            what: &str,
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> Vec<String> {
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .take(4)
                .map(|k| format!("{what} {k:?}: {:?} vs {:?}", a.get(k), b.get(k)))
                .collect()
        }
        let mut out = diff("peer", &a.0, &b.0);
        out.extend(diff("dest", &a.1, &b.1));
        out.extend(diff("policy", &a.2, &b.2));
        out
    }

    #[test]
    fn random_policy_changes_match_a_full_compile() {
        let own = [
            "100.64.0.1".parse().unwrap(),
            "198.51.101.200".parse().unwrap(),
        ];
        let none = HashMap::new();
        let (mut applied, mut declined) = (0, 0);
        for seed in 1..=120u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let nested = seed % 10 == 0;
            let mut config = random_config(&mut rng, nested);
            let mut current = compile(&config, &own, &none, Previous::default());
            let mut serial = 0;
            for step in 0..12 {
                let next = mutate(&mut rng, &config, &mut serial);
                let full = compile(&next, &own, &none, current.as_previous());
                let before: Tables = current.tables.clone();
                match apply_policy_change(&mut current, &config, &next) {
                    Ok(diff) => {
                        applied += 1;
                        let differences = differences(&canonical(&current), &canonical(&full));
                        assert!(
                            differences.is_empty(),
                            "seed {seed} step {step}: in place vs full compile: {differences:#?}"
                        );
                        assert_eq!(current.names, full.names, "seed {seed} step {step}");
                        // The diff carries exactly what changed.
                        let mut patched = before;
                        diff.apply_to(&mut patched);
                        assert_eq!(patched, current.tables, "seed {seed} step {step}: diff");
                    }
                    Err(_) => {
                        declined += 1;
                        current = full;
                    }
                }
                config = next;
            }
        }
        // Both paths ran: the comparison above is not vacuous.
        assert!(applied > 1000, "applied in place only {applied} times");
        assert!(declined > 10, "declined only {declined} times");
    }
}
