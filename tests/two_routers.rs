//! Two routing peers serving the same Network on the same LAN, with
//! different metrics: each works on its own, and says which it is.

use std::time::Duration;

use anyhow::Result;
use routing_peer_testbed::{
    office::{exchange, Client, Office, WIKI},
    unique_ifname, veth, wait_for, wg_keypair, Daemon, Netns, VethSpec,
};

const QUICK: Duration = Duration::from_millis(1500);

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn two_routing_peers_with_different_metrics_work_independently() -> Result<()> {
    let mut office = Office::new()?;
    // Turn the office LAN into a bridge so a second routing peer can join it.
    office
        .lan
        .sh("ip link add br0 type bridge && ip link set br0 up && \
         ip addr flush dev eth0 && ip link set eth0 master br0 && \
         ip addr add 198.51.100.5/24 dev br0 && ip addr add 198.51.100.6/24 dev br0")?;
    let router2 = Netns::new("rtr2")?;
    veth(VethSpec {
        a: &router2,
        a_if: "lan0",
        a_mac: "02:00:00:00:03:01",
        a_addr: "198.51.100.2/24",
        b: &office.lan,
        b_if: "eth1",
        b_mac: "02:00:00:00:03:02",
        b_addr: "198.51.100.3/32",
    })?;
    office
        .lan
        .sh("ip addr flush dev eth1 && ip link set eth1 master br0")?;
    let mut laptop2 = Client::new(
        "lp2",
        office.dir.path(),
        ("203.0.113.9", "203.0.113.10"),
        "100.64.0.2",
        &router2,
        office.wg,
    )?;

    let config1 = office.write_config("")?;
    let (private2, public2) = wg_keypair()?;
    let key2 = office.dir.path().join("router2.key");
    routing_peer_testbed::write_secret(&key2, &private2)?;
    let wg2 = unique_ifname("s");
    let config2 = office.dir.path().join("router2.toml");
    std::fs::write(
        &config2,
        office
            .config("")
            .replace("name = \"berlin-gw\"", "name = \"berlin-gw-2\"")
            .replace("metric = 100", "metric = 200")
            .replace(&office.wg_iface, &wg2)
            .replace(
                &office.router_key_file.display().to_string(),
                &key2.display().to_string(),
            )
            .replace(&office.laptop.public_key, &laptop2.public_key),
    )?;

    let daemon1 = Daemon::start(&office.router, &config1, &[])?;
    let daemon2 = Daemon::start(&router2, &config2, &[])?;
    office.connect_clients()?;
    laptop2.connect(&public2)?;

    let connect = |client: &Client| {
        wait_for(Duration::from_secs(15), || {
            Ok(client.tcp(&format!("{WIKI}:443"), QUICK).ok())
        })
    };
    let mut via1 = connect(&office.laptop)?;
    let mut via2 = connect(&laptop2)?;
    // Each masquerades to its own LAN address.
    assert_eq!(exchange(&mut via1, "one")?, "wiki saw 198.51.100.1: one");
    assert_eq!(exchange(&mut via2, "two")?, "wiki saw 198.51.100.2: two");

    for (daemon, metric, name) in [(&daemon1, 100, "berlin-gw"), (&daemon2, 200, "berlin-gw-2")] {
        let status = daemon.cli_json(&["status", "--json"])?;
        assert_eq!(status["status"]["metric"], metric);
        assert_eq!(status["status"]["name"], name);
        let networks = daemon.cli_json(&["networks", "ls", "--json"])?;
        assert_eq!(networks[0]["metric"], metric);
        assert_eq!(networks[0]["served"], true);
        assert_eq!(
            daemon
                .cli_json(&["flows", "--json"])?
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
    // One going away leaves the other serving.
    drop(daemon1);
    assert!(exchange(&mut via2, "still")?.ends_with("still"));
    Ok(())
}
