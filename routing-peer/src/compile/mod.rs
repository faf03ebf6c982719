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

mod blocks;
mod classes;
mod delta;
mod dests;
mod domains;
mod ids;

pub use blocks::port_blocks;
pub use classes::ClassIds;
pub use delta::{apply_policy_change, NeedsFullCompile};
pub use domains::{domain_for, DomainResource};
pub use ids::Names;

use std::{collections::HashMap, net::IpAddr};

use routing_peer_common::{AddrKey, DestValue};

use self::{
    blocks::Rule,
    classes::{rule_set, ClassBuilder, ClassSide, RuleIndex, SELF_LAN_MEMBER, SELF_OVERLAY_MEMBER},
};
use crate::{
    config::Config,
    model::{DestPrefix, FastMap, PolicyPrefix, Tables},
};

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
    let (names, ids) = ids::assign(config, previous.names);
    let (rules, dns_rule) = blocks::rules_of(config, &ids.rules);
    let index = RuleIndex::new(&rules);
    let mut delta = DeltaState::default();

    let (peers, src_class_ids) = classes::sources(
        config,
        &ids,
        &index,
        dns_rule.id,
        previous.classes.map(|c| c.0),
        &mut delta,
    );

    let found = dests::collect(config, &ids, &index, resolved, &mut delta);
    let nesting = dests::nest(&found.dests, &mut delta);
    let mut dst_classes = ClassBuilder::after(previous.classes.map(|c| c.1));
    let dest_slots: Vec<usize> = found
        .dests
        .iter()
        .zip(nesting.inherited)
        .map(|(d, rules_of)| dst_classes.add(d.resource_id, rules_of))
        .collect();
    let domain_slots: Vec<usize> = found
        .domain_rules
        .iter()
        .map(|d| dst_classes.add(d.resource_id, d.rules.clone()))
        .collect();
    let self_rules = classes::self_rules(config, &rules);
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
    tables.dests.reserve(found.dests.len() + self_addrs.len());
    dests::install(
        &mut tables,
        &found.dests,
        dest_slots.iter().map(|slot| dst_ids[*slot]),
        &nesting.masq_by_rule,
    );
    let domain_dests: HashMap<u32, DestValue> = found
        .domain_rules
        .iter()
        .zip(domain_slots)
        .map(|(d, slot)| {
            let value = DestValue {
                resource_id: d.resource_id,
                dst_class: dst_ids[slot],
                flags: d.flags,
            };
            (d.resource_id, value)
        })
        .collect();
    dests::install_self(
        &mut tables,
        &mut delta,
        config,
        self_addrs,
        dst_ids[overlay_slot],
        dst_ids[lan_slot],
    );

    let all_rules: Vec<&Rule> = rules.iter().map(|(_, r)| r).chain([&dns_rule]).collect();
    let src_by_rule = blocks::classes_by_rule(&src_class_ids);
    let dst_by_rule = blocks::classes_by_rule(&dst_class_ids);
    blocks::install_policy(
        &mut tables,
        &mut delta,
        &all_rules,
        &src_by_rule,
        &dst_by_rule,
    );
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
        domains: found.domains,
        domain_dests,
        peer_classes: src_class_ids.ids.len(),
        dest_classes: dst_class_ids.ids.len(),
        src_class_ids,
        dst_class_ids,
        delta,
    }
}

#[cfg(test)]
mod dns_access_tests {
    use super::*;
    use crate::check;
    use routing_peer_common::{IPPROTO_TCP, IPPROTO_UDP};

    /// A routing peer with one peer, alice (100.64.0.2), in `group`.
    pub(super) fn gateway_with_alice(group: &str) -> String {
        crate::testing::ConfigText::gateway("wg0", &["100.64.0.1/10"], &[])
            .peer("alice", &["100.64.0.2"], &[group])
            .build()
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
    use super::{ids::stable_ids, *};
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
