//! `routing-peer networks ls`: networks, resources, resolved addresses and
//! the policies the data path applies to each resource.

use anyhow::Result;
use serde::Serialize;

use super::{context, load_config_of, require_state, table::Table};
use crate::{
    config::{parse_resource_address, Action, Config},
    control::Status,
};

#[derive(Debug, Serialize)]
pub struct NetworkRow {
    pub name: String,
    pub description: String,
    pub masquerade: bool,
    pub served: bool,
    pub routing_peer: String,
    pub metric: u16,
    pub resources: Vec<ResourceRow>,
}

#[derive(Debug, Serialize)]
pub struct ResourceRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
    pub groups: Vec<String>,
    pub enabled: bool,
    pub resolved: Vec<String>,
    /// Enabled resource policies that name it or one of its groups.
    pub policies: Vec<String>,
    /// Those of them that drop.
    pub drop_policies: Vec<String>,
    /// Enabled policies naming it that require posture checks, which this
    /// routing peer cannot evaluate: they grant nothing.
    pub posture_checked: Vec<String>,
}

pub fn rows(config: &Config, status: &Status) -> Vec<NetworkRow> {
    config
        .networks
        .iter()
        .map(|n| NetworkRow {
            name: n.name.clone(),
            description: n.description.clone(),
            masquerade: n.masquerade,
            served: true,
            routing_peer: status.name.clone(),
            metric: n.metric.unwrap_or(status.metric),
            resources: n
                .resources
                .iter()
                .map(|r| {
                    let covering: Vec<_> = config.policies_covering(&r.name, &r.groups).collect();
                    let names = |only_drops: bool| {
                        covering
                            .iter()
                            .filter(|p| !only_drops || p.action == Action::Drop)
                            .map(|p| p.name.clone())
                            .collect()
                    };
                    ResourceRow {
                        name: r.name.clone(),
                        kind: parse_resource_address(&r.address)
                            .map(|a| a.kind())
                            .unwrap_or("invalid")
                            .to_string(),
                        address: r.address.clone(),
                        groups: r.groups.clone(),
                        enabled: r.enabled,
                        resolved: status
                            .resolved
                            .iter()
                            .find(|(name, _)| name == &r.name)
                            .map(|(_, ips)| ips.clone())
                            .unwrap_or_default(),
                        policies: names(false),
                        drop_policies: names(true),
                        posture_checked: config
                            .policies
                            .iter()
                            .filter(|p| !p.posture_checks.is_empty())
                            .filter(|p| {
                                let unchecked = crate::config::Policy {
                                    posture_checks: Vec::new(),
                                    ..(*p).clone()
                                };
                                unchecked.covers(&r.name, &r.groups)
                            })
                            .map(|p| p.name.clone())
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect()
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

pub fn print(networks: &[NetworkRow]) {
    for n in networks {
        println!(
            "Network: {}  (served by {}, metric {}, masquerade {})",
            n.name,
            n.routing_peer,
            n.metric,
            if n.masquerade { "on" } else { "off" }
        );
        let mut t = Table::new(&[
            "  RESOURCE",
            "TYPE",
            "ADDRESS",
            "RESOLVED",
            "GROUPS",
            "POLICIES",
            "ENABLED",
        ]);
        for r in &n.resources {
            let policies: Vec<String> = r
                .policies
                .iter()
                .map(|p| match r.drop_policies.contains(p) {
                    true => format!("{p} (drop)"),
                    false => p.clone(),
                })
                .chain(
                    r.posture_checked
                        .iter()
                        .map(|p| format!("{p} (posture checks: grants nothing)")),
                )
                .collect();
            t.row(vec![
                format!("  {}", r.name),
                r.kind.clone(),
                r.address.clone(),
                or_dash(&r.resolved),
                r.groups.join(","),
                or_dash(&policies),
                if r.enabled { "yes" } else { "no" }.into(),
            ]);
        }
        t.print();
        println!();
    }
}

pub fn run(instance: &str, json: bool) -> Result<()> {
    let status = require_state(&context(instance), instance)?;
    let config = load_config_of(&status)?;
    let networks = rows(&config, &status);
    if json {
        println!("{}", serde_json::to_string_pretty(&networks)?);
    } else {
        print(&networks);
    }
    Ok(())
}
