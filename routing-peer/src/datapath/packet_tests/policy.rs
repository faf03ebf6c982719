//! Policy: default deny, every match type, port ranges, the input chain, LAN-initiated traffic, and policy changes cutting live flows.

use super::*;

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn default_deny_and_every_match_type() {
    in_netns(|| {
        let extra = r#"
[[policies]]
name = "dev-lan-ranges"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"
port_ranges = [{ start = 8000, end = 8080 }]

[[policies]]
name = "dev-lan-all"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "all"

[[policies]]
name = "no-ssh"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "tcp"
ports = [22]
action = "drop"
"#;
        let mut dp = Dp::new(&base_config(extra, true));
        // Wiki: only TCP 443 (via its group), and whatever the /24 grants.
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40001, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        // The /24's "all" grants ICMP and any port; the drop still wins for 22.
        assert_eq!(
            dp.overlay(&tcp(ALICE, OTHER_HOST, 40002, 80, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&udp(BOB, OTHER_HOST, 40003, 8080, b"x")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, OTHER_HOST, 40004, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40005, 22, "S", &[])).0,
            TC_ACT_SHOT,
            "nested /32 inherits the drop"
        );
        assert_eq!(dp.drops(DropReason::PolicyDrop), 2);
        // Sales has no policy at all: default deny.
        assert_eq!(
            dp.overlay(&tcp(CAROL_SALES, WIKI, 40006, 443, "S", &[])).0,
            TC_ACT_SHOT
        );
        // Not a resource.
        assert_eq!(
            dp.overlay(&tcp(ALICE, [203, 0, 113, 7], 40007, 443, "S", &[]))
                .0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::NoPolicy), 2);
        // An overlay source that is no peer.
        assert_eq!(
            dp.overlay(&tcp([100, 64, 9, 9], WIKI, 40008, 443, "S", &[]))
                .0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::UnknownSource), 1);
        assert_eq!(
            dp.resource(1).denied.packets,
            2,
            "wiki: carol and the ssh drop"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn port_ranges_are_inclusive_at_both_ends() {
    in_netns(|| {
        let extra = r#"
[[policies]]
name = "range"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"
port_ranges = [{ start = 8000, end = 8080 }]
"#;
        let mut dp = Dp::new(&base_config(extra, true));
        for (port, want) in [
            (7999, TC_ACT_SHOT),
            (8000, TC_ACT_REDIRECT),
            (8080, TC_ACT_REDIRECT),
            (8081, TC_ACT_SHOT),
        ] {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, 5000 + port, port, b"p"))
                    .0,
                want,
                "port {port}"
            );
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn input_chain_needs_a_peer_policy() {
    in_netns(|| {
        let lan_ssh = r#"
[[policies]]
name = "lan-ssh"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "tcp"
ports = [22]
"#;
        let mut dp = Dp::new(&base_config(lan_ssh, true));
        // The /24 resource contains the routing peer's LAN address, yet the
        // resource policy never opens the routing peer itself.
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_LAN, 40010, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_OVERLAY, 40011, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        let peer_ssh = format!(
            "{lan_ssh}\n[[policies]]\nname = \"ssh-to-gw\"\nkind = \"peer\"\nsources = [\"Development\"]\ndestinations = [\"Gateways\"]\nprotocol = \"tcp\"\nports = [22]\n"
        );
        dp.install(&base_config(&peer_ssh, true));
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_LAN, 40012, 22, "S", &[])).0,
            TC_ACT_OK,
            "delivered locally"
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, RP_OVERLAY, 40013, 22, "S", &[])).0,
            TC_ACT_OK
        );
        assert_eq!(
            dp.overlay(&tcp(CAROL_SALES, RP_LAN, 40014, 22, "S", &[])).0,
            TC_ACT_SHOT
        );
        assert!(
            dp.flows().is_empty(),
            "the input chain is not forwarded, so not NATed"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn lan_initiated_traffic_to_the_overlay_is_dropped() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        assert_eq!(dp.lan(&tcp(WIKI, ALICE, 443, 40000, "S", &[])).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::LanUnsolicited), 1);
        // LAN traffic to the routing peer itself is the host's business.
        assert_eq!(dp.lan(&tcp(WIKI, RP_LAN, 5555, 22, "S", &[])).0, XDP_PASS);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_policy_change_cuts_established_flows() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40030, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 40031, 53, b"q")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(dp.flows().len(), 2);
        // Remove the UDP policy: its flow is cut in both directions, the TCP flow lives.
        dp.install(&base_config("", true));
        assert_eq!(
            dp.lan(&udp(OTHER_HOST, RP_LAN, 53, 40031, b"r")).0,
            XDP_DROP
        );
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 40031, 53, b"q")).0,
            TC_ACT_SHOT
        );
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40030, 443, "A", b"more")).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(dp.drops(DropReason::PolicyRevoked), 1);
        assert_eq!(
            dp.drops(DropReason::NoPolicy),
            1,
            "after the cut it is a new, denied flow"
        );
        assert_eq!(dp.flows().len(), 1);
    });
}
