//! ICMP errors: translated back to the peer (RFC 5508), PMTU included.

use super::*;

/// RFC 5508: an ICMP error about a masqueraded flow goes back to the peer,
/// quoted packet translated, checksums exact; fragmentation-needed included,
/// so path-MTU discovery works through the tunnel.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmp_errors_about_masqueraded_flows_are_translated_back() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        dp.overlay(&udp(ALICE, OTHER_HOST, 5353, 53, b"a"));
        let (_, out) = dp.overlay(&udp(BOB, OTHER_HOST, 5353, 53, b"b"));
        let bob_external = checked(&out).2;
        assert_ne!(bob_external, 5353);
        // What a LAN router quotes: our packet as it left, masqueraded.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4(RP_LAN, OTHER_HOST, 63)
            .udp(bob_external, 53)
            .write(&mut quoted, b"b")
            .unwrap();
        quoted.truncate(28);
        let mut error = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([198, 51, 100, 254], RP_LAN, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1200,
                },
            ))
            .write(&mut error, &quoted)
            .unwrap();
        // XDP leaves it to TC, which translates and sends it to Bob.
        assert_eq!(dp.lan(&error).0, XDP_PASS);
        let (verdict, out) = dp.lan_tc(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, dst, _, _) = checked(&out); // outer IP and ICMP checksums exact
        assert_eq!(dst, ip(BOB));
        let inner = etherparse::Ipv4HeaderSlice::from_slice(&out[ETH_LEN + 28..]).unwrap();
        assert_eq!(inner.source(), BOB, "quoted source translated");
        assert_eq!(inner.destination(), OTHER_HOST);
        let header = inner.to_header();
        assert_eq!(
            header.calc_header_checksum(),
            header.header_checksum,
            "quoted IP checksum"
        );
        let sport = u16::from_be_bytes([out[ETH_LEN + 48], out[ETH_LEN + 49]]);
        assert_eq!(sport, 5353, "quoted source port translated");
        // An error quoting nothing we track is the kernel's.
        let mut stray = error.clone();
        stray[ETH_LEN + 28 + 20] ^= 0xff; // another source port
        assert_eq!(dp.lan_tc(&stray).0, TC_ACT_OK);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmpv6_packet_too_big_reaches_the_peer() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let (alice6, wiki6, rp6) = (
            v6("2001:db8:100::2"),
            v6("2001:db8:1::5"),
            v6("2001:db8:1::1"),
        );
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(alice6, wiki6, 64)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        assert_eq!(dp.overlay(&syn).0, TC_ACT_REDIRECT);
        let mut quoted = Vec::new();
        PacketBuilder::ipv6(rp6, wiki6, 63)
            .tcp(41000, 443, 1, 65535)
            .syn()
            .write(&mut quoted, &[])
            .unwrap();
        quoted.truncate(48);
        let mut error = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(v6("2001:db8:1::fe"), rp6, 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut error, &quoted)
            .unwrap();
        let (verdict, out) = dp.lan_tc(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, dst, _, _) = checked(&out); // ICMPv6 checksum over the new pseudo-header
        assert_eq!(dst, IpAddr::from(alice6));
        let inner = etherparse::Ipv6HeaderSlice::from_slice(&out[ETH_LEN + 48..]).unwrap();
        assert_eq!(inner.source(), alice6, "quoted source translated");
    });
}
