//! Conntrack: tracking and counting, MSS clamping, eviction accounting, expiry.

use super::*;

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn allowed_flow_is_masqueraded_tracked_and_counted() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let syn = tcp(ALICE, WIKI, 40000, 443, "S", &[]);
        let (verdict, out) = dp.overlay(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // Source port preserved, source address the LAN address, TTL decremented.
        assert_eq!(checked(&out), (ip(RP_LAN), ip(WIKI), 40000, 443));
        assert_eq!(out[ETH_LEN + 8], 63);

        let flows = dp.flows();
        assert_eq!(flows.len(), 1);
        let (key, entry) = flows[0];
        assert_eq!(key.peer_port, 40000);
        assert_eq!(entry.state, CT_TCP_SYN_SENT);
        assert_eq!(entry.rule_id, 1);
        assert_eq!(entry.resource_id, 1, "the /32 wins over the /24");
        assert_eq!(entry.nat_port, 40000);
        // Flow bytes are IP bytes: the same whether a hook sees L2 or L3.
        let ip_len = |f: &[u8]| (f.len() - ETH_LEN) as u64;
        assert_eq!(
            (entry.forward.packets, entry.forward.bytes),
            (1, ip_len(&syn))
        );

        // The reply, addressed to the masquerade address: XDP leaves it to
        // TC (the overlay takes no XDP redirects), which sends it to Alice.
        let syn_ack = tcp(WIKI, RP_LAN, 443, 40000, "SA", &[]);
        let (verdict, out) = dp.lan(&syn_ack);
        assert_eq!((verdict, out.as_slice()), (XDP_PASS, syn_ack.as_slice()));
        let (verdict, out) = dp.lan_tc(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40000));

        let data = tcp(ALICE, WIKI, 40000, 443, "A", b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(dp.overlay(&data).0, TC_ACT_REDIRECT);
        let (_, entry) = dp.flows()[0];
        assert_eq!(entry.state, CT_TCP_ESTABLISHED);
        assert_eq!(
            (entry.forward.packets, entry.forward.bytes),
            (2, ip_len(&syn) + ip_len(&data))
        );
        assert_eq!(
            (entry.reply.packets, entry.reply.bytes),
            (1, ip_len(&syn_ack))
        );
        let wiki = dp.resource(1);
        assert_eq!(wiki.new_flows, 1);
        assert_eq!(
            (wiki.forward.packets, wiki.forward.bytes),
            (2, ip_len(&syn) + ip_len(&data))
        );
        assert_eq!(
            (wiki.reply.packets, wiki.reply.bytes),
            (1, ip_len(&syn_ack))
        );

        let fin = tcp(ALICE, WIKI, 40000, 443, "F", &[]);
        assert_eq!(dp.overlay(&fin).0, TC_ACT_REDIRECT);
        assert_eq!(dp.flows()[0].1.state, CT_TCP_CLOSING);

        // A TTL about to expire goes to the kernel, which answers time-exceeded.
        let mut last_hop = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(ALICE, WIKI, 1)
            .tcp(40001, 443, 1, 65535)
            .syn()
            .write(&mut last_hop, &[])
            .unwrap();
        let (verdict, out) = dp.overlay(&last_hop);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, last_hop, "untouched: no NAT before the kernel answers");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn syn_mss_is_clamped_to_the_overlay_mtu() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        dp.set_config(DatapathConfig {
            mss_clamp: 1240,
            ..DatapathConfig::default()
        });
        let syn = |mss: u16| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(ALICE, WIKI, 64)
                .tcp(40070 + mss % 7, 443, 1, 65535)
                .syn()
                .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(mss)])
                .unwrap()
                .write(&mut f, &[])
                .unwrap();
            f
        };
        let mss_of = |frame: &[u8]| {
            let p = SlicedPacket::from_ethernet(frame).unwrap();
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!()
            };
            t.options_iterator()
                .find_map(|o| match o {
                    Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                    _ => None,
                })
                .unwrap()
        };
        let (verdict, out) = dp.overlay(&syn(1460));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        checked(&out); // checksums still exact
        assert_eq!(mss_of(&out), 1240);
        let (_, out) = dp.overlay(&syn(1200));
        assert_eq!(mss_of(&out), 1200, "a smaller MSS is left alone");
    });
}

/// LRU evictions are not reported by the kernel; they are derived from the
/// counted inserts and removals. A full table evicts, and says how much.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_full_conntrack_table_evicts_and_the_evictions_are_counted() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::with_sizes(&base_config(extra, false), &[(map_names::CONNTRACK, 1024)]);
        const FLOWS: u16 = 3000;
        for port in 0..FLOWS {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, 10_000 + port, 53, b"x"))
                    .0,
                TC_ACT_REDIRECT
            );
        }
        let live = dp.flows().len() as u64;
        assert!(live <= 1024, "{live}");
        let events = dp.ebpf.map(map_names::CT_EVENTS).unwrap();
        let gc = dp.ebpf.map(map_names::CT_GC).unwrap();
        let acct = stats::ct_accounting(events, gc, live).unwrap();
        assert_eq!(acct.inserts, u64::from(FLOWS));
        assert_eq!(acct.removals, 0);
        assert_eq!(acct.evictions, u64::from(FLOWS) - live);
        assert!(acct.evictions >= u64::from(FLOWS) - 1024);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn expired_flows_need_policy_again() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", false));
        dp.set_config(DatapathConfig {
            tcp_transitory_ns: 1_000_000, // 1 ms
            ..DatapathConfig::default()
        });
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40040, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The SYN_SENT entry expired: the "reply" is now LAN-initiated.
        assert_eq!(dp.lan(&tcp(WIKI, ALICE, 443, 40040, "SA", &[])).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::LanUnsolicited), 1);
    });
}
