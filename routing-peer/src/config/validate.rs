//! Validation: every problem at once, each with its field and the fix;
//! warnings for what is legal but probably wrong.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{
    load::{others_can_read, Problem},
    parse_resource_address, Action, Config, PolicyKind, Protocol, ResourceAddress, WireguardMode,
};

struct Report {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn check_unique<'a>(
    report: &mut Report,
    what: &str,
    items: impl Iterator<Item = (String, &'a str)>,
) {
    let mut seen = HashMap::new();
    for (field, name) in items {
        if let Some(first) = seen.insert(name.to_string(), field.clone()) {
            report.error(
                field,
                format!("duplicate {what} name `{name}` (first at {first}); rename one"),
            );
        }
    }
}

/// Returns (errors, warnings).
pub fn validate(config: &Config) -> (Vec<Problem>, Vec<Problem>) {
    let mut r = Report {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    routing_peer(&mut r, config);
    events(&mut r, config);
    netbird(&mut r, config);
    peers(&mut r, config);
    let resources = networks(&mut r, config);
    policies(&mut r, config, &resources);
    (r.problems, r.warnings)
}

/// `[routing_peer]`, `[conntrack]`: required fields, sizes, key file mode.
fn routing_peer(r: &mut Report, config: &Config) {
    let rp = &config.routing_peer;
    if rp.overlay_addresses.is_empty() {
        r.error(
            "routing_peer.overlay_addresses",
            "needs at least one address with the overlay prefix, e.g. `100.64.0.1/10`",
        );
    }
    if rp.lan_interfaces.is_empty() {
        r.error(
            "routing_peer.lan_interfaces",
            "needs at least one LAN interface, e.g. `[\"eth0\"]`",
        );
    }
    let frags = &config.fragments;
    if frags.max_datagrams < 64 {
        r.error(
            "fragments.max_datagrams",
            format!("{} is too small; use at least 64", frags.max_datagrams),
        );
    }
    if !(1..=120).contains(&frags.timeout_secs) {
        r.error(
            "fragments.timeout_secs",
            format!(
                "{} is out of range; use 1 to 120 seconds (30, as Linux's ipfrag_time, by default)",
                frags.timeout_secs
            ),
        );
    }
    if config.conntrack.max_flows < 1024 {
        r.error(
            "conntrack.max_flows",
            format!(
                "{} is too small for a gateway; use at least 1024",
                config.conntrack.max_flows
            ),
        );
    }
    let external = rp.wireguard == WireguardMode::External;
    if rp.private_key_file.as_os_str().is_empty() && !external {
        r.error(
            "routing_peer.private_key_file",
            "missing: the WireGuard private key file (or set `wireguard = \"external\"` when another agent runs WireGuard)",
        );
    }
    if let Some(mode) = others_can_read(&rp.private_key_file) {
        r.error(
            "routing_peer.private_key_file",
            format!(
                "{} is readable by group or others (mode {mode:o}), as wg and ssh refuse; chmod 600 it",
                rp.private_key_file.display()
            ),
        );
    }
    if rp.mtu < 1280 {
        r.error(
            "routing_peer.mtu",
            format!("{} is below 1280, the IPv6 minimum; raise it", rp.mtu),
        );
    }
    if let Some(range) = rp.snat_ports {
        check_range(r, "routing_peer.snat_ports", range.start, range.end);
        if range.start < 1024 {
            r.error(
                "routing_peer.snat_ports.start",
                "SNAT ports below 1024 collide with services; start at 1024 or above",
            );
        }
    }
}

/// `[events]`: an export file's rotation.
fn events(r: &mut Report, config: &Config) {
    let ev = &config.events;
    if ev.file_max_bytes < 64 << 10 {
        r.error(
            "events.file_max_bytes",
            format!(
                "{} bytes would rotate every few events; use at least 65536 (64 MiB by default)",
                ev.file_max_bytes
            ),
        );
    }
    if !(1..=1000).contains(&ev.file_keep) {
        r.error(
            "events.file_keep",
            format!(
                "{} is out of range; keep 1 to 1000 rotated files (5 by default)",
                ev.file_keep
            ),
        );
    }
}

/// `[netbird]`: the source's settings, and nothing the source provides.
fn netbird(r: &mut Report, config: &Config) {
    let Some(nb) = &config.netbird else {
        return;
    };
    if config.routing_peer.wireguard != WireguardMode::External {
        r.error(
            "routing_peer.wireguard",
            "with [netbird], the NetBird agent runs WireGuard: set `wireguard = \"external\"` and `overlay_interface = \"wt0\"`",
        );
    }
    for (what, present) in [
        ("peers", !config.peers.is_empty()),
        ("networks", !config.networks.is_empty()),
        ("policies", !config.policies.is_empty()),
    ] {
        if present {
            r.error(
                what,
                format!("with [netbird], {what} come from NetBird's management API: remove the [[{what}]] entries (or the [netbird] section)"),
            );
        }
    }
    if !config.routing_peer.groups.is_empty() {
        r.error(
            "routing_peer.groups",
            "with [netbird], this peer's groups come from NetBird: remove `groups`",
        );
    }
    if !(nb.management_url.starts_with("https://") || nb.management_url.starts_with("http://")) {
        r.error(
            "netbird.management_url",
            format!(
                "`{}` is not an http(s) URL; write e.g. `https://api.netbird.io`",
                nb.management_url
            ),
        );
    }
    if nb.token_file.as_os_str().is_empty() {
        r.error(
            "netbird.token_file",
            "missing: the file holding the service user's access token",
        );
    } else if let Some(mode) = others_can_read(&nb.token_file) {
        r.error(
            "netbird.token_file",
            format!(
                "{} is readable by group or others (mode {mode:o}); chmod 600 it",
                nb.token_file.display()
            ),
        );
    }
    if !(1..=3600).contains(&nb.poll_secs) {
        r.error(
            "netbird.poll_secs",
            format!(
                "{} is out of range; use 1 to 3600 seconds (30 by default)",
                nb.poll_secs
            ),
        );
    }
    if !(1..=120).contains(&nb.timeout_secs) {
        r.error(
            "netbird.timeout_secs",
            format!(
                "{} is out of range; use 1 to 120 seconds (10 by default)",
                nb.timeout_secs
            ),
        );
    }
}

/// `[[peers]]`: names, keys and addresses unique; addresses inside the overlay.
fn peers(r: &mut Report, config: &Config) {
    let rp = &config.routing_peer;
    check_unique(
        r,
        "peer",
        config
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("peers[{i}].name"), p.name.as_str())),
    );
    let mut keys = HashMap::new();
    let mut addrs: HashMap<IpAddr, String> = rp
        .overlay_addresses
        .iter()
        .map(|a| (a.addr(), "routing_peer.overlay_addresses".to_string()))
        .collect();
    for (i, p) in config.peers.iter().enumerate() {
        let field = format!("peers[{i}]");
        if p.public_key.is_empty() {
            if rp.wireguard != super::WireguardMode::External {
                r.error(
                    format!("{field}.public_key"),
                    "missing: WireGuard needs each peer's key (unless `wireguard = \"external\"` runs it elsewhere)",
                );
            }
        } else if !valid_wg_key(&p.public_key) {
            r.error(
                format!("{field}.public_key"),
                "not a WireGuard key: expected 44 base64 characters (as `wg pubkey` prints)",
            );
        } else if let Some(first) = keys.insert(p.public_key.clone(), field.clone()) {
            r.error(
                format!("{field}.public_key"),
                format!("the same key as {first}; each peer needs its own"),
            );
        }
        if p.addresses.is_empty() {
            r.error(
                format!("{field}.addresses"),
                "needs at least one overlay address",
            );
        }
        for (j, a) in p.addresses.iter().enumerate() {
            let af = format!("{field}.addresses[{j}]");
            if !rp.overlay_addresses.iter().any(|net| net.contains(a)) {
                r.error(
                    af.clone(),
                    format!(
                        "{a} is outside the overlay prefix ({}); use an address inside it",
                        list(rp.overlay_addresses.iter().map(|n| n.trunc().to_string()))
                    ),
                );
            }
            if let Some(first) = addrs.insert(*a, af.clone()) {
                r.error(af, format!("{a} is already used by {first}"));
            }
        }
    }
}

/// What the policies check their destinations against.
struct ResourceIndex<'a> {
    groups: HashSet<&'a str>,
    names: HashSet<&'a str>,
    disabled: HashSet<&'a str>,
    /// Groups with at least one enabled resource.
    enabled_groups: HashSet<&'a str>,
    /// Groups holding a 0.0.0.0/0 or ::/0 resource, for the broad-grant warning.
    everything_groups: HashSet<&'a str>,
}

/// `[[networks]]` and their resources: unique names, parseable addresses.
fn networks<'a>(r: &mut Report, config: &'a Config) -> ResourceIndex<'a> {
    check_unique(
        r,
        "network",
        config
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("networks[{i}].name"), n.name.as_str())),
    );
    check_unique(
        r,
        "resource",
        config.networks.iter().enumerate().flat_map(|(i, n)| {
            n.resources.iter().enumerate().map(move |(j, res)| {
                (
                    format!("networks[{i}].resources[{j}].name"),
                    res.name.as_str(),
                )
            })
        }),
    );
    let mut resource_groups = HashSet::new();
    let mut resource_names = HashSet::new();
    let mut disabled: HashSet<&str> = HashSet::new();
    let mut enabled_groups: HashSet<&str> = HashSet::new();
    // Groups holding a 0.0.0.0/0 or ::/0 resource, for the broad-grant warning.
    let mut everything_groups: HashSet<&str> = HashSet::new();
    for (i, n) in config.networks.iter().enumerate() {
        if n.metric.is_some_and(|m| !(1..=9999).contains(&m)) {
            r.error(
                format!("networks[{i}].metric"),
                "out of range: use 1 to 9999 (the lowest wins)",
            );
        }
        for (j, res) in n.resources.iter().enumerate() {
            let field = format!("networks[{i}].resources[{j}]");
            resource_names.insert(res.name.as_str());
            if res.enabled {
                enabled_groups.extend(res.groups.iter().map(String::as_str));
            } else {
                disabled.insert(res.name.as_str());
            }
            resource_groups.extend(res.groups.iter().map(String::as_str));
            match parse_resource_address(&res.address) {
                Err(e) => r.error(format!("{field}.address"), e),
                Ok(ResourceAddress::Subnet(net)) if net.prefix_len() == 0 => {
                    everything_groups.extend(res.groups.iter().map(String::as_str));
                    r.warn(
                        format!("{field}.address"),
                        format!(
                            "`{net}` grants everything reachable from this routing peer; prefer /32 hosts or narrow CIDRs"
                        ),
                    )
                }
                Ok(ResourceAddress::Subnet(net)) if net.prefix_len() < 8 => r.warn(
                    format!("{field}.address"),
                    format!("`{net}` is very broad; prefer narrower resources"),
                ),
                Ok(_) => {}
            }
        }
    }
    ResourceIndex {
        groups: resource_groups,
        names: resource_names,
        disabled,
        enabled_groups,
        everything_groups,
    }
}

/// `[[policies]]`: known groups and resources of the right kind, ports.
fn policies(r: &mut Report, config: &Config, resources: &ResourceIndex) {
    let rp = &config.routing_peer;
    let peer_groups: HashSet<&str> = config
        .peers
        .iter()
        .flat_map(|p| p.groups.iter().map(String::as_str))
        .chain(rp.groups.iter().map(String::as_str))
        .collect();

    let ResourceIndex {
        groups: resource_groups,
        names: resource_names,
        disabled,
        enabled_groups,
        everything_groups,
    } = resources;
    check_unique(
        r,
        "policy",
        config
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("policies[{i}].name"), p.name.as_str())),
    );
    for (i, p) in config.policies.iter().enumerate() {
        let field = format!("policies[{i}]");
        if !p.posture_checks.is_empty() && p.enabled {
            r.warn(
                format!("{field}.posture_checks"),
                format!(
                    "`{}` requires posture checks, which this routing peer cannot evaluate: it grants nothing",
                    p.name
                ),
            );
        }
        if p.sources.is_empty() {
            r.error(
                format!("{field}.sources"),
                "needs at least one source peer group",
            );
        }
        for (j, g) in p.sources.iter().enumerate() {
            if !peer_groups.contains(g.as_str()) {
                r.error(
                    format!("{field}.sources[{j}]"),
                    format!(
                        "unknown peer group `{g}`; add it to a peer's `groups` or fix the name"
                    ),
                );
            }
        }
        match p.kind {
            PolicyKind::Resource => {
                if p.destinations.is_empty() && p.destination_resources.is_empty() {
                    r.error(
                        format!("{field}.destinations"),
                        "a resource policy needs `destinations` (resource groups) or `destination_resources`",
                    );
                }
                for (j, g) in p.destinations.iter().enumerate() {
                    let f = format!("{field}.destinations[{j}]");
                    if resource_groups.contains(g.as_str()) {
                        continue;
                    }
                    if peer_groups.contains(g.as_str()) {
                        r.error(f, format!("`{g}` is a peer group; a resource policy targets resource groups. Use `kind = \"peer\"` for the input chain"));
                    } else {
                        r.error(f, format!("unknown resource group `{g}`; add it to a resource's `groups` or fix the name"));
                    }
                }
                for (j, name) in p.destination_resources.iter().enumerate() {
                    if !resource_names.contains(name.as_str()) {
                        r.error(
                            format!("{field}.destination_resources[{j}]"),
                            format!("unknown resource `{name}`"),
                        );
                    } else if disabled.contains(name.as_str()) {
                        r.warn(
                            format!("{field}.destination_resources[{j}]"),
                            format!("resource `{name}` is disabled: this policy grants nothing there until it is enabled"),
                        );
                    }
                }
                // Looked up, not scanned: 100k policies × 100k resources
                // made this loop the whole of a reload.
                for (j, g) in p.destinations.iter().enumerate() {
                    if resource_groups.contains(g.as_str()) && !enabled_groups.contains(g.as_str())
                    {
                        r.warn(
                            format!("{field}.destinations[{j}]"),
                            format!("every resource in group `{g}` is disabled: this policy grants nothing"),
                        );
                    }
                }
            }
            PolicyKind::Peer => {
                if !p.destination_resources.is_empty() {
                    r.error(
                        format!("{field}.destination_resources"),
                        "a peer policy targets peer groups, not resources; use `kind = \"resource\"` to reach resources",
                    );
                }
                if p.destinations.is_empty() {
                    r.error(
                        format!("{field}.destinations"),
                        "a peer policy needs destination peer groups",
                    );
                }
                for (j, g) in p.destinations.iter().enumerate() {
                    let f = format!("{field}.destinations[{j}]");
                    if peer_groups.contains(g.as_str()) {
                        continue;
                    }
                    if resource_groups.contains(g.as_str()) {
                        r.error(f, format!("`{g}` is a resource group; a peer policy targets peer groups. Use `kind = \"resource\"`"));
                    } else {
                        r.error(f, format!("unknown peer group `{g}`"));
                    }
                }
            }
        }
        let has_ports = !p.ports.is_empty() || !p.port_ranges.is_empty();
        if has_ports && !matches!(p.protocol, Protocol::Tcp | Protocol::Udp) {
            r.error(
                format!("{field}.ports"),
                "ports apply to tcp and udp only; set `protocol` or remove the ports",
            );
        }
        for (j, port) in p.ports.iter().enumerate() {
            if *port == 0 || *port > 65535 {
                r.error(
                    format!("{field}.ports[{j}]"),
                    format!("{port} is out of range; ports are 1 to 65535"),
                );
            }
        }
        for (j, range) in p.port_ranges.iter().enumerate() {
            check_range(
                r,
                &format!("{field}.port_ranges[{j}]"),
                range.start,
                range.end,
            );
        }
        let grants_everything = p
            .destinations
            .iter()
            .any(|g| everything_groups.contains(g.as_str()));
        if p.action == Action::Accept && p.kind == PolicyKind::Resource && grants_everything {
            r.warn(field, "grants access to a 0.0.0.0/0 or ::/0 resource");
        }
    }
}

fn check_range(r: &mut Report, field: &str, start: u32, end: u32) {
    if start == 0 || start > 65535 || end == 0 || end > 65535 {
        r.error(
            field,
            format!("{start}-{end} is out of range; ports are 1 to 65535"),
        );
    } else if start > end {
        r.error(
            field,
            format!("{start}-{end} is inverted; write {end}-{start}"),
        );
    }
}

fn valid_wg_key(key: &str) -> bool {
    key.len() == 44
        && key.ends_with('=')
        && key[..43]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
