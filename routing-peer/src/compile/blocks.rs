//! Rules as LPM blocks of the policy key space, and the entries of each
//! class pair with drop precedence applied.

use routing_peer_common::{
    PolicyKey, PolicyValue, ACTION_ACCEPT, ACTION_DROP, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
};

use super::{classes::ClassIds, ids::DNS_RULE, DeltaState};
use crate::{
    config::{Action, Config, Policy, Protocol},
    model::{FastMap, PolicyPrefix, Tables},
};

/// One LPM block of the policy key space below a class pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Block {
    pub(super) proto: Option<u8>,
    /// (first port, prefix bits of the 16-bit port).
    pub(super) ports: Option<(u16, u32)>,
}

impl Block {
    pub(super) fn contains(&self, other: &Block) -> bool {
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

    pub(super) fn prefix(&self, src_class: u32, dst_class: u32) -> PolicyPrefix {
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

pub(super) fn blocks_of(protocol: Protocol, ranges: &[(u16, u16)]) -> Vec<Block> {
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
pub(super) struct Rule {
    pub(super) id: u32,
    pub(super) action: Action,
    pub(super) blocks: Vec<Block>,
}

/// Entries for one class pair, drop precedence applied.
pub(super) fn resolve(rules: &[&Rule]) -> Vec<(Block, PolicyValue)> {
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

/// The enabled policies as rules, and the built-in rule by which every
/// peer may query the DNS forwarder on the overlay addresses (the
/// forwarder does its own per-name access control).
pub(super) fn rules_of<'c>(
    config: &'c Config,
    rule_ids: &FastMap<&str, u32>,
) -> (Vec<(&'c Policy, Rule)>, Rule) {
    let rules = config
        .policies
        .iter()
        .filter(|policy| policy.applies())
        .map(|policy| {
            let rule = Rule {
                id: rule_ids[policy.name.as_str()],
                action: policy.action,
                blocks: blocks_of(policy.protocol, &policy.port_ranges()),
            };
            (policy, rule)
        })
        .collect();
    let dns_rule = Rule {
        id: rule_ids[DNS_RULE],
        action: Action::Accept,
        blocks: [IPPROTO_UDP, IPPROTO_TCP]
            .iter()
            .flat_map(|&proto| {
                config.dns.ports().into_iter().map(move |port| Block {
                    proto: Some(proto),
                    ports: Some((port, 16)),
                })
            })
            .collect(),
    };
    (rules, dns_rule)
}

/// The class ids holding each rule.
pub(super) fn classes_by_rule(classes: &ClassIds) -> FastMap<u32, Vec<u32>> {
    let mut m: FastMap<u32, Vec<u32>> = FastMap::default();
    for (members, id) in &classes.ids {
        for rule in members {
            m.entry(*rule).or_default().push(*id);
        }
    }
    m
}

/// Policy entries for every class pair some rule connects. Pairs come from
/// each rule's classes, never from all class pairs.
pub(super) fn install_policy(
    tables: &mut Tables,
    delta: &mut DeltaState,
    all_rules: &[&Rule],
    src_by_rule: &FastMap<u32, Vec<u32>>,
    dst_by_rule: &FastMap<u32, Vec<u32>>,
) {
    let rule_by_id: FastMap<u32, &Rule> = all_rules.iter().map(|r| (r.id, *r)).collect();
    let mut pairs: FastMap<(u32, u32), Vec<u32>> = FastMap::default();
    for rule in all_rules {
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
