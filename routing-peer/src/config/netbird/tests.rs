//! The mapping, on the Berlin office served as NetBird JSON (the fixtures
//! the end-to-end tests serve) and on variations of it.

use std::{collections::HashMap, net::IpAddr, path::Path};

use serde_json::{json, Value};

use super::{api, map, merge, render};
use crate::{
    compile,
    config::{self, Config, Netbird, PolicyKind},
};

const NET: &str = "d2nber0000000000001";
const ME: &str = "d2pgw00000000000001";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/netbird/berlin")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The Berlin account as JSON documents, to vary before decoding.
struct Account {
    peers: Value,
    groups: Value,
    policies: Value,
    networks: Value,
    routers: Value,
    resources: Value,
}

impl Account {
    fn berlin() -> Self {
        Self {
            peers: fixture("peers"),
            groups: fixture("groups"),
            policies: fixture("policies"),
            networks: fixture("networks"),
            routers: fixture("networks_routers"),
            resources: fixture(&format!("networks_{NET}_resources")),
        }
    }

    fn documents(&self) -> api::Documents {
        fn d<T: serde::de::DeserializeOwned>(v: &Value) -> T {
            serde_json::from_value(v.clone()).unwrap()
        }
        api::Documents {
            peers: d(&self.peers),
            groups: d(&self.groups),
            policies: d(&self.policies),
            networks: d(&self.networks),
            routers: d(&self.routers),
            resources: [(NET.to_string(), d(&self.resources))].into(),
        }
    }

    fn import(&self) -> Result<map::Import, map::MapError> {
        map::import(&self.documents(), None, &overlay())
    }
}

fn overlay() -> Vec<IpAddr> {
    vec!["100.64.0.1".parse().unwrap()]
}

/// The file beside `[netbird]`: the gateway's own settings.
fn local() -> Config {
    config::parse(
        Path::new("local.toml"),
        r#"
[routing_peer]
name = "berlin-gw"
overlay_interface = "wt0"
overlay_addresses = ["100.64.0.1/10"]
lan_interfaces = ["lan0"]
metric = 100
wireguard = "external"
peer_down_after_secs = 5

[conntrack]
max_flows = 131072

[dns]
upstreams = ["198.51.100.53:53"]
min_ttl_secs = 1
grace_secs = 1
"#,
    )
    .unwrap()
    .config
}

fn tables(config: &Config) -> crate::model::Tables {
    let own: Vec<IpAddr> = config
        .routing_peer
        .overlay_addresses
        .iter()
        .map(|n| n.addr())
        .collect();
    compile::compile(config, &own, &HashMap::new(), compile::Previous::default()).tables
}

/// `examples/berlin-office.toml` as the demo fills it in.
fn berlin_toml() -> Config {
    let key = |c: char| format!("{}=", c.to_string().repeat(43));
    let text = include_str!("../../../../examples/berlin-office.toml")
        .replace("@WG_IFACE@", "wt0")
        .replace("@ROUTER_KEY_FILE@", "/dev/null")
        .replace("@LAPTOP_KEY@", &key('L'))
        .replace("@SALES_KEY@", &key('S'))
        .replace("@GRAFANA_ADDRESS@", "198.51.100.6/32")
        .replace("@GRAFANA_GROUPS@", "[\"Dashboards\"]");
    config::parse(Path::new("berlin-office.toml"), &text)
        .unwrap()
        .config
}

fn merged(account: &Account) -> Config {
    let import = account.import().unwrap();
    let c = merge(&local(), Some(&import));
    let (problems, _) = config::validate(&c);
    assert!(problems.is_empty(), "{problems:?}");
    c
}

#[test]
fn the_berlin_office_from_netbird_gives_the_tables_of_the_toml() {
    let account = Account::berlin();
    let import = account.import().unwrap();
    assert_eq!(import.me.name, "berlin-gw");
    assert_eq!(import.groups, ["All", "Routing Peers"]);
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    let net = &import.networks[0];
    assert_eq!(
        (net.name.as_str(), net.metric, net.masquerade),
        ("Berlin Office", Some(100), true)
    );
    let c = merged(&account);
    assert_eq!(c.dns.ports(), [53, 22054, 5353]);
    let mut toml = berlin_toml();
    toml.dns.extra_ports = c.dns.extra_ports.clone();
    assert_eq!(tables(&c), tables(&toml));
    // Grafana as a bare IP and the wiki as /32: both hosts.
    assert_eq!(net.resources[1].address, "198.51.100.6");
}

#[test]
fn the_printed_toml_is_a_standalone_config_with_the_same_tables() {
    let account = Account::berlin();
    let import = account.import().unwrap();
    let c = merge(&local(), Some(&import));
    let source = Netbird {
        management_url: "https://api.netbird.io".into(),
        token_file: "/dev/null".into(),
        peer: None,
        poll_secs: 30,
        timeout_secs: 10,
    };
    let text = render(&c, &source, &import).unwrap();
    assert!(!text.contains("[netbird]"));
    let reread = config::parse(Path::new("import.toml"), &text)
        .unwrap()
        .config;
    assert_eq!(reread, c);
    assert_eq!(tables(&reread), tables(&c));
}

fn router(
    id: &str,
    peer: Option<&str>,
    groups: &[&str],
    metric: u16,
    masquerade: bool,
    enabled: bool,
) -> Value {
    let mut r = json!({"id": id, "metric": metric, "masquerade": masquerade, "enabled": enabled});
    if let Some(p) = peer {
        r["peer"] = json!(p);
    } else {
        r["peer_groups"] = json!(groups);
    }
    r
}

fn with_routers(routers: Vec<Value>) -> Account {
    let mut a = Account::berlin();
    a.networks[0]["routers"] = json!(routers.iter().map(|r| r["id"].clone()).collect::<Vec<_>>());
    a.routers = json!(routers);
    a
}

#[test]
fn routers_by_peer_by_group_disabled_and_two_metrics() {
    let rp_group = "d2grpe0000000000004";
    // By its peer group.
    let a = with_routers(vec![router("r1", None, &[rp_group], 300, false, true)]);
    let n = &a.import().unwrap().networks[0];
    assert_eq!((n.metric, n.masquerade), (Some(300), false));
    // A disabled router serves nothing: no network, no resource.
    let a = with_routers(vec![router("r1", Some(ME), &[], 100, true, false)]);
    assert!(a.import().unwrap().networks.is_empty());
    // Another peer's router: not ours.
    let a = with_routers(vec![router(
        "r1",
        Some("d2plap0000000000002"),
        &[],
        100,
        true,
        true,
    )]);
    assert!(a.import().unwrap().networks.is_empty());
    // Two routers name this peer: the lowest metric wins, with its masquerade.
    let a = with_routers(vec![
        router("r1", None, &[rp_group], 200, true, true),
        router("r2", Some(ME), &[], 50, false, true),
    ]);
    let n = &a.import().unwrap().networks[0];
    assert_eq!((n.metric, n.masquerade), (Some(50), false));
    // Two routers, one per gateway, different metrics: ours is ours.
    let a = with_routers(vec![
        router("r1", Some(ME), &[], 100, true, true),
        router("r2", Some("d2plap0000000000002"), &[], 10, false, true),
    ]);
    let n = &a.import().unwrap().networks[0];
    assert_eq!((n.metric, n.masquerade), (Some(100), true));
}

#[test]
fn disabled_resources_stay_disabled_and_mistyped_ones_are_left_out() {
    let mut a = Account::berlin();
    a.resources[0]["enabled"] = json!(false);
    a.resources[1]["address"] = json!("198.51.100.0/24");
    let import = a.import().unwrap();
    let res = &import.networks[0].resources;
    assert_eq!(
        res.len(),
        1,
        "a host typed resource with a subnet is never widened"
    );
    assert!(!res[0].enabled);
    assert_eq!(import.warnings[0].id, "d2rgrf0000000000002");
}

fn policy(id: &str, rule: Value) -> Value {
    json!({"id": id, "name": format!("policy {id}"), "enabled": true,
           "source_posture_checks": [], "rules": [rule]})
}

fn rule(protocol: &str, sources: &[&str], destinations: Value) -> Value {
    let group = |id: &str| json!({"id": id, "name": "x", "peers_count": 1, "resources_count": 0});
    json!({"id": "rule", "name": "rule", "enabled": true, "action": "accept",
           "bidirectional": false, "protocol": protocol,
           "sources": sources.iter().map(|s| group(s)).collect::<Vec<_>>(),
           "destinations": destinations})
}

const DEV: &str = "d2gdev0000000000002";
const SALES: &str = "d2gsal0000000000003";
const APPS: &str = "d2gapp0000000000005";
const RP: &str = "d2grpe0000000000004";

fn group_ref(id: &str) -> Value {
    json!([{"id": id, "name": "x", "peers_count": 0, "resources_count": 1}])
}

#[test]
fn posture_checked_rules_grant_nothing() {
    let mut a = Account::berlin();
    let mut p = policy("pp", rule("all", &[SALES], group_ref(APPS)));
    p["source_posture_checks"] = json!(["d2kchk0000000000001"]);
    a.policies.as_array_mut().unwrap().push(p);
    let import = a.import().unwrap();
    let imported = import
        .policies
        .iter()
        .find(|p| p.name == "policy pp")
        .unwrap();
    assert_eq!(imported.posture_checks, ["d2kchk0000000000001"]);
    assert!(!imported.applies());
    assert!(import
        .warnings
        .iter()
        .any(|w| w.id == "pp" && w.message.contains("posture")));
    // The same entries as without it (rule ids aside: it keeps its own).
    let entries = |c: &Config| {
        let t = tables(c);
        let policy: Vec<_> = t.policy.iter().map(|(k, v)| (*k, v.action)).collect();
        (
            t.peers,
            t.dests,
            policy.into_iter().collect::<std::collections::HashSet<_>>(),
        )
    };
    assert_eq!(entries(&merged(&a)), entries(&merged(&Account::berlin())));
}

#[test]
fn what_cannot_be_expressed_grants_nothing_and_is_reported() {
    let base = tables(&merged(&Account::berlin()));
    let cases: Vec<(&str, Value)> = vec![
        ("ssh", rule("netbird-ssh", &[SALES], group_ref(APPS))),
        ("sctp", rule("sctp", &[SALES], group_ref(APPS))),
        ("unknown field", {
            let mut r = rule("all", &[SALES], group_ref(APPS));
            r["source_ports"] = json!(["22"]);
            r
        }),
        ("source resource", {
            let mut r = rule("all", &[], group_ref(APPS));
            r["sourceResource"] = json!({"id": "d2rwik0000000000001", "type": "host"});
            r
        }),
        ("ports without a protocol", {
            let mut r = rule("all", &[SALES], group_ref(APPS));
            r["ports"] = json!(["22"]);
            r
        }),
        ("a bad port", {
            let mut r = rule("tcp", &[SALES], group_ref(APPS));
            r["ports"] = json!(["http"]);
            r
        }),
    ];
    for (what, r) in cases {
        let mut a = Account::berlin();
        a.policies.as_array_mut().unwrap().push(policy("x", r));
        let import = a.import().unwrap();
        assert!(
            import.warnings.iter().any(|w| w.id == "rule"),
            "{what}: {:?}",
            import.warnings
        );
        assert_eq!(tables(&merged(&a)), base, "{what} must grant nothing");
    }
}

#[test]
fn a_destination_resource_with_null_destinations() {
    let mut a = Account::berlin();
    let mut r = rule("tcp", &[SALES], Value::Null);
    r["ports"] = json!(["443"]);
    r["destinationResource"] = json!({"id": "d2rgrf0000000000002", "type": "host"});
    a.policies.as_array_mut().unwrap().push(policy("dr", r));
    let import = a.import().unwrap();
    let p = import
        .policies
        .iter()
        .find(|p| p.name == "policy dr")
        .unwrap();
    assert_eq!(p.destination_resources, ["Grafana"]);
    assert_eq!(p.sources, ["Sales"]);
    assert!(p.destinations.is_empty());
    assert_ne!(tables(&merged(&a)), tables(&merged(&Account::berlin())));
}

#[test]
fn rules_to_this_peers_groups_are_input_chain_policies() {
    let mut a = Account::berlin();
    let mut r = rule("tcp", &[DEV], group_ref(RP));
    r["ports"] = json!(["22"]);
    a.policies.as_array_mut().unwrap().push(policy("ssh", r));
    // Bidirectional, with this peer among the sources: Sales may reach it.
    let mut r = rule("udp", &[RP], group_ref(SALES));
    r["bidirectional"] = json!(true);
    a.policies.as_array_mut().unwrap().push(policy("bi", r));
    let import = a.import().unwrap();
    let find = |n: &str| import.policies.iter().find(|p| p.name == n).unwrap();
    let ssh = find("policy ssh");
    assert_eq!(
        (
            ssh.kind,
            ssh.sources.as_slice(),
            ssh.destinations.as_slice()
        ),
        (
            PolicyKind::Peer,
            &["Development".to_string()][..],
            &["Routing Peers".to_string()][..]
        )
    );
    let bi = find("policy bi (reverse)");
    assert_eq!(
        (bi.kind, bi.sources.as_slice()),
        (PolicyKind::Peer, &["Sales".to_string()][..])
    );
    merged(&a);
}

#[test]
fn half_an_update_is_refused() {
    let mut a = Account::berlin();
    a.policies[0]["rules"][0]["destinations"] = group_ref("d2ggone000000000099");
    assert!(
        matches!(a.import(), Err(map::MapError::Inconsistent(m)) if m.contains("d2ggone000000000099"))
    );
    let mut a = Account::berlin();
    a.networks[0]["resources"] = json!(["d2rwik0000000000001", "d2rnew0000000000009"]);
    assert!(matches!(a.import(), Err(map::MapError::Inconsistent(_))));
}

#[test]
fn this_peer_is_found_by_address_id_or_name() {
    let docs = Account::berlin().documents();
    for selector in [None, Some(ME), Some("berlin-gw")] {
        let me = map::find_self(&docs.peers, selector, &overlay()).unwrap();
        assert_eq!(me.id, ME);
    }
    let missing = map::find_self(&docs.peers, None, &["100.64.0.9".parse().unwrap()]);
    assert!(matches!(missing, Err(map::MapError::SelfNotFound(_))));
}

#[test]
fn go_nulls_are_empty_lists() {
    let peer: api::Peer = serde_json::from_value(json!({
        "id": "p", "name": "n", "ip": "100.64.0.9", "groups": null
    }))
    .unwrap();
    assert!(peer.groups.is_empty());
    let broken = serde_json::from_value::<api::NetworkRouter>(json!({"id": "r", "metric": 1}));
    assert!(
        broken.is_err(),
        "a router without masquerade and enabled breaks the schema"
    );
}
