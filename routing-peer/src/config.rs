//! The declarative configuration: one routing peer and the Networks it
//! serves, in NetBird's terms. Parsing is strict (unknown fields are errors)
//! and validation reports every problem at once, each with the file, the
//! field and the fix.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub routing_peer: RoutingPeer,
    #[serde(default)]
    pub conntrack: Conntrack,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingPeer {
    pub name: String,
    /// The WireGuard interface (created if missing).
    pub overlay_interface: String,
    /// This peer's overlay address(es), with the overlay prefix: `100.64.0.1/10`.
    pub overlay_addresses: Vec<IpNet>,
    pub private_key_file: PathBuf,
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    pub lan_interfaces: Vec<String>,
    /// Groups this routing peer belongs to: targets of peer (input-chain) policies.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_metric")]
    pub metric: u16,
    #[serde(default)]
    pub snat_ports: Option<PortRange>,
    #[serde(default)]
    pub wireguard: WireguardMode,
    /// L2 overlay stand-ins whose far end runs XDP (veth in benchmarks):
    /// replies are then redirected by XDP itself.
    #[serde(default)]
    pub xdp_redirect_interfaces: Vec<String>,
    /// A peer whose last handshake is older than this is reported down.
    #[serde(default = "default_peer_down_after")]
    pub peer_down_after_secs: u64,
}

fn default_peer_down_after() -> u64 {
    180
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireguardMode {
    #[default]
    Auto,
    Kernel,
    Userspace,
    /// The overlay interface is managed by someone else (or is an L2
    /// stand-in for benchmarks); only the data path is attached to it.
    External,
}

fn default_listen_port() -> u16 {
    51820
}
fn default_mtu() -> u16 {
    1280
}
fn default_metric() -> u16 {
    9999
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    pub max_flows: u32,
    pub tcp_established_secs: u64,
    pub tcp_transitory_secs: u64,
    pub udp_secs: u64,
    pub udp_unreplied_secs: u64,
    pub icmp_secs: u64,
    /// How long a reset TCP flow lingers before a new SYN must pass policy.
    pub tcp_reset_secs: u64,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            max_flows: 262_144,
            tcp_established_secs: 2 * 3600 + 4 * 60,
            tcp_transitory_secs: 240,
            udp_secs: 120,
            udp_unreplied_secs: 30,
            icmp_secs: 30,
            tcp_reset_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    pub port: u16,
    /// Upstream servers; empty means the host's resolvers.
    pub upstreams: Vec<std::net::SocketAddr>,
    /// Installed addresses live at least this long, whatever the record's TTL.
    pub min_ttl_secs: u32,
    /// Added to the TTL before an address expires, so a client that just
    /// got the answer never races the expiry.
    pub grace_secs: u32,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            port: 53,
            upstreams: Vec::new(),
            min_ttl_secs: 30,
            grace_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub public_key: String,
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub masquerade: bool,
    #[serde(default)]
    pub resources: Vec<Resource>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    /// An IP, a CIDR, a domain or a wildcard domain (`*.example.internal`).
    pub address: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceAddress {
    /// A `/32` or `/128`.
    Host(IpNet),
    Subnet(IpNet),
    Domain(String),
    /// `*.suffix`: subdomains of `suffix` at any depth, never `suffix` itself.
    Wildcard(String),
}

impl ResourceAddress {
    pub fn kind(&self) -> &'static str {
        match self {
            ResourceAddress::Host(_) => "host",
            ResourceAddress::Subnet(_) => "subnet",
            ResourceAddress::Domain(_) => "domain",
            ResourceAddress::Wildcard(_) => "wildcard",
        }
    }
}

impl fmt::Display for ResourceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceAddress::Host(n) | ResourceAddress::Subnet(n) => write!(f, "{n}"),
            ResourceAddress::Domain(d) => write!(f, "{d}"),
            ResourceAddress::Wildcard(d) => write!(f, "*.{d}"),
        }
    }
}

/// Parses a resource address; the error says what is wrong.
pub fn parse_resource_address(raw: &str) -> Result<ResourceAddress, String> {
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(ResourceAddress::Host(IpNet::from(ip)));
    }
    if raw.contains('/') {
        let net: IpNet = raw
            .parse()
            .map_err(|e| format!("`{raw}` is not a valid CIDR: {e}"))?;
        if net.network() != net.addr() {
            return Err(format!(
                "`{raw}` has host bits set; write `{}`",
                net.trunc()
            ));
        }
        return Ok(if net.prefix_len() == net.max_prefix_len() {
            ResourceAddress::Host(net)
        } else {
            ResourceAddress::Subnet(net)
        });
    }
    let lower = raw.trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, lower.clone()),
    };
    if name.contains('*') {
        return Err(format!(
            "`{raw}`: a wildcard may only be the whole leftmost label, as in `*.example.internal`"
        ));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{raw}` is neither an IP, a CIDR nor a valid domain name"
        ));
    }
    Ok(if wildcard {
        ResourceAddress::Wildcard(name)
    } else {
        ResourceAddress::Domain(name)
    })
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Through the routing peer to resources: the forward chain.
    #[default]
    Resource,
    /// To the routing peer itself: the input chain.
    Peer,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    All,
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub start: u32,
    pub end: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub kind: PolicyKind,
    /// Source peer groups.
    pub sources: Vec<String>,
    /// Destination groups: resource groups (kind = "resource") or peer groups (kind = "peer").
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Destination resources by name (kind = "resource" only).
    #[serde(default)]
    pub destination_resources: Vec<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub ports: Vec<u32>,
    #[serde(default)]
    pub port_ranges: Vec<PortRange>,
    #[serde(default)]
    pub action: Action,
}

impl Policy {
    /// Port ranges this policy matches; empty means every port.
    pub fn port_ranges(&self) -> Vec<(u16, u16)> {
        self.ports
            .iter()
            .map(|p| (*p as u16, *p as u16))
            .chain(
                self.port_ranges
                    .iter()
                    .map(|r| (r.start as u16, r.end as u16)),
            )
            .collect()
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Everything wrong with a file, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.file.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}: {}", self.file.display(), p.field, p.message)?;
        }
        Ok(())
    }
}

/// A valid configuration with its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    parse(path, &read_text(path)?)
}

/// The file as UTF-8 text; a file that is not says at which byte it stops.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let problem = |message: String| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            field: "(file)".into(),
            message,
        }],
    };
    let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        problem(format!(
            "not UTF-8 at byte {at} (line {line}): save the file as UTF-8"
        ))
    })
}

pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_else(|| "(syntax)".into());
        ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                field: line,
                message: e.message().to_string(),
            }],
        }
    })?;
    validated(path, config)
}

/// `config`, read from `path`, if it passes validation.
pub fn validated(path: &Path, config: Config) -> Result<Loaded, ConfigError> {
    let (problems, warnings) = validate(&config);
    if problems.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }
}

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
/// The permission bits of a secret's file when group or others may read
/// it. Only regular files hold secrets (a test's `/dev/null` holds none).
pub fn others_can_read(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    (meta.is_file() && mode & 0o044 != 0).then_some(mode)
}

pub fn validate(config: &Config) -> (Vec<Problem>, Vec<Problem>) {
    let mut r = Report {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
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
    if config.conntrack.max_flows < 1024 {
        r.error(
            "conntrack.max_flows",
            format!(
                "{} is too small for a gateway; use at least 1024",
                config.conntrack.max_flows
            ),
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
        check_range(&mut r, "routing_peer.snat_ports", range.start, range.end);
        if range.start < 1024 {
            r.error(
                "routing_peer.snat_ports.start",
                "SNAT ports below 1024 collide with services; start at 1024 or above",
            );
        }
    }

    // Peers: names, keys and addresses unique; addresses inside the overlay.
    check_unique(
        &mut r,
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
        if !valid_wg_key(&p.public_key) {
            r.error(
                format!("{field}.public_key"),
                "not a WireGuard key: expected 44 base64 characters (as `wg pubkey` prints)",
            );
        }
        if let Some(first) = keys.insert(p.public_key.clone(), field.clone()) {
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

    // Networks and resources.
    check_unique(
        &mut r,
        "network",
        config
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("networks[{i}].name"), n.name.as_str())),
    );
    check_unique(
        &mut r,
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
    // Groups holding a 0.0.0.0/0 or ::/0 resource, for the broad-grant warning.
    let mut everything_groups: HashSet<&str> = HashSet::new();
    for (i, n) in config.networks.iter().enumerate() {
        for (j, res) in n.resources.iter().enumerate() {
            let field = format!("networks[{i}].resources[{j}]");
            resource_names.insert(res.name.as_str());
            if !res.enabled {
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
    let peer_groups: HashSet<&str> = config
        .peers
        .iter()
        .flat_map(|p| p.groups.iter().map(String::as_str))
        .chain(rp.groups.iter().map(String::as_str))
        .collect();

    // Policies.
    check_unique(
        &mut r,
        "policy",
        config
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("policies[{i}].name"), p.name.as_str())),
    );
    for (i, p) in config.policies.iter().enumerate() {
        let field = format!("policies[{i}]");
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
                for (j, g) in p.destinations.iter().enumerate() {
                    let members = config
                        .networks
                        .iter()
                        .flat_map(|n| &n.resources)
                        .filter(|res| res.groups.contains(g));
                    let (mut any, mut enabled) = (false, false);
                    for res in members {
                        any = true;
                        enabled |= res.enabled;
                    }
                    if any && !enabled {
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
                &mut r,
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
    (r.problems, r.warnings)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = r#"
[routing_peer]
name = "gw"
overlay_interface = "wg0"
overlay_addresses = ["100.64.0.1/10"]
private_key_file = "/dev/null"
lan_interfaces = ["eth0"]

[[peers]]
name = "alice"
public_key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
addresses = ["100.64.0.2"]
groups = ["Dev"]

[[networks]]
name = "office"
[[networks.resources]]
name = "wiki"
address = "198.51.100.5/32"
groups = ["Apps"]
enabled = false

[[policies]]
name = "by-name"
sources = ["Dev"]
destination_resources = ["wiki"]

[[policies]]
name = "by-group"
sources = ["Dev"]
destinations = ["Apps"]
"#;
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
}
