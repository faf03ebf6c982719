//! `cargo xtask demo`: the office walkthrough, end to end, on this machine.
//!
//! A remote engineer (group Development) reaches the Berlin office's wiki
//! and Grafana through routing-peer; port 80 and the Sales peer are denied.
//! The laptop and the Sales machine run wireguard-go configured with `wg`;
//! the office LAN has real TCP servers. Everything lives in throwaway
//! namespaces, torn down by guards on success, failure or Ctrl-C.
//!
//! `--netbird` runs the same story with the configuration taken from
//! NetBird's management API: a fixture server on the routing peer's
//! loopback serves the account, WireGuard runs as NetBird's agent would
//! run it, and clients ask the forwarder on NetBird's port 22054.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use routing_peer_testbed::{
    dns_query,
    netbird_api::{fixtures_dir, load_documents, NetbirdApi},
    office::{exchange, Office, GRAFANA, ROUTER_OVERLAY, WIKI},
    routing_peer_bin, wait_for, Daemon,
};

use crate::{setup, util};

const DENY_TIMEOUT: Duration = Duration::from_millis(1500);

pub fn run(netbird: bool) -> Result<()> {
    let started = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        // Ctrl-C stops the story at the next step; the guards then tear down.
        ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst))?;
    }
    setup::check_toolchain()?;
    util::cargo(&["build", "--locked", "-p", "routing-peer"])?;
    std::env::set_var(
        "ROUTING_PEER_BIN",
        util::workspace_root().join("target/debug/routing-peer"),
    );
    let mut story = Story {
        interrupted,
        passed: 0,
        netbird,
    };
    let result = story.run();
    println!();
    match &result {
        Ok(()) => println!(
            "demo: SUCCESS, {} checks passed in {:.1} s; namespaces, interfaces and pins removed",
            story.passed,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!(
            "demo: FAILED after {} checks: {e:#}\n(everything it created has been removed)",
            story.passed
        ),
    }
    result
}

struct Story {
    interrupted: Arc<AtomicBool>,
    passed: usize,
    netbird: bool,
}

impl Story {
    fn step(&self, what: &str) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        println!("\n=== {what}");
        Ok(())
    }

    fn check(&mut self, ok: bool, what: &str) -> Result<()> {
        if !ok {
            bail!("check failed: {what}");
        }
        self.passed += 1;
        println!("    ok: {what}");
        Ok(())
    }

    fn show(&self, daemon: &Daemon, args: &[&str]) -> Result<()> {
        println!("$ routing-peer {}", args.join(" "));
        let status = Command::new(routing_peer_bin())
            .args(["--instance", &daemon.instance])
            .args(args)
            .status()?;
        if !status.success() {
            bail!("routing-peer {} failed", args.join(" "));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        self.step("Setting up: laptop, sales machine, routing peer and office LAN in namespaces")?;
        let mut office = Office::new()?;
        office.grafana_groups = vec!["Internal Apps".into()];
        office.grafana_address = "grafana.berlin.internal".into();
        office.start_dnsmasq()?;
        let (config, _api) = if self.netbird {
            let (config, api) = netbird_account(&office)?;
            (config, Some(api))
        } else {
            (office.write_config("")?, None)
        };
        // The tests' one-second DNS lifetimes would expire before `networks ls`.
        let text =
            std::fs::read_to_string(&config)?.replace("min_ttl_secs = 1", "min_ttl_secs = 300");
        std::fs::write(&config, text)?;
        println!("    config: {}", config.display());
        println!("    resources: Internal Wiki ({WIKI}/32), Grafana (grafana.berlin.internal, served by the office's dnsmasq)");
        println!("    policy:    Development -> Internal Apps, tcp/443");

        self.step(if self.netbird {
            "Starting routing-peer beside NetBird's agent: it reads the account from the management API"
        } else {
            "Starting routing-peer (userspace WireGuard here; kernel WireGuard where the kernel has it)"
        })?;
        let daemon = Daemon::start(&office.router, &config, &[])?;
        office.connect_clients()?;
        println!("    laptop and sales run wireguard-go, configured with `wg`");

        self.step("The engineer (laptop, group Development) fetches the wiki")?;
        let mut wiki = wait_for(Duration::from_secs(15), || {
            Ok(office.laptop.tcp(&format!("{WIKI}:443"), DENY_TIMEOUT).ok())
        })?;
        let answer = exchange(&mut wiki, "GET /wiki/Start")?;
        println!("    {answer}");
        self.check(
            answer.starts_with("wiki saw 198.51.100.1"),
            "wiki reached; it sees the routing peer's LAN address (masquerade)",
        )?;

        self.step("... and the Grafana dashboard, resolving grafana.berlin.internal through the routing peer")?;
        // NetBird clients ask a routing peer on 22054.
        let dns_port = if self.netbird { 22054 } else { 53 };
        let (code, addrs) = dns_query(
            &office.laptop.ns,
            &format!("{ROUTER_OVERLAY}:{dns_port}"),
            "grafana.berlin.internal",
        )?;
        println!("    DNS {code}: grafana.berlin.internal -> {addrs:?}");
        self.check(
            addrs == [GRAFANA.parse::<std::net::IpAddr>()?],
            "resolved by the routing peer's forwarder, installed in the data path",
        )?;
        let (code, _) = dns_query(
            &office.laptop.ns,
            &format!("{ROUTER_OVERLAY}:{dns_port}"),
            "example.com",
        )?;
        self.check(
            code == "Query Refused",
            "a name that is no resource is REFUSED: not an open resolver",
        )?;
        let mut grafana = office.laptop.tcp(&format!("{GRAFANA}:443"), DENY_TIMEOUT)?;
        let answer = exchange(&mut grafana, "GET /d/office")?;
        println!("    {answer}");
        self.check(answer.starts_with("grafana saw"), "grafana reached")?;

        self.step("Port 80 on the wiki is not in the policy")?;
        let denied = office
            .laptop
            .tcp(&format!("{WIKI}:80"), DENY_TIMEOUT)
            .is_err();
        self.check(denied, "tcp/80 denied (no answer within 1.5 s)")?;
        self.show(
            &daemon,
            &[
                "policy", "check", "--from", "laptop", "--to", WIKI, "--proto", "tcp", "--port",
                "80",
            ],
        )?;

        self.step("The Sales peer tries the wiki")?;
        let denied = office
            .sales
            .tcp(&format!("{WIKI}:443"), DENY_TIMEOUT)
            .is_err();
        self.check(denied, "sales denied: no policy for group Sales")?;
        self.show(
            &daemon,
            &[
                "policy", "check", "--from", "sales", "--to", WIKI, "--proto", "tcp", "--port",
                "443",
            ],
        )?;

        for _ in 0..3 {
            exchange(&mut wiki, "GET /wiki/More")?;
        }
        self.step("What the operator sees")?;
        self.show(&daemon, &["networks", "ls"])?;
        println!();
        self.show(&daemon, &["status"])?;
        println!();
        self.show(&daemon, &["flows"])?;
        println!();
        self.show(&daemon, &["stats"])?;
        let flows = daemon.cli_json(&["flows", "--json", "--peer", "laptop"])?;
        self.check(
            flows.as_array().is_some_and(|f| f.len() == 2),
            "flows lists the laptop's two connections",
        )?;
        self.step("What the gateway decided, as it decided it: routing-peer observe")?;
        println!();
        self.show(&daemon, &["observe", "--since", "5m", "--for", "1s"])?;
        let events = daemon.cli(&["observe", "--json", "--since", "5m", "--for", "1s"])?;
        let events: Vec<serde_json::Value> = events
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        self.check(
            events
                .iter()
                .any(|e| e["type"] == "drop" && e["peer"] == "sales" && e["reason"] == "no-policy"),
            "observe shows the Sales attempt, dropped for no-policy",
        )?;
        self.check(
            events
                .iter()
                .filter(|e| e["type"] == "start" && e["peer"] == "laptop")
                .count()
                >= 2,
            "observe shows the engineer's flows starting, with their rule and NAT",
        )?;
        if self.netbird {
            let status = daemon.cli_json(&["status", "--json"])?;
            self.check(
                status["status"]["source"]["last_sync_unix"].is_u64(),
                "the configuration came from NetBird's API (status: source)",
            )?;
            // In the routing peer's namespace, where the API is.
            println!(
                "\n$ routing-peer netbird diff --config {}",
                config.display()
            );
            let bin = routing_peer_bin();
            let ok = office
                .router
                .cmd(&bin.display().to_string())
                .args([
                    "--instance",
                    &daemon.instance,
                    "netbird",
                    "diff",
                    "--config",
                ])
                .arg(&config)
                .status()?
                .success();
            self.check(ok, "netbird diff: what the next sync would change")?;
        }
        Ok(())
    }
}

/// The Berlin account served as NetBird's API would (the tests' fixtures,
/// Grafana as the walkthrough's domain resource), WireGuard run as the
/// agent runs it, and the file beside `[netbird]`.
fn netbird_account(office: &Office) -> Result<(std::path::PathBuf, NetbirdApi)> {
    office.agent_wireguard()?;
    let mut docs = load_documents(&fixtures_dir().join("berlin"))?;
    let apps = docs["/api/groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "Internal Apps"))
        .map(|g| {
            serde_json::json!({"id": g["id"], "name": g["name"], "peers_count": 0, "resources_count": 2})
        })
        .unwrap_or_default();
    for (path, doc) in docs.iter_mut() {
        if path.ends_with("/resources") {
            if let Some(grafana) = doc.as_array_mut().and_then(|r| r.get_mut(1)) {
                grafana["type"] = "domain".into();
                grafana["address"] = "grafana.berlin.internal".into();
                grafana["groups"] = serde_json::json!([apps]);
            }
        }
    }
    let api = NetbirdApi::start(Some(&office.router), docs)?;
    let token = api.write_token(office.dir.path())?;
    let config = office.netbird_config(&api.url(), &token, 2)?;
    println!("    NetBird API (fixture server): {}", api.url());
    Ok((config, api))
}
