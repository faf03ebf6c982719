//! NAT: port preservation and collisions, ICMP ids, IPv6, masquerade off.

use super::*;

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn nat_preserves_ports_and_resolves_collisions_endpoint_independently() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let (_, out) = dp.overlay(&udp(ALICE, OTHER_HOST, 45353, 53, b"a"));
        assert_eq!(checked(&out).2, 45353, "port preserved inside the pool");
        // Bob uses the same source port: he must get another one.
        let (_, out) = dp.overlay(&udp(BOB, OTHER_HOST, 45353, 53, b"b"));
        let bob_port = checked(&out).2;
        let cfg = DatapathConfig::default();
        assert!(
            (cfg.snat_port_min..=cfg.snat_port_max).contains(&bob_port),
            "{bob_port}"
        );
        // Alice to another remote keeps her mapping (endpoint-independent).
        let (_, out) = dp.overlay(&udp(ALICE, WIKI, 45353, 53, b"c"));
        assert_eq!(checked(&out).2, 45353);
        // Replies reach the right peer.
        let (_, out) = dp.lan_tc(&udp(OTHER_HOST, RP_LAN, 53, bob_port, b"r"));
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(BOB), 53, 45353));
        let (_, out) = dp.lan_tc(&udp(OTHER_HOST, RP_LAN, 53, 45353, b"r"));
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(ALICE), 53, 45353));
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmp_echo_is_translated_both_ways() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"ping\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"icmp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let (verdict, out) = dp.overlay(&icmp_echo(ALICE, OTHER_HOST, 40777, false));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(RP_LAN), ip(OTHER_HOST), 40777, 40777));
        // Bob pings with the same identifier: remapped.
        let (_, out) = dp.overlay(&icmp_echo(BOB, OTHER_HOST, 40777, false));
        let bob_id = checked(&out).2;
        assert_ne!(bob_id, 40777);
        let (verdict, out) = dp.lan_tc(&icmp_echo(OTHER_HOST, RP_LAN, bob_id, true));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(OTHER_HOST), ip(BOB), 40777, 40777));
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn ipv6_flows_are_masqueraded_with_exact_checksums() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let alice6: [u8; 16] = "2001:db8:100::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let wiki6: [u8; 16] = "2001:db8:1::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(alice6, wiki6, 64)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        let (verdict, out) = dp.overlay(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (src, dst, sport, dport) = checked(&out);
        assert_eq!(src, "2001:db8:1::1".parse::<IpAddr>().unwrap());
        assert_eq!((dst, sport, dport), (IpAddr::from(wiki6), 41000, 443));
        assert_eq!(out[ETH_LEN + 7], 63, "hop limit decremented");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn masquerade_off_keeps_the_overlay_source() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", false));
        let (verdict, out) = dp.overlay(&tcp(ALICE, WIKI, 40020, 443, "S", &[]));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(ALICE), ip(WIKI), 40020, 443));
        // The LAN routes the reply back to us; conntrack lets it through.
        let (verdict, out) = dp.lan_tc(&tcp(WIKI, ALICE, 443, 40020, "SA", &[]));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40020));
        assert_eq!(dp.flows()[0].1.state, CT_TCP_ESTABLISHED);
    });
}
