//! The office walkthrough with its configuration from NetBird's management
//! API (a fixture server on the routing peer's loopback, serving documents
//! written from NetBird's OpenAPI schema), beside a WireGuard the test runs
//! as the NetBird agent would: the same verdicts as the TOML walkthrough,
//! a policy removed on the server cutting its flows within a poll, and
//! every API fault leaving forwarding as it was.

use std::time::Duration;

use anyhow::{bail, Result};
use routing_peer_testbed::{
    netbird_api::{check_schema, fixtures_dir, load_documents, Fault, NetbirdApi},
    office::{exchange, Office, ROUTER_LAN, WIKI},
    run, wait_for, Daemon,
};
use serde_json::{json, Value};

const QUICK: Duration = Duration::from_millis(1500);

struct World {
    office: Office,
    api: NetbirdApi,
    config: std::path::PathBuf,
}

fn world(poll_secs: u64) -> Result<World> {
    let office = Office::new()?;
    office.agent_wireguard()?;
    let api = NetbirdApi::start(
        Some(&office.router),
        load_documents(&fixtures_dir().join("berlin"))?,
    )?;
    let token = api.write_token(office.dir.path())?;
    let config = office.netbird_config(&api.url(), &token, poll_secs)?;
    Ok(World {
        office,
        api,
        config,
    })
}

fn start(w: &mut World) -> Result<Daemon> {
    let log = w.office.dir.path().join("daemon.log");
    let daemon = Daemon::start_logged(&w.office.router, &w.config, &[], log)?;
    w.office.connect_clients()?;
    Ok(daemon)
}

fn connect(office: &Office, to: &str) -> Result<std::net::TcpStream> {
    wait_for(Duration::from_secs(15), || {
        Ok(office.laptop.tcp(to, QUICK).ok())
    })
}

fn source(daemon: &Daemon) -> Result<Value> {
    Ok(daemon.cli_json(&["status", "--json"])?["status"]["source"].clone())
}

#[test]
fn every_fixture_has_the_fields_and_types_of_netbirds_schema() -> Result<()> {
    let docs = load_documents(&fixtures_dir().join("berlin"))?;
    assert_eq!(docs.len(), 6);
    for (path, doc) in &docs {
        check_schema(path, doc)?;
    }
    // The check can fail: a field the schema lacks, a missing required
    // one, a wrong type.
    let mut broken = docs["/api/networks/routers"].clone();
    broken[0]["weight"] = json!(1);
    assert!(check_schema("/api/networks/routers", &broken).is_err());
    let mut broken = docs["/api/policies"].clone();
    broken[0]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("bidirectional");
    assert!(check_schema("/api/policies", &broken).is_err());
    let mut broken = docs["/api/peers"].clone();
    broken[0]["connected"] = json!("yes");
    assert!(check_schema("/api/peers", &broken).is_err());
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn the_walkthrough_from_netbird_allows_exactly_what_the_policy_says() -> Result<()> {
    let mut w = world(1)?;
    let daemon = start(&mut w)?;
    let office = &w.office;
    let mut wiki = connect(office, &format!("{WIKI}:443"))?;
    assert_eq!(
        exchange(&mut wiki, "GET /")?,
        format!("wiki saw {ROUTER_LAN}: GET /")
    );
    assert!(office.laptop.tcp(&format!("{WIKI}:80"), QUICK).is_err());
    assert!(office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_err());

    let s = source(&daemon)?;
    assert_eq!(s["kind"], "netbird");
    assert_eq!(s["peer"], "berlin-gw (d2pgw00000000000001)");
    assert!(s["last_sync_unix"].is_u64());
    // 5 account-wide lists and the one served network's resources.
    assert_eq!(s["requests_per_sync"], 6);
    assert!(w.api.gzip_served() > 0, "gzip was asked for and served");
    let networks = daemon.cli_json(&["networks", "ls", "--json"])?;
    assert_eq!(networks[0]["name"], "Berlin Office");
    assert_eq!(networks[0]["metric"], 100);
    assert_eq!(networks[0]["masquerade"], true);
    let human = daemon.cli(&["status"])?;
    assert!(human.contains("source:       NetBird"), "{human}");
    // NetBird's peers carry no key: found in the agent's WireGuard by address.
    wait_for(Duration::from_secs(5), || {
        let s = daemon.cli_json(&["status", "--json"])?;
        let up = s["status"]["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "laptop"))
            .is_some_and(|p| p["up"] == true);
        Ok(up.then_some(()))
    })?;

    // A posture-checked policy for Sales: it grants nothing, and
    // `networks ls` says so.
    w.api.edit("/api/policies", |p| {
        let mut sales = p[0].clone();
        sales["id"] = json!("d2lpos0000000000002");
        sales["name"] = json!("Sales to Internal Apps");
        sales["source_posture_checks"] = json!(["d2kchk0000000000001"]);
        sales["rules"][0]["sources"][0] = json!({"id": "d2gsal0000000000003", "name": "Sales",
            "peers_count": 1, "resources_count": 0});
        if let Some(list) = p.as_array_mut() {
            list.push(sales);
        }
    });
    check_schema(
        "/api/policies",
        &w.api.document("/api/policies").unwrap_or_default(),
    )?;
    wait_for(Duration::from_secs(8), || {
        let n = daemon.cli_json(&["networks", "ls", "--json"])?;
        Ok((n[0]["resources"][0]["posture_checked"][0] == "Sales to Internal Apps").then_some(()))
    })?;
    assert!(
        office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_err(),
        "posture-checked Sales let in"
    );
    assert!(daemon
        .cli(&["networks", "ls"])?
        .contains("posture checks: grants nothing"));

    // The policy goes on the server: the open connection is cut within a
    // poll (1 s), and no new one is let through.
    let requests = w.api.requests().len();
    w.api.set("/api/policies", json!([]));
    wait_for(Duration::from_secs(8), || {
        Ok(exchange(&mut wiki, "still there?").is_err().then_some(()))
    })?;
    assert!(office.laptop.tcp(&format!("{WIKI}:443"), QUICK).is_err());
    assert!(w.api.requests().len() > requests);
    let log = daemon.log_text();
    assert!(!log.contains(&w.api.token), "the token is in the log");
    Ok(())
}

/// Breaks the server one way, waits until the daemon has counted the
/// fault under `reason`, and checks the laptop still reaches the wiki.
fn fault_keeps_forwarding(
    w: &World,
    daemon: &Daemon,
    reason: &str,
    break_it: impl FnOnce(&NetbirdApi),
) -> Result<()> {
    let before = source(daemon)?["errors"][reason].as_u64().unwrap_or(0);
    break_it(&w.api);
    wait_for(Duration::from_secs(30), || {
        let now = source(daemon)?["errors"][reason].as_u64().unwrap_or(0);
        Ok((now > before).then_some(()))
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{reason}: {e}; source: {}",
            source(daemon).unwrap_or_default()
        )
    })?;
    let s = source(daemon)?;
    assert_eq!(s["last_error_reason"], reason);
    let mut wiki = w.office.laptop.tcp(&format!("{WIKI}:443"), QUICK)?;
    assert_eq!(
        exchange(&mut wiki, "GET /")?,
        format!("wiki saw {ROUTER_LAN}: GET /"),
        "{reason}: forwarding changed"
    );
    assert!(
        w.office.sales.tcp(&format!("{WIKI}:443"), QUICK).is_err(),
        "{reason}: Sales let in"
    );
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn api_faults_keep_the_last_good_configuration() -> Result<()> {
    let mut w = world(1)?;
    let daemon = start(&mut w)?;
    connect(&w.office, &format!("{WIKI}:443"))?;
    let status = |code| move |api: &NetbirdApi| api.set_fault(Some(Fault::Status(code)));
    fault_keeps_forwarding(&w, &daemon, "unauthorized", status(401))?;
    fault_keeps_forwarding(&w, &daemon, "forbidden", status(403))?;
    fault_keeps_forwarding(&w, &daemon, "server_error", status(503))?;
    fault_keeps_forwarding(&w, &daemon, "rate_limited", |api| {
        api.set_fault(Some(Fault::RateLimited(2)))
    })?;
    fault_keeps_forwarding(&w, &daemon, "malformed", |api| {
        api.set_fault(Some(Fault::Malformed))
    })?;
    fault_keeps_forwarding(&w, &daemon, "timeout", |api| {
        api.set_fault(Some(Fault::Slow(Duration::from_secs(3))))
    })?;
    fault_keeps_forwarding(&w, &daemon, "schema", |api| {
        api.set_fault(None);
        api.edit("/api/networks/routers", |r| {
            if let Some(o) = r[0].as_object_mut() {
                o.remove("enabled");
            }
        });
    })?;
    let routers = load_documents(&fixtures_dir().join("berlin"))?["/api/networks/routers"].clone();
    fault_keeps_forwarding(&w, &daemon, "inconsistent", |api| {
        api.set("/api/networks/routers", routers);
        // Half an update: the policy names a group that is gone.
        api.edit("/api/groups", |g| {
            if let Some(a) = g.as_array_mut() {
                a.retain(|g| g["name"] != "Internal Apps");
            }
        });
    })?;
    // No server at all: the file now names a port nothing listens on
    // (the change reloads, and the poller starts over).
    fault_keeps_forwarding(&w, &daemon, "unreachable", |api| {
        let text = std::fs::read_to_string(&w.config).unwrap_or_default();
        let _ = std::fs::write(&w.config, text.replace(&api.url(), "http://127.0.0.1:9"));
    })?;
    let log = daemon.log_text();
    assert!(log.contains("running configuration kept"), "{log}");
    assert!(!log.contains(&w.api.token), "the token is in the log");
    let body = daemon.cli(&["status", "--json"])?;
    assert!(!body.contains("nbp_fixture"), "the token is in the status");
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn import_prints_a_standalone_config_and_diff_shows_the_next_sync() -> Result<()> {
    let mut w = world(3600)?;
    let daemon = start(&mut w)?;
    let bin = routing_peer_testbed::routing_peer_bin();
    let cli = |args: &[&str]| -> Result<String> {
        let out = run(w
            .office
            .router
            .cmd(bin.to_str().unwrap_or_default())
            .args(["--instance", &daemon.instance])
            .args(args))?;
        Ok(String::from_utf8(out.stdout)?)
    };
    let config = w.config.display().to_string();
    let toml = cli(&["netbird", "import", "--config", &config])?;
    assert!(!toml.contains(&w.api.token));
    assert!(!toml.contains("[netbird]"));
    assert!(toml.contains("Development to Internal Apps"), "{toml}");
    let standalone = w.office.dir.path().join("imported.toml");
    std::fs::write(&standalone, &toml)?;
    let valid = cli(&["validate", "--config", &standalone.display().to_string()])?;
    assert!(valid.contains("valid"), "{valid}");

    assert!(cli(&["netbird", "diff", "--config", &config])?.contains("no change"));
    w.api.set("/api/policies", json!([]));
    let diff = cli(&["netbird", "diff", "--config", &config])?;
    assert!(
        diff.contains("- policy `Development to Internal Apps`"),
        "{diff}"
    );
    // Only a dry run: the daemon (polling hourly) still forwards.
    connect(&w.office, &format!("{WIKI}:443"))?;
    Ok(())
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_sync_asks_for_the_served_networks_only() -> Result<()> {
    // 60 networks, 50 of them routed by this peer: 5 lists and 50
    // resource lists per sync, whatever the account's size.
    let mut docs = load_documents(&fixtures_dir().join("berlin"))?;
    let template = docs["/api/networks"][0].clone();
    let mut networks = Vec::new();
    let mut routers = Vec::new();
    for i in 0..60 {
        let id = format!("d2nnet{i:013}");
        let mut n = template.clone();
        n["id"] = json!(id);
        n["name"] = json!(format!("Site {i}"));
        n["resources"] = json!([]);
        n["routers"] = json!([format!("d2trtr{i:013}")]);
        networks.push(n);
        let peer = if i < 50 {
            "d2pgw00000000000001"
        } else {
            "d2plap0000000000002"
        };
        routers.push(json!({"id": format!("d2trtr{i:013}"), "peer": peer,
                            "metric": 100, "masquerade": true, "enabled": true}));
        docs.insert(format!("/api/networks/{id}/resources"), json!([]));
    }
    docs.insert("/api/networks".into(), json!(networks));
    docs.insert("/api/networks/routers".into(), json!(routers));
    for (path, doc) in &docs {
        check_schema(path, doc)?;
    }
    let office = Office::new()?;
    let api = NetbirdApi::start(Some(&office.router), docs)?;
    let token = api.write_token(office.dir.path())?;
    let config = office.netbird_config(&api.url(), &token, 30)?;
    let out = run(office
        .router
        .cmd(
            routing_peer_testbed::routing_peer_bin()
                .to_str()
                .unwrap_or_default(),
        )
        .args([
            "netbird",
            "import",
            "--config",
            &config.display().to_string(),
        ]))?;
    let toml = String::from_utf8(out.stdout)?;
    assert!(toml.contains("Site 49") && !toml.contains("Site 50"));
    let requests = api.requests();
    assert_eq!(requests.len(), 55, "{requests:?}");
    if requests.iter().any(|r| r.contains("d2nnet00000000000055")) {
        bail!("fetched an unserved network's resources");
    }
    Ok(())
}
