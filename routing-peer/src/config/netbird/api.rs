//! NetBird's management API documents, as its OpenAPI document gives them
//! (`shared/management/http/api/openapi.yml`): the fields a routing peer
//! reads. Required fields are required here, so a document that breaks the
//! schema is refused whole. Go sends empty lists as `null`: every list
//! accepts it. Policies, rules, resources and routers keep the fields this
//! version does not know, to report them (and for policies, grant nothing).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A list that NetBird may send as `null`.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Fields this version does not read, by name.
pub type Unknown = BTreeMap<String, Value>;

#[derive(Clone, Debug, Deserialize)]
pub struct GroupMinimum {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PeerMinimum {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// `Resource`: a reference by id and type (`host`, `subnet`, `domain`, `peer`).
#[derive(Clone, Debug, Deserialize)]
pub struct ResourceRef {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `/api/peers`.
#[derive(Clone, Debug, Deserialize)]
pub struct Peer {
    pub id: String,
    pub name: String,
    pub ip: String,
    #[serde(deserialize_with = "list")]
    pub groups: Vec<GroupMinimum>,
    #[serde(default)]
    pub dns_label: String,
    #[serde(default)]
    pub connected: bool,
}

/// `/api/groups`.
#[derive(Clone, Debug, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    #[serde(deserialize_with = "list")]
    pub peers: Vec<PeerMinimum>,
    #[serde(deserialize_with = "list")]
    pub resources: Vec<ResourceRef>,
}

/// `/api/networks`.
#[derive(Clone, Debug, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(deserialize_with = "list")]
    pub routers: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub resources: Vec<String>,
}

/// `/api/networks/{id}/resources`.
#[derive(Clone, Debug, Deserialize)]
pub struct NetworkResource {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub address: String,
    pub enabled: bool,
    #[serde(deserialize_with = "list")]
    pub groups: Vec<GroupMinimum>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `/api/networks/routers`.
#[derive(Clone, Debug, Deserialize)]
pub struct NetworkRouter {
    pub id: String,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default, deserialize_with = "list")]
    pub peer_groups: Vec<String>,
    pub metric: u16,
    pub masquerade: bool,
    pub enabled: bool,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `/api/policies`.
#[derive(Clone, Debug, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    #[serde(deserialize_with = "list")]
    pub source_posture_checks: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub rules: Vec<PolicyRule>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RulePortRange {
    pub start: u32,
    pub end: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PolicyRule {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    pub action: String,
    pub bidirectional: bool,
    pub protocol: String,
    #[serde(default, deserialize_with = "list")]
    pub ports: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    pub port_ranges: Vec<RulePortRange>,
    #[serde(default, deserialize_with = "list")]
    pub sources: Vec<GroupMinimum>,
    #[serde(default, rename = "sourceResource")]
    pub source_resource: Option<ResourceRef>,
    #[serde(default, deserialize_with = "list")]
    pub destinations: Vec<GroupMinimum>,
    #[serde(default, rename = "destinationResource")]
    pub destination_resource: Option<ResourceRef>,
    /// SSH only; read so it is not reported as unknown.
    #[serde(default)]
    pub authorized_groups: Option<Value>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Everything one sync reads: the account-wide lists, and the resources of
/// each network this peer serves (by network id).
#[derive(Clone, Debug, Default)]
pub struct Documents {
    pub peers: Vec<Peer>,
    pub groups: Vec<Group>,
    pub policies: Vec<Policy>,
    pub networks: Vec<Network>,
    pub routers: Vec<NetworkRouter>,
    pub resources: BTreeMap<String, Vec<NetworkResource>>,
}
