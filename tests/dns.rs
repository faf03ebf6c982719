//! Domain resources end to end: the routing peer's DNS forwarder in front
//! of the office's dnsmasq, wireguard-go clients asking through the tunnel.

use std::time::Duration;

use anyhow::Result;
use routing_peer_testbed::{
    dns_query,
    office::{exchange, Office, GRAFANA, ROUTER_OVERLAY},
    wait_for, Daemon,
};

const QUICK: Duration = Duration::from_millis(1500);

const WILDCARD: &str = r#"
[[networks.resources]]
name = "Berlin names"
address = "*.berlin.internal"
groups = ["Berlin"]

[[networks.resources]]
name = "Berlin apex"
address = "berlin.internal"
groups = ["Apex"]

[[policies]]
name = "Development to Berlin names"
sources = ["Development"]
destinations = ["Berlin"]
protocol = "tcp"
ports = [443]
"#;

fn start(extra: &str) -> Result<(Office, Daemon)> {
    let mut office = Office::new()?;
    office.grafana_address = "grafana.berlin.internal".into();
    office.grafana_groups = vec!["Internal Apps".into()];
    office.start_dnsmasq()?;
    let config = office.write_config(extra)?;
    let daemon = Daemon::start(&office.router, &config, &[])?;
    office.connect_clients()?;
    Ok((office, daemon))
}

fn resolve(office: &Office, who: &str, name: &str) -> Result<(String, Vec<std::net::IpAddr>)> {
    let client = if who == "sales" {
        &office.sales
    } else {
        &office.laptop
    };
    // The first query may race the first handshake: retry, bounded.
    wait_for(Duration::from_secs(15), || {
        Ok(dns_query(&client.ns, &format!("{ROUTER_OVERLAY}:53"), name).ok())
    })
}

fn resolved_in_status(daemon: &Daemon, resource: &str) -> Result<Vec<String>> {
    let status = daemon.cli_json(&["status", "--json"])?;
    Ok(status["status"]["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] == resource)
        .flat_map(|e| {
            e[1].as_array()
                .unwrap()
                .iter()
                .map(|ip| ip.as_str().unwrap().to_string())
        })
        .collect())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_resolved_domain_resource_is_reachable_on_the_allowed_port_only() -> Result<()> {
    let (office, daemon) = start("")?;
    // Before resolution, the address is no resource at all.
    assert!(office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_err());
    let (code, addrs) = resolve(&office, "laptop", "grafana.berlin.internal")?;
    assert_eq!((code.as_str(), addrs), ("No Error", vec![GRAFANA.parse()?]));
    assert_eq!(
        resolved_in_status(&daemon, "Grafana")?,
        vec![GRAFANA.to_string()]
    );
    let mut grafana = office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK)?;
    assert!(exchange(&mut grafana, "GET /")?.starts_with("grafana saw"));
    assert!(office.laptop.tcp(&format!("{GRAFANA}:80"), QUICK).is_err());
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn names_without_a_resource_or_a_policy_are_refused() -> Result<()> {
    let (office, daemon) = start(WILDCARD)?;
    assert_eq!(
        resolve(&office, "laptop", "example.com")?.0,
        "Query Refused"
    );
    assert_eq!(
        resolve(&office, "sales", "grafana.berlin.internal")?.0,
        "Query Refused",
        "Sales has no policy"
    );
    // The apex is its own resource, and no policy covers it.
    assert_eq!(
        resolve(&office, "laptop", "berlin.internal")?.0,
        "Query Refused"
    );
    // The wildcard covers subdomains, and the CNAME chain is followed.
    let (code, addrs) = resolve(&office, "laptop", "dash.berlin.internal")?;
    assert_eq!((code.as_str(), addrs), ("No Error", vec![GRAFANA.parse()?]));
    let dns = &daemon.cli_json(&["status", "--json"])?["status"]["dns"];
    assert!(dns["refused"].as_u64().unwrap() >= 3, "{dns}");
    assert!(dns["installed"].as_u64().unwrap() >= 1, "{dns}");
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn expired_entries_are_gone_until_resolved_again() -> Result<()> {
    let (office, daemon) = start("")?;
    resolve(&office, "laptop", "grafana.berlin.internal")?;
    assert!(office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_ok());
    // TTL 1 s, floor 1 s, grace 1 s: gone within a few seconds.
    wait_for(Duration::from_secs(10), || {
        Ok(resolved_in_status(&daemon, "Grafana")?
            .is_empty()
            .then_some(()))
    })?;
    assert!(
        office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_err(),
        "expired: denied"
    );
    resolve(&office, "laptop", "grafana.berlin.internal")?;
    assert!(
        office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_ok(),
        "resolved again: allowed"
    );
    let dns = &daemon.cli_json(&["status", "--json"])?["status"]["dns"];
    assert!(dns["expired"].as_u64().unwrap() >= 1, "{dns}");
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn removing_the_resource_removes_its_entries() -> Result<()> {
    let (mut office, daemon) = start("")?;
    // A long-lived entry: only the removal can take it away.
    let config = office
        .config("")
        .replace("min_ttl_secs = 1", "min_ttl_secs = 600");
    std::fs::write(office.dir.path().join("routing-peer.toml"), &config)?;
    daemon.reload();
    std::thread::sleep(Duration::from_secs(2));
    resolve(&office, "laptop", "grafana.berlin.internal")?;
    assert!(office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_ok());
    office.grafana_groups = vec!["Internal Apps".into()];
    let without = config.replace(
        "name = \"Grafana\"\naddress = \"grafana.berlin.internal\"",
        "name = \"Grafana\"\nenabled = false\naddress = \"grafana.berlin.internal\"",
    );
    std::fs::write(office.dir.path().join("routing-peer.toml"), without)?;
    wait_for(Duration::from_secs(10), || {
        Ok(resolved_in_status(&daemon, "Grafana")?
            .is_empty()
            .then_some(()))
    })?;
    assert!(office.laptop.tcp(&format!("{GRAFANA}:443"), QUICK).is_err());
    assert_eq!(
        resolve(&office, "laptop", "grafana.berlin.internal")?.0,
        "Query Refused",
        "disabled resources are not answered"
    );
    Ok(())
}
