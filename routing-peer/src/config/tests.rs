use super::*;
use std::path::Path;

const KEY_A: &str = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=";
const KEY_B: &str = "YW5vdGhlciBrZXkgYW5vdGhlciBrZXkgYW5vdGhlcg0=";

fn example() -> String {
    format!(
        r#"
[routing_peer]
name = "berlin-gw"
overlay_interface = "wt0"
overlay_addresses = ["100.64.0.1/10"]
private_key_file = "/etc/routing-peer/key"
lan_interfaces = ["eth0"]
groups = ["Routing Peers"]

[[peers]]
name = "alice"
public_key = "{KEY_A}"
addresses = ["100.64.0.2"]
groups = ["Development"]

[[peers]]
name = "bob"
public_key = "{KEY_B}"
addresses = ["100.64.0.3"]
groups = ["Sales"]

[[networks]]
name = "Berlin Office"
[[networks.resources]]
name = "Internal Wiki"
address = "198.51.100.5/32"
groups = ["Internal Apps"]
[[networks.resources]]
name = "Grafana"
address = "grafana.berlin.internal"
groups = ["Internal Apps"]

[[policies]]
name = "Dev to apps"
sources = ["Development"]
destinations = ["Internal Apps"]
protocol = "tcp"
ports = [443]
"#
    )
}

fn problems(text: &str) -> Vec<Problem> {
    parse(Path::new("rp.toml"), text).unwrap_err().problems
}

#[test]
fn the_example_loads() {
    let loaded = parse(Path::new("rp.toml"), &example()).unwrap();
    assert_eq!(loaded.config.peers.len(), 2);
    assert!(
        loaded.config.networks[0].masquerade,
        "masquerade defaults on"
    );
    assert!(loaded.warnings.is_empty());
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = example()
        .replace("sources = [\"Development\"]", "sources = [\"Developers\"]")
        .replace(
            "ports = [443]",
            "ports = [70000]\nport_ranges = [{ start = 9000, end = 8000 }]",
        )
        .replace("\"198.51.100.5/32\"", "\"198.51.100.5/24\"")
        .replace("100.64.0.3", "192.0.2.9")
        .replace("name = \"bob\"", "name = \"alice\"");
    let found = problems(&text);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    for expected in [
        "policies[0].sources[0]",
        "policies[0].ports[0]",
        "policies[0].port_ranges[0]",
        "networks[0].resources[0].address",
        "peers[1].addresses[0]",
        "peers[1].name",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} missing from {found:#?}"
        );
    }
    let host_bits = found
        .iter()
        .find(|p| p.field == "networks[0].resources[0].address")
        .unwrap();
    assert!(
        host_bits.message.contains("198.51.100.0/24"),
        "{host_bits:?}"
    );
    let inverted = found
        .iter()
        .find(|p| p.field == "policies[0].port_ranges[0]")
        .unwrap();
    assert!(inverted.message.contains("inverted"), "{inverted:?}");
}

#[test]
fn wildcards_only_leftmost() {
    assert_eq!(
        parse_resource_address("*.berlin.internal").unwrap(),
        ResourceAddress::Wildcard("berlin.internal".into())
    );
    assert!(parse_resource_address("grafana.*.internal").is_err());
    assert!(parse_resource_address("*grafana.internal").is_err());
    assert_eq!(
        parse_resource_address("10.0.0.0/8").unwrap().kind(),
        "subnet"
    );
    assert_eq!(
        parse_resource_address("2001:db8::5").unwrap().kind(),
        "host"
    );
}

#[test]
fn peer_and_resource_policies_do_not_mix() {
    let text = example()
        + r#"
[[policies]]
name = "ssh to gateway"
kind = "peer"
sources = ["Development"]
destinations = ["Internal Apps"]
destination_resources = ["Internal Wiki"]
protocol = "tcp"
ports = [22]

[[policies]]
name = "wrong way"
sources = ["Development"]
destinations = ["Routing Peers"]
"#;
    let found = problems(&text);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert!(
        fields.contains(&"policies[1].destinations[0]"),
        "{found:#?}"
    );
    assert!(
        fields.contains(&"policies[1].destination_resources"),
        "{found:#?}"
    );
    assert!(
        fields.contains(&"policies[2].destinations[0]"),
        "{found:#?}"
    );
}

#[test]
fn syntax_errors_name_the_line_and_unknown_fields_are_rejected() {
    let found = problems(&example().replace("lan_interfaces", "lan_interface"));
    assert!(found[0].field.starts_with("line "), "{found:?}");
    assert!(found[0].message.contains("lan_interface"), "{found:?}");
}

#[test]
fn broad_resources_warn_without_failing() {
    let text = example().replace("\"198.51.100.5/32\"", "\"0.0.0.0/0\"");
    let loaded = parse(Path::new("rp.toml"), &text).unwrap();
    assert!(!loaded.warnings.is_empty());
}

#[test]
fn a_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "x").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(others_can_read(&key), Some(0o644));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(others_can_read(&key), None);
    assert_eq!(others_can_read(Path::new("/dev/null")), None);
}

#[test]
fn a_non_utf8_file_names_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, b"[routing_peer]\nname = \"gw\xff\"\n").unwrap();
    let err = read_text(&path).unwrap_err().to_string();
    assert!(err.contains("byte 25 (line 2)"), "{err}");
}

#[test]
fn a_policy_aimed_at_a_disabled_resource_warns() {
    let text = &crate::testing::ConfigText::gateway("wg0", &["100.64.0.1/10"], &[])
        .peer("alice", &["100.64.0.2"], &["Dev"])
        .network("office", true)
        .resource("wiki", "198.51.100.5/32", &["Apps"])
        .raw(
            "enabled = false\n\n[[policies]]\nname = \"by-name\"\nsources = [\"Dev\"]\n\
             destination_resources = [\"wiki\"]\n\n[[policies]]\nname = \"by-group\"\n\
             sources = [\"Dev\"]\ndestinations = [\"Apps\"]\n",
        )
        .build();
    let loaded = parse(Path::new("c.toml"), text).expect("valid, with warnings");
    let fields: Vec<&str> = loaded.warnings.iter().map(|w| w.field.as_str()).collect();
    assert!(
        fields.contains(&"policies[0].destination_resources[0]"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"policies[1].destinations[0]"),
        "{fields:?}"
    );
}

#[test]
fn only_enabled_resource_policies_cover_a_resource() {
    let text = example()
        + r#"
[[policies]]
name = "Old"
enabled = false
sources = ["Sales"]
destinations = ["Internal Apps"]

[[policies]]
name = "Wiki by name"
sources = ["Sales"]
destination_resources = ["Internal Wiki"]
action = "drop"

[[policies]]
name = "Input"
kind = "peer"
sources = ["Sales"]
destinations = ["Development"]
"#;
    let config = parse(Path::new("rp.toml"), &text).unwrap().config;
    let covering = |name: &str| {
        let res = config.networks[0]
            .resources
            .iter()
            .find(|r| r.name == name)
            .unwrap();
        config
            .policies_covering(&res.name, &res.groups)
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(covering("Internal Wiki"), ["Dev to apps", "Wiki by name"]);
    assert_eq!(covering("Grafana"), ["Dev to apps"]);
}

#[test]
fn fragment_settings_are_bounded() {
    let text = example() + "\n[fragments]\nmax_datagrams = 10\ntimeout_secs = 0\n";
    let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
    assert!(
        fields.contains(&"fragments.max_datagrams".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"fragments.timeout_secs".to_string()),
        "{fields:?}"
    );
    let ok = example() + "\n[fragments]\nmax_datagrams = 100000\ntimeout_secs = 60\n";
    let loaded = parse(Path::new("rp.toml"), &ok).unwrap();
    assert_eq!(loaded.config.fragments.max_datagrams, 100_000);
}

#[test]
fn event_export_rotation_is_bounded() {
    let text =
        example() + "\n[events]\nfile = \"/tmp/x.jsonl\"\nfile_max_bytes = 0\nfile_keep = 0\n";
    let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
    assert!(
        fields.contains(&"events.file_max_bytes".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"events.file_keep".to_string()),
        "{fields:?}"
    );
    let ok = example() + "\n[events]\nfile_max_bytes = 1048576\nfile_keep = 10\n";
    let loaded = parse(Path::new("rp.toml"), &ok).unwrap();
    assert_eq!(loaded.config.events.file_keep, 10);
}

/// The gateway's own settings beside `[netbird]`.
fn netbird_file(token: &Path, extra: &str) -> String {
    format!(
        r#"
[routing_peer]
name = "berlin-gw"
overlay_interface = "wt0"
overlay_addresses = ["100.64.0.1/10"]
lan_interfaces = ["eth0"]
wireguard = "external"

[netbird]
management_url = "https://api.netbird.io"
token_file = "{}"
poll_secs = 1
{extra}"#,
        token.display()
    )
}

fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

#[test]
fn a_netbird_source_is_checked_with_its_fields() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "nbp_x").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = parse(Path::new("rp.toml"), &netbird_file(&token, "")).unwrap();
    assert_eq!(ok.config.netbird.unwrap().poll_secs, 1);

    // The model comes from NetBird: none of its own.
    let with_peer = netbird_file(&token, "")
        + &format!(
            "\n[[peers]]\nname = \"a\"\npublic_key = \"{KEY_A}\"\naddresses = [\"100.64.0.2\"]\n"
        );
    assert_eq!(fields(&problems(&with_peer)), ["peers"]);
    // WireGuard is the agent's.
    let own_wg =
        netbird_file(&token, "").replace("wireguard = \"external\"", "wireguard = \"auto\"");
    let p = problems(&own_wg);
    assert!(fields(&p).contains(&"routing_peer.wireguard"), "{p:?}");
    // Out of range, and a token others can read.
    let p = problems(
        &netbird_file(&token, "timeout_secs = 0").replace("poll_secs = 1", "poll_secs = 0"),
    );
    assert_eq!(fields(&p), ["netbird.poll_secs", "netbird.timeout_secs"]);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = problems(&netbird_file(&token, ""));
    assert_eq!(fields(&p), ["netbird.token_file"]);
    assert!(p[0].message.contains("chmod 600"));
}

#[test]
fn a_peer_without_a_key_needs_wireguard_run_elsewhere() {
    let keyless = example().replace(&format!("public_key = \"{KEY_B}\"\n"), "");
    let p = problems(&keyless);
    assert_eq!(fields(&p), ["peers[1].public_key"]);
    let external = keyless.replace(
        "groups = [\"Routing Peers\"]",
        "groups = [\"Routing Peers\"]\nwireguard = \"external\"",
    );
    assert!(parse(Path::new("rp.toml"), &external).is_ok());
    // Nor does the routing peer need its own key then.
    let no_key = external.replace("private_key_file = \"/etc/routing-peer/key\"\n", "");
    assert!(parse(Path::new("rp.toml"), &no_key).is_ok());
    let p = problems(&keyless.replace("private_key_file = \"/etc/routing-peer/key\"\n", ""));
    assert!(
        fields(&p).contains(&"routing_peer.private_key_file"),
        "{p:?}"
    );
}
