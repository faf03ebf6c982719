//! Fail closed: what black-box testing found passing the programs, each
//! case a packet that must be dropped, or handed to the kernel only after
//! policy and translation, for a counted reason.

use routing_peer_common::Handoff;

use super::*;

const LAN_UDP_TCP: &str = r#"
[[policies]]
name = "lan-udp"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"

[[policies]]
name = "lan-tcp"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "tcp"
"#;

/// Runs `ip` in the test's namespace.
fn ip_cmd(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// The default settings with the SNAT pool `min..=max`.
fn pool(min: u16, max: u16) -> DatapathConfig {
    DatapathConfig {
        snat_port_min: min,
        snat_port_max: max,
        ..Default::default()
    }
}

fn handoffs(dp: &Dp, reason: Handoff) -> u64 {
    stats::read_loaded(&dp.ebpf)
        .unwrap()
        .handoff(reason)
        .packets
}

/// Recomputes the IPv4 header checksum, options included.
fn set_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let header = &mut frame[ETH_LEN..ETH_LEN + ihl];
    header[10] = 0;
    header[11] = 0;
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !((folded & 0xffff) + (folded >> 16)) as u16;
    header[10..12].copy_from_slice(&check.to_be_bytes());
}

fn set_total_length(frame: &mut [u8], len: usize) {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&(len as u16).to_be_bytes());
    set_ipv4_checksum(frame);
}

/// `frame` with IPv4 options inserted after the fixed header.
fn with_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut out = frame[..ETH_LEN + 20].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[ETH_LEN + 20..]);
    out[ETH_LEN] = 0x40 | (5 + options.len() / 4) as u8;
    let total = out.len() - ETH_LEN;
    set_total_length(&mut out, total);
    out
}

fn with_df(mut frame: Vec<u8>, df: bool) -> Vec<u8> {
    if df {
        frame[ETH_LEN + 6] |= 0x40;
    } else {
        frame[ETH_LEN + 6] &= !0x40;
    }
    set_ipv4_checksum(&mut frame);
    frame
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn malformed_headers_are_dropped_on_both_sides() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        // A 33-byte UDP datagram, allowed and forwarded as it is.
        let good = udp(ALICE, OTHER_HOST, 40000, 53, &[1u8; 25]);
        let mut bad_checksum = good.clone();
        bad_checksum[ETH_LEN + 10] ^= 0x5a;
        let zero_length_option = with_options(&good, &[0x44, 0, 0, 0]);
        let mut udp_len_200 = good.clone();
        udp_len_200[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&200u16.to_be_bytes());
        let mut udp_len_4 = good.clone();
        udp_len_4[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&4u16.to_be_bytes());
        let mut tcp_doff_15 = tcp(ALICE, OTHER_HOST, 40000, 22, "A", &[0u8; 21]);
        tcp_doff_15[ETH_LEN + 32] = 0xf0 | (tcp_doff_15[ETH_LEN + 32] & 0x0f);
        // Total length 26 (the UDP header cut at 6 bytes), trailing bytes after.
        let mut short_total = good.clone();
        set_total_length(&mut short_total, 26);
        let cases = [
            ("bad header checksum", bad_checksum),
            ("option of length 0", zero_length_option),
            ("UDP length 200", udp_len_200),
            ("UDP length 4", udp_len_4),
            ("TCP data offset 15", tcp_doff_15),
            ("total length 26", short_total),
        ];
        for (name, frame) in &cases {
            assert_eq!(dp.overlay(frame).0, TC_ACT_SHOT, "{name}: overlay");
            assert_eq!(dp.lan(frame).0, XDP_DROP, "{name}: LAN");
        }
        assert_eq!(dp.drops(DropReason::Malformed), 2 * cases.len() as u64);
        assert!(dp.flows().is_empty());
        // Valid options (NOP, NOP, NOP, EOL) are fine.
        let nops = with_options(&good, &[1, 1, 1, 0]);
        assert_eq!(dp.overlay(&nops).0, TC_ACT_REDIRECT);
        assert_eq!(dp.overlay(&good).0, TC_ACT_REDIRECT);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn an_ipv6_routing_header_past_the_payload_is_malformed() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let v6 = udp_v6(&[3u8; 8]);
        let mut frame = v6[..ETH_LEN + 40].to_vec();
        frame[ETH_LEN + 6] = 43; // routing header
                                 // It claims 16 bytes; the payload length covers 8. The UDP header
                                 // behind it lies in trailing bytes.
        frame.extend_from_slice(&[17, 1, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&[0u8; 8]);
        frame.extend_from_slice(&v6[ETH_LEN + 40..]);
        frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(dp.overlay(&frame).0, TC_ACT_SHOT);
        assert_eq!(dp.lan(&frame).0, XDP_DROP);
        assert_eq!(dp.drops(DropReason::Malformed), 2);
    });
}

/// An ICMP error (unreachable, time exceeded, parameter problem) from the
/// LAN to a peer, quoting only 8 bytes of an IPv4 header.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn icmp_errors_toward_the_overlay_quoting_too_little_are_dropped() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        for (i, kind) in [3u8, 11, 12].into_iter().enumerate() {
            let mut error = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(OTHER_HOST, ALICE, 64)
                .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Host,
                ))
                .write(&mut error, &[0x45, 0, 0, 60, 0, 1, 0, 0])
                .unwrap();
            error[ETH_LEN + 20] = kind;
            assert_eq!(dp.lan(&error).0, XDP_PASS, "type {kind}: TC decides");
            assert_eq!(dp.lan_tc(&error).0, TC_ACT_SHOT, "type {kind}");
            assert_eq!(dp.drops(DropReason::LanUnsolicited), i as u64 + 1);
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn packets_over_the_lan_mtu_reach_the_kernel_after_policy_and_translation() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        ip_cmd(&["link", "set", "lan0", "mtu", "1400"]);
        // DF: untranslated, so the kernel's fragmentation-needed quotes
        // what the peer sent; the kernel forwards nothing.
        let big_df = with_df(udp(ALICE, OTHER_HOST, 40000, 53, &[0u8; 1420]), true);
        let (verdict, out) = dp.overlay(&big_df);
        assert_eq!((verdict, out == big_df), (TC_ACT_OK, true));
        assert_eq!(handoffs(&dp, Handoff::FragNeeded), 1);
        // The flow it opened is tracked: its next DF packet gets the same.
        assert_eq!(dp.overlay(&big_df).0, TC_ACT_OK);
        assert_eq!(handoffs(&dp, Handoff::FragNeeded), 2);
        // No DF: masqueraded first, then fragmented by the kernel.
        let big = with_df(udp(ALICE, OTHER_HOST, 40001, 53, &[0u8; 1420]), false);
        let (verdict, out) = dp.overlay(&big);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            checked(&out).0,
            ip(RP_LAN),
            "translated before the hand-off"
        );
        assert_eq!(handoffs(&dp, Handoff::Fragmenting), 1);
        // Denied traffic is dropped, big or not.
        let denied = with_df(icmp_echo(ALICE, OTHER_HOST, 40002, false), false);
        assert_eq!(dp.overlay(&denied).0, TC_ACT_SHOT);
        // A TTL that expires here: counted, and untranslated for the kernel.
        let mut last_hop = udp(ALICE, OTHER_HOST, 40003, 53, b"x");
        last_hop[ETH_LEN + 8] = 1;
        set_ipv4_checksum(&mut last_hop);
        let (verdict, out) = dp.overlay(&last_hop);
        assert_eq!((verdict, out == last_hop), (TC_ACT_OK, true));
        assert_eq!(handoffs(&dp, Handoff::TtlExpired), 1);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn every_local_address_is_the_input_chain() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        // Added after the compile: one inside the office-lan resource, one
        // on lo. Neither is in the compiled tables.
        ip_cmd(&["addr", "add", "198.51.100.77/24", "dev", "lan0"]);
        ip_cmd(&["addr", "add", "192.0.2.10/32", "dev", "lo"]);
        let added = [198, 51, 100, 77];
        let on_lo = [192, 0, 2, 10];
        for (i, dst) in [added, on_lo].into_iter().enumerate() {
            let (verdict, _) = dp.overlay(&tcp(ALICE, dst, 40100 + i as u16, 22, "S", &[]));
            assert_eq!(verdict, TC_ACT_SHOT, "{dst:?}: no peer policy");
        }
        assert_eq!(dp.drops(DropReason::NoPolicy), 2);
        let peer_ssh = format!(
            "{LAN_UDP_TCP}\n[[policies]]\nname = \"ssh-to-gw\"\nkind = \"peer\"\nsources = [\"Development\"]\ndestinations = [\"Gateways\"]\nprotocol = \"tcp\"\nports = [22]\n"
        );
        dp.install(&base_config(&peer_ssh, true));
        for (i, dst) in [added, on_lo].into_iter().enumerate() {
            let (verdict, _) = dp.overlay(&tcp(ALICE, dst, 40110 + i as u16, 22, "S", &[]));
            assert_eq!(verdict, TC_ACT_OK, "{dst:?}: delivered locally");
        }
        assert_eq!(handoffs(&dp, Handoff::Local), 2);
        assert!(dp.flows().is_empty(), "nothing forwarded, nothing tracked");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_blind_rst_does_not_cut_a_flow() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        dp.overlay(&tcp(ALICE, WIKI, 40000, 443, "S", &[]));
        // tcp() sends seq 1000, ack 2000: the wiki's SYN-ACK at seq 1999.
        let mut syn_ack = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(WIKI, RP_LAN, 64)
            .tcp(443, 40000, 1999, 65535)
            .syn()
            .ack(1001)
            .write(&mut syn_ack, &[])
            .unwrap();
        assert_eq!(dp.lan_tc(&syn_ack).0, TC_ACT_REDIRECT);
        dp.overlay(&tcp(ALICE, WIKI, 40000, 443, "A", &[]));
        assert_eq!(dp.flows()[0].1.state, CT_TCP_ESTABLISHED);
        let rst = |seq: u32| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(WIKI, RP_LAN, 64)
                .tcp(443, 40000, seq, 0)
                .rst()
                .write(&mut f, &[])
                .unwrap();
            f
        };
        // Far outside Alice's window (she acknowledged 2000).
        assert_eq!(dp.lan_tc(&rst(2000 + (1 << 30))).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::RstOutOfWindow), 1);
        assert_eq!(dp.flows()[0].1.state, CT_TCP_ESTABLISHED);
        // Data still flows.
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40000, 443, "A", b"more")).0,
            TC_ACT_REDIRECT
        );
        // The RST a real stack sends: at the sequence number Alice expects.
        assert_eq!(dp.lan_tc(&rst(2000)).0, TC_ACT_REDIRECT);
        assert_eq!(dp.flows()[0].1.state, routing_peer_common::CT_TCP_RESET);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn masquerade_ports_come_from_the_pool_and_all_of_it_is_used() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        dp.set_config(pool(40000, 40009));
        let mut used = std::collections::BTreeSet::new();
        // Ten peer endpoints, none inside the pool (53 among them): each gets
        // a pool port, and the pool is used up without a failure.
        for (i, sport) in [53u16, 30000, 30001, 30002, 30003, 30004, 39999, 40010, 1, 2]
            .into_iter()
            .enumerate()
        {
            let (verdict, out) = dp.overlay(&udp(ALICE, OTHER_HOST, sport, 53, b"q"));
            assert_eq!(verdict, TC_ACT_REDIRECT, "flow {i} from port {sport}");
            let port = checked(&out).2;
            assert!((40000..=40009).contains(&port), "{port} outside the pool");
            used.insert(port);
        }
        assert_eq!(used.len(), 10);
        assert_eq!(dp.drops(DropReason::NatExhausted), 0);
        // Now it is full.
        assert_eq!(
            dp.overlay(&udp(BOB, OTHER_HOST, 3, 53, b"q")).0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::NatExhausted), 1);
    });
}

/// A partial checksum (CHECKSUM_PARTIAL from a virtual device: the pseudo-
/// header sum only) must not be updated by XDP, which cannot tell.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn xdp_leaves_partial_checksums_to_tc() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        dp.xdp_egress("lan0", "198.51.100.9", "02:00:00:00:00:99");
        let full = udp(ALICE, OTHER_HOST, 40000, 53, b"payload!");
        assert_eq!(dp.run(program_names::OVERLAY_XDP, &full).0, XDP_REDIRECT);
        let mut partial = udp(ALICE, OTHER_HOST, 40001, 53, b"payload!");
        let udp_len = (partial.len() - ETH_LEN - 20) as u32;
        let words = |b: &[u8]| -> u32 {
            b.chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum()
        };
        let mut sum = words(&ALICE) + words(&OTHER_HOST) + 17 + udp_len;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        partial[ETH_LEN + 26..ETH_LEN + 28].copy_from_slice(&(sum as u16).to_be_bytes());
        let (verdict, out) = dp.run(program_names::OVERLAY_XDP, &partial);
        assert_eq!((verdict, out == partial), (XDP_PASS, true));
    });
}

/// A LAN host's DF reply too big for the overlay: the routing peer answers
/// it with fragmentation-needed quoting the packet as the host sent it (to
/// our LAN address and the NAT port), never the peer's address.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_reply_too_big_for_the_overlay_gets_an_icmp_quoting_what_the_host_sent() {
    in_netns(|| {
        let extra = format!(
            "{LAN_UDP_TCP}\n[[policies]]\nname = \"wiki6-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"wiki6\"]\nprotocol = \"udp\"\n"
        );
        let mut dp = Dp::new(&base_config(&extra, true));
        ip_cmd(&["link", "set", "ov0", "mtu", "1280"]);
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 40000, 53, b"q")).0,
            TC_ACT_REDIRECT
        );
        let reply = with_df(udp(OTHER_HOST, RP_LAN, 53, 40000, &[7u8; 1372]), true);
        let (verdict, out) = dp.lan_tc(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (src, dst, _, _) = checked(&out); // IPv4 and ICMP checksums exact
        assert_eq!((src, dst), (ip(RP_LAN), ip(OTHER_HOST)));
        assert_eq!(&out[..6], &reply[6..12], "back to the sender's MAC");
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("not ICMP");
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1280
                }
            )
        );
        let quoted = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!(
            (quoted.source(), quoted.destination()),
            (OTHER_HOST, RP_LAN)
        );
        let ports = &icmp.payload()[20..24];
        assert_eq!(
            ports,
            &[0, 53, 0x9c, 0x40],
            "53 → 40000, as the host sent it"
        );
        assert_eq!(dp.drops(DropReason::ReplyTooBig), 1);

        // IPv6: packet too big, the same way.
        let alice6: [u8; 16] = "2001:db8:100::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let wiki6: [u8; 16] = "2001:db8:1::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let rp6: [u8; 16] = "2001:db8:1::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut out6 = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(alice6, wiki6, 64)
            .udp(40001, 53)
            .write(&mut out6, b"q")
            .unwrap();
        assert_eq!(dp.overlay(&out6).0, TC_ACT_REDIRECT);
        let mut reply6 = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(wiki6, rp6, 64)
            .udp(53, 40001)
            .write(&mut reply6, &[7u8; 1352])
            .unwrap();
        let (verdict, out) = dp.lan_tc(&reply6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (src, dst, _, _) = checked(&out); // ICMPv6 checksum exact
        assert_eq!((src, dst), (IpAddr::from(rp6), IpAddr::from(wiki6)));
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("not ICMPv6");
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 }
        );
        let quoted = etherparse::Ipv6HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!(quoted.destination(), rp6, "our address, not the peer's");
        assert_eq!(dp.drops(DropReason::ReplyTooBig), 2);
    });
}

/// A domain resource's address that expires takes its grant with it:
/// flows opened to it before are cut, as a policy change would cut them.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn an_expired_dns_address_cuts_its_flows() {
    in_netns(|| {
        let extra = r#"
[[networks.resources]]
name = "grafana"
address = "grafana.berlin.internal"
groups = ["Dashboards"]

[[policies]]
name = "dashboards"
sources = ["Development"]
destinations = ["Dashboards"]
protocol = "tcp"
ports = [443]
"#;
        // The resource goes into the Berlin network: insert before the policies.
        let config = base_config("", true).replace(
            "\n[[policies]]\nname = \"dev-to-apps\"",
            &format!("{extra}\n[[policies]]\nname = \"dev-to-apps\""),
        );
        let mut dp = Dp::new(&config);
        let grafana = [198, 51, 100, 7];
        // What the DNS forwarder installs for an answer: the address as a
        // /32 of the domain resource.
        let loaded = config::parse(Path::new("test.toml"), &config).unwrap();
        let compiled = compile::compile(
            &loaded.config,
            &[RP_OVERLAY.into(), RP_LAN.into()],
            &HashMap::new(),
            Default::default(),
        );
        let domain = &compiled.domains[0];
        let value = compiled.domain_dests[&domain.resource_id];
        let prefix = crate::model::DestPrefix::new(IpAddr::from(grafana).into());
        dp.state.upsert_dest(prefix, value).unwrap();
        let syn = tcp(ALICE, grafana, 40000, 443, "S", &[]);
        assert_eq!(dp.overlay(&syn).0, TC_ACT_REDIRECT);
        let data = tcp(ALICE, grafana, 40000, 443, "A", b"x");
        assert_eq!(dp.overlay(&data).0, TC_ACT_REDIRECT);
        dp.state.expire_dests(&[prefix]).unwrap();
        assert_eq!(
            dp.overlay(&data).0,
            TC_ACT_SHOT,
            "the expired grant is gone"
        );
        assert_eq!(dp.drops(DropReason::PolicyRevoked), 1);
        assert!(dp.flows().is_empty());
    });
}

/// Nested resources of two networks: a flow granted only through the /24
/// of a network without masquerade keeps its source, even though a more
/// specific /32 of a masquerading network (which grants nothing) covers
/// the destination. `policy check` says the same, and names the /24.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn masquerade_follows_the_resource_that_granted_the_flow() {
    in_netns(|| {
        let extra = r#"
[[policies]]
name = "lan-udp"
sources = ["Development"]
destination_resources = ["office-lan"]
protocol = "udp"

[[policies]]
name = "printing"
sources = ["Development"]
destination_resources = ["printer"]
protocol = "tcp"
ports = [631]

[[networks]]
name = "Printers"
masquerade = true
[[networks.resources]]
name = "printer"
address = "198.51.100.7/32"
groups = ["Printers"]
"#;
        let config_text = base_config(extra, false);
        let mut dp = Dp::new(&config_text);
        let printer = [198, 51, 100, 7];
        let (verdict, out) = dp.overlay(&udp(ALICE, printer, 40000, 161, b"snmp"));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            checked(&out).0,
            ip(ALICE),
            "granted by the /24: not masqueraded"
        );
        // Granted by the /32's own policy: its network masquerades.
        let (verdict, out) = dp.overlay(&tcp(ALICE, printer, 40001, 631, "S", &[]));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            checked(&out).0,
            ip(RP_LAN),
            "granted by the /32: masqueraded"
        );

        let loaded = config::parse(Path::new("test.toml"), &config_text).unwrap();
        let compiled = compile::compile(
            &loaded.config,
            &[RP_OVERLAY.into(), RP_LAN.into()],
            &HashMap::new(),
            Default::default(),
        );
        let v = crate::check::check(&compiled, ip(ALICE), ip(printer), 17, 161);
        assert_eq!((v.allowed, v.masquerade), (true, Some(false)));
        let granting = crate::check::granting_resource(&loaded.config, ip(printer), "lan-udp");
        assert_eq!(granting.as_deref(), Some("office-lan"));
        let v = crate::check::check(&compiled, ip(ALICE), ip(printer), 6, 631);
        assert_eq!((v.allowed, v.masquerade), (true, Some(true)));
    });
}

/// A pool port that a socket of the routing peer holds (here: reserved as
/// the daemon reserves what `/proc/net/udp` shows) is never handed to a
/// masqueraded flow, not even to keep the peer's own port.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn pool_ports_held_by_local_sockets_are_skipped() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        dp.set_config(pool(40000, 40001));
        let held = [(routing_peer_common::IPPROTO_UDP, 40000u16)]
            .into_iter()
            .collect();
        crate::datapath::ports::ReservedPorts::take(&mut dp.ebpf)
            .unwrap()
            .sync(&held)
            .unwrap();
        let (verdict, out) = dp.overlay(&udp(ALICE, OTHER_HOST, 40000, 53, b"q"));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out).2, 40001, "the held port is skipped");
        // The only other port is taken now: the next flow has none.
        assert_eq!(
            dp.overlay(&udp(BOB, OTHER_HOST, 5000, 53, b"q")).0,
            TC_ACT_SHOT
        );
        assert_eq!(dp.drops(DropReason::NatExhausted), 1);
    });
}

/// A full pool is scanned once, not once per new flow: a peer opening
/// flows on a full pool must not cost a scan of the whole range per packet.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_full_pool_is_not_rescanned_for_every_new_flow() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP_TCP, true));
        dp.set_config(pool(40000, 40001));
        let scans = |dp: &Dp| -> u64 {
            let map = dp.ebpf.map("NAT_SCANS").unwrap();
            let arr = PerCpuArray::<_, u64>::try_from(map).unwrap();
            arr.get(&0, 0).unwrap().iter().sum()
        };
        for sport in [5000, 5001] {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, sport, 53, b"q")).0,
                TC_ACT_REDIRECT
            );
        }
        assert_eq!(
            dp.overlay(&udp(ALICE, OTHER_HOST, 5002, 53, b"q")).0,
            TC_ACT_SHOT
        );
        let after_full = scans(&dp);
        for sport in 5003..5013 {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, sport, 53, b"q")).0,
                TC_ACT_SHOT
            );
        }
        assert_eq!(dp.drops(DropReason::NatExhausted), 11);
        assert_eq!(scans(&dp), after_full, "no new scan while the pool is full");
    });
}
