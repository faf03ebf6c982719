//! The serde types of the configuration file: one routing peer and the
//! Networks it serves, in NetBird's terms. Unknown fields are errors.

use std::{fmt, net::IpAddr, path::PathBuf};

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
    pub fragments: Fragments,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Peers, networks and policies come from NetBird's management API
    /// (`crate::netbird`) instead of this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbird: Option<Netbird>,
}

/// `[netbird]`: where the imported model comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Netbird {
    /// The management service, e.g. `https://api.netbird.io`; the API is under `/api/`.
    pub management_url: String,
    /// A service user's personal access token; readable by its owner only.
    pub token_file: PathBuf,
    /// This routing peer's NetBird peer, by id or name; by default the peer
    /// whose `ip` is one of `routing_peer.overlay_addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// Every request's deadline, connecting included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_poll_secs() -> u64 {
    30
}
fn default_timeout_secs() -> u64 {
    10
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingPeer {
    pub name: String,
    /// The WireGuard interface (created if missing).
    pub overlay_interface: String,
    /// This peer's overlay address(es), with the overlay prefix: `100.64.0.1/10`.
    pub overlay_addresses: Vec<IpNet>,
    /// Required unless WireGuard is `external` (then it is someone else's).
    #[serde(default, skip_serializing_if = "is_empty_path")]
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

fn is_empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

fn default_peer_down_after() -> u64 {
    180
}

/// How WireGuard runs: configured (`auto` picks kernel when the module is
/// there), given on the command line, and reported once running.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
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

/// Flow and drop events: where they are exported (`observe` always has them).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// JSON lines of every event, rotated by size; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A file is rotated before a line would take it past this size.
    pub file_max_bytes: u64,
    /// Rotated files kept (`.1` is the newest).
    pub file_keep: u32,
    /// An IPFIX (RFC 7011) collector over UDP, e.g. `192.0.2.10:4739`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipfix_collector: Option<std::net::SocketAddr>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            file: None,
            file_max_bytes: 64 << 20,
            file_keep: 5,
            ipfix_collector: None,
        }
    }
}

/// IP fragments: how many datagrams' first-fragment verdicts the data path
/// keeps (an LRU), and how long each stands (never refreshed).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fragments {
    pub max_datagrams: u32,
    pub timeout_secs: u64,
}

impl Default for Fragments {
    fn default() -> Self {
        Self {
            max_datagrams: 8192,
            timeout_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    pub port: u16,
    /// More ports to serve on: NetBird clients ask a routing peer on 22054
    /// (5353 before v0.59), which `[netbird]` adds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_ports: Vec<u16>,
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
            extra_ports: Vec::new(),
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
    /// Empty when WireGuard is managed elsewhere (NetBird's REST peers carry
    /// no key): valid only with `wireguard = "external"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// This network's route metric (its router's); `routing_peer.metric` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u16>,
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
    /// Posture checks the sources must pass. This routing peer cannot
    /// evaluate them, so a policy that names any grants nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posture_checks: Vec<String>,
}

impl Policy {
    /// Whether the data path applies this policy at all: enabled, and no
    /// posture check it cannot evaluate (fail closed).
    pub fn applies(&self) -> bool {
        self.enabled && self.posture_checks.is_empty()
    }

    /// Whether the data path applies this policy to the resource `name`
    /// in `groups`: an enabled resource policy that names it or one of its
    /// groups. The one answer for `networks ls` and the DNS forwarder.
    pub fn covers(&self, name: &str, groups: &[String]) -> bool {
        self.applies()
            && self.kind == PolicyKind::Resource
            && (self.destination_resources.iter().any(|r| r == name)
                || self.destinations.iter().any(|g| groups.contains(g)))
    }

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

impl Dns {
    /// Every port the forwarder serves, `port` first.
    pub fn ports(&self) -> Vec<u16> {
        let mut out = vec![self.port];
        for p in &self.extra_ports {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }
}

impl Config {
    /// The policies the data path applies to the resource `name` in `groups`.
    pub fn policies_covering<'a>(
        &'a self,
        name: &'a str,
        groups: &'a [String],
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter(move |p| p.covers(name, groups))
    }
}
