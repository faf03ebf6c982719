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
        // Posture-checked policies grant nothing, in place as in full.
        posture_checks: if rng.below(10) == 0 {
            vec!["posture".into()]
        } else {
            Vec::new()
        },
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
