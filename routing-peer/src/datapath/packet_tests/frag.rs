//! Fragments: in order, out of order through the hold, overlapping, tiny,
//! orphaned, denied, a fragmented reply, IPv6 behind extension headers.
//! Translated datagrams are reassembled here and their checksums verified
//! with etherparse.

use aya::maps::PerCpuArray;
use routing_peer_common::{FragEvent, HOLD_FROM_OVERLAY, HOLD_MAC, HOLD_MARK};

use super::*;

const LAN_UDP: &str = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\n\
                       destination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
const IP_ID: u16 = 0x4242;
const IPV6_FRAG_ID: u32 = 0x0bad_cafe;

/// A datagram's IPv4 fragments, `size` payload bytes each (a multiple of 8).
fn fragment_v4(frame: &[u8], size: usize) -> Vec<Vec<u8>> {
    crate::frames::ipv4_fragments(frame, size, IP_ID)
}

/// The datagram the fragments make up again (header of the first).
fn reassemble_v4(fragments: &[Vec<u8>]) -> Vec<u8> {
    let offset = |f: &Vec<u8>| (u16::from_be_bytes([f[ETH_LEN + 6], f[ETH_LEN + 7]]) & 0x1fff) * 8;
    let mut sorted: Vec<&Vec<u8>> = fragments.iter().collect();
    sorted.sort_by_key(|f| offset(f));
    let ihl = (sorted[0][ETH_LEN] & 0x0f) as usize * 4;
    let mut out = sorted[0][..ETH_LEN + ihl].to_vec();
    for f in &sorted {
        assert_eq!(usize::from(offset(f)), out.len() - ETH_LEN - ihl, "a gap");
        out.extend_from_slice(&f[ETH_LEN + ihl..]);
    }
    let tot_len = (out.len() - ETH_LEN) as u16;
    out[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot_len.to_be_bytes());
    out[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&[0, 0]);
    fix_ipv4_checksum(&mut out);
    out
}

/// A datagram's IPv6 fragments, with a Destination Options header before
/// the Fragment header when `dest_opts`.
fn fragment_v6(frame: &[u8], size: usize, dest_opts: bool) -> Vec<Vec<u8>> {
    let next = frame[ETH_LEN + 6];
    let (header, payload) = frame.split_at(ETH_LEN + 40);
    let count = payload.len().div_ceil(size);
    (0..count)
        .map(|i| {
            let chunk = &payload[i * size..((i + 1) * size).min(payload.len())];
            let mut f = header.to_vec();
            if dest_opts {
                f[ETH_LEN + 6] = 60;
                // Next: Fragment; 8 bytes; one PadN option of 4.
                f.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
            } else {
                f[ETH_LEN + 6] = 44;
            }
            let more = u16::from(i + 1 < count);
            let offset_flags = ((i * size) as u16) | more;
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&offset_flags.to_be_bytes());
            f.extend_from_slice(&IPV6_FRAG_ID.to_be_bytes());
            f.extend_from_slice(chunk);
            let payload_len = (f.len() - ETH_LEN - 40) as u16;
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
            f
        })
        .collect()
}

fn reassemble_v6(fragments: &[Vec<u8>], dest_opts: bool) -> Vec<u8> {
    let ext = if dest_opts { 8 } else { 0 };
    let frag_at = ETH_LEN + 40 + ext;
    let offset = |f: &Vec<u8>| u16::from_be_bytes([f[frag_at + 2], f[frag_at + 3]]) & 0xfff8;
    let mut sorted: Vec<&Vec<u8>> = fragments.iter().collect();
    sorted.sort_by_key(|f| offset(f));
    let mut out = sorted[0][..ETH_LEN + 40].to_vec();
    out[ETH_LEN + 6] = sorted[0][frag_at];
    for f in &sorted {
        out.extend_from_slice(&f[frag_at + 8..]);
    }
    let payload_len = (out.len() - ETH_LEN - 40) as u16;
    out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
    out
}

/// Each fragment's own addresses, its header checksum checked (IPv4).
fn addrs_v4(frame: &[u8]) -> (IpAddr, IpAddr) {
    let (h, _) = etherparse::Ipv4Header::from_slice(&frame[ETH_LEN..]).expect("IPv4");
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "fragment header checksum"
    );
    (h.source.into(), h.destination.into())
}

fn frag_events(dp: &Dp, event: FragEvent) -> u64 {
    let map = dp.ebpf.map(map_names::FRAG_STATS).unwrap();
    let arr = PerCpuArray::<_, u64>::try_from(map).unwrap();
    arr.get(&(event as u32), 0).unwrap().iter().sum()
}

/// A 4000-byte UDP datagram from alice to the office LAN, in 1480-byte pieces.
fn alice_datagram() -> (Vec<u8>, Vec<Vec<u8>>) {
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let whole = udp(ALICE, OTHER_HOST, 40000, 5000, &payload);
    let fragments = fragment_v4(&whole, 1480);
    assert_eq!(fragments.len(), 3);
    (whole, fragments)
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn in_order_fragments_take_the_first_ones_flow_and_translation() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP, true));
        let (_, fragments) = alice_datagram();
        let mut out = Vec::new();
        for f in &fragments {
            let (verdict, frame) = dp.overlay(f);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            out.push(frame);
        }
        for f in &out {
            assert_eq!(
                addrs_v4(f),
                (ip(RP_LAN), ip(OTHER_HOST)),
                "every fragment masqueraded"
            );
        }
        let (src, dst, sport, dport) = checked(&reassemble_v4(&out));
        assert_eq!((src, dst, dport), (ip(RP_LAN), ip(OTHER_HOST), 5000));
        assert_eq!(sport, 40000, "the peer's port, kept in the pool");
        let flows = dp.flows();
        assert_eq!(flows.len(), 1);
        let entry = flows[0].1;
        assert_eq!(
            entry.forward.packets, 3,
            "every fragment counts on the flow"
        );
        let bytes: usize = fragments.iter().map(|f| f.len() - ETH_LEN).sum();
        assert_eq!(entry.forward.bytes, bytes as u64);
        assert_eq!(entry.fragmented, 1);
        assert_eq!(frag_events(&dp, FragEvent::Tracked), 1);
        assert_eq!(frag_events(&dp, FragEvent::Followed), 2);
        assert_eq!(dp.drops(DropReason::Fragment), 0);
        assert_eq!(dp.drops(DropReason::FragmentOrphan), 0);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_fragment_before_its_first_goes_around_the_hold_and_then_through() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP, true));
        let (_, fragments) = alice_datagram();
        // Without a hold, an orphan is dropped, never forwarded blind.
        assert_eq!(dp.overlay(&fragments[2]).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::FragmentOrphan), 1);

        ip_in_ns("link add hold0 type veth peer name hold1");
        ip_in_ns("link set hold0 up");
        ip_in_ns("link set hold1 up");
        let hold = crate::datapath::ifindex("hold0").unwrap();
        dp.state.set_hold(hold, 4).unwrap();
        let (verdict, held, mark) = dp.run_marked(program_names::OVERLAY_L2, &fragments[2], 0);
        assert_eq!(verdict, TC_ACT_REDIRECT, "sent around the hold");
        assert_eq!(mark, HOLD_MARK | HOLD_FROM_OVERLAY << 8 | 1);
        assert_eq!(&held[..6], &HOLD_MAC, "addressed to the hold's far end");
        assert_eq!(frag_events(&dp, FragEvent::Held), 1);
        // It comes back before its first: around again.
        let (verdict, _, mark) = dp.run_marked(program_names::HOLD, &held, mark);
        assert_eq!((verdict, mark & 0xff), (TC_ACT_REDIRECT, 2));

        let mut out = vec![dp.overlay(&fragments[0]).1, dp.overlay(&fragments[1]).1];
        let (verdict, last, _) = dp.run_marked(program_names::HOLD, &held, mark);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        out.push(last);
        for f in &out {
            assert_eq!(addrs_v4(f), (ip(RP_LAN), ip(OTHER_HOST)));
        }
        let (src, dst, _, dport) = checked(&reassemble_v4(&out));
        assert_eq!((src, dst, dport), (ip(RP_LAN), ip(OTHER_HOST), 5000));
        assert_eq!(dp.flows()[0].1.forward.packets, 3);

        // One that never sees its first is dropped after its passes.
        let (_, other) = {
            let payload = vec![9u8; 3000];
            let whole = udp(ALICE, OTHER_HOST, 40001, 5000, &payload);
            let mut f = fragment_v4(&whole, 1480);
            f[1][ETH_LEN + 5] = 0x77; // another datagram id
            fix_ipv4_checksum(&mut f[1]);
            (whole, f)
        };
        let (verdict, _, _) = dp.run_marked(
            program_names::HOLD,
            &other[1],
            HOLD_MARK | HOLD_FROM_OVERLAY << 8 | 4,
        );
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::FragmentOrphan), 2);
        // Unmarked traffic at the hold's far end is not ours.
        assert_eq!(
            dp.run_marked(program_names::HOLD, &other[1], 0).0,
            TC_ACT_SHOT
        );
    });
}

/// Runs `ip` in the test's namespace.
fn ip_in_ns(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(status.success(), "ip {args}");
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn overlapping_fragments_poison_their_datagram() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-tcp\"\nsources = [\"Development\"]\n\
                     destination_resources = [\"office-lan\"]\nprotocol = \"tcp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        // A TCP segment with 20 bytes of options: its header is 40 bytes.
        let mut seg = tcp(ALICE, OTHER_HOST, 40000, 80, "A", &[5u8; 200]);
        let options = [1u8; 20];
        seg.splice(ETH_LEN + 40..ETH_LEN + 40, options);
        seg[ETH_LEN + 32] = 0xa0 | (seg[ETH_LEN + 32] & 0x0f); // data offset 10 words
        let tot_len = (seg.len() - ETH_LEN) as u16;
        seg[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot_len.to_be_bytes());
        fix_ipv4_checksum(&mut seg);
        let fragments = fragment_v4(&seg, 48);
        assert_eq!(dp.overlay(&fragments[0]).0, TC_ACT_REDIRECT);
        // A fragment at offset 24 would overwrite the options inspected.
        let mut overlap = fragments[1].clone();
        // MF, offset 3 * 8 = 24.
        overlap[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&0x2003u16.to_be_bytes());
        fix_ipv4_checksum(&mut overlap);
        assert_eq!(dp.overlay(&overlap).0, TC_ACT_SHOT);
        // The datagram is poisoned: its honest fragments go too.
        assert_eq!(dp.overlay(&fragments[1]).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::FragmentOverlap), 2);
        // Offset 8 lies inside any TCP header: dropped on sight (RFC 1858).
        let mut tiny_offset = fragments[1].clone();
        tiny_offset[ETH_LEN + 4] = 0x99; // another datagram
        tiny_offset[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&0x2001u16.to_be_bytes());
        fix_ipv4_checksum(&mut tiny_offset);
        assert_eq!(dp.overlay(&tiny_offset).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::FragmentOverlap), 3);
        // A second, different first fragment poisons its datagram.
        let (_, udp_frags) = alice_datagram();
        let mut lan_udp = Dp::new(&base_config(LAN_UDP, true));
        assert_eq!(lan_udp.overlay(&udp_frags[0]).0, TC_ACT_REDIRECT);
        let mut rival = udp_frags[0].clone();
        rival[ETH_LEN + 20 + 2..ETH_LEN + 20 + 4].copy_from_slice(&5001u16.to_be_bytes());
        assert_eq!(lan_udp.overlay(&rival).0, TC_ACT_SHOT);
        assert_eq!(lan_udp.overlay(&udp_frags[1]).0, TC_ACT_SHOT);
        assert_eq!(lan_udp.drops(DropReason::FragmentOverlap), 2);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_first_fragment_without_the_whole_transport_header_is_dropped() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-tcp\"\nsources = [\"Development\"]\n\
                     destination_resources = [\"office-lan\"]\nprotocol = \"tcp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let seg = tcp(ALICE, OTHER_HOST, 40000, 80, "S", &[5u8; 64]);
        let fragments = fragment_v4(&seg, 16);
        assert_eq!(dp.overlay(&fragments[0]).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::FragmentTiny), 1);
        assert!(dp.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn the_fragments_of_a_denied_datagram_never_reach_the_lan() {
    in_netns(|| {
        // Only TCP 443 to the wiki: UDP there is denied.
        let mut dp = Dp::new(&base_config("", true));
        let payload = vec![1u8; 3000];
        let fragments = fragment_v4(&udp(ALICE, WIKI, 40000, 443, &payload), 1480);
        for f in &fragments {
            assert_eq!(dp.overlay(f).0, TC_ACT_SHOT);
        }
        assert_eq!(dp.drops(DropReason::NoPolicy), 1);
        assert_eq!(dp.drops(DropReason::Fragment), 2, "the later ones");
        assert_eq!(frag_events(&dp, FragEvent::Held), 0, "not held either");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn a_fragmented_reply_is_translated_back_to_the_peer() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(LAN_UDP, true));
        let (verdict, out) = dp.overlay(&udp(ALICE, OTHER_HOST, 40000, 5000, b"request"));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let nat_port = checked(&out).2;
        let payload: Vec<u8> = (0..6000u32).map(|i| (i * 13) as u8).collect();
        let reply = udp(OTHER_HOST, RP_LAN, 5000, nat_port, &payload);
        let fragments = fragment_v4(&reply, 1480);
        let mut back = Vec::new();
        // Out of order after the first: the first is what opens the way.
        for i in [0, 3, 1, 4, 2] {
            let (verdict, frame) = dp.lan_tc(&fragments[i]);
            assert_eq!(verdict, TC_ACT_REDIRECT, "fragment {i}");
            back.push(frame);
        }
        for f in &back {
            assert_eq!(
                addrs_v4(f),
                (ip(OTHER_HOST), ip(ALICE)),
                "every fragment back to alice"
            );
        }
        let (src, dst, sport, dport) = checked(&reassemble_v4(&back));
        assert_eq!(
            (src, dst, sport, dport),
            (ip(OTHER_HOST), ip(ALICE), 5000, 40000)
        );
        let entry = dp.flows()[0].1;
        assert_eq!(entry.reply.packets, 5);
        assert_eq!(entry.fragmented, 1);
        // XDP leaves fragments to TC.
        assert_eq!(dp.lan(&fragments[1]).0, XDP_PASS);
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn ipv6_fragments_behind_extension_headers_are_tracked_and_translated() {
    in_netns(|| {
        let extra = "[[networks.resources]]\nname = \"lan6\"\naddress = \"2001:db8:1::/64\"\n\
                     groups = [\"LAN6\"]\n\n[[policies]]\nname = \"lan6-udp\"\n\
                     sources = [\"Development\"]\ndestinations = [\"LAN6\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::new(&base_config(extra, true));
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        let whole = udp_v6(&payload);
        for dest_opts in [false, true] {
            let fragments = fragment_v6(&whole, 1232, dest_opts);
            assert_eq!(fragments.len(), 3);
            let mut out = Vec::new();
            for f in &fragments {
                let (verdict, frame) = dp.overlay(f);
                assert_eq!(verdict, TC_ACT_REDIRECT, "dest_opts {dest_opts}");
                out.push(frame);
            }
            let rp6: [u8; 16] = "2001:db8:1::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets();
            for f in &out {
                assert_eq!(
                    &f[ETH_LEN + 8..ETH_LEN + 24],
                    &rp6,
                    "every fragment masqueraded"
                );
            }
            let (src, dst, _, dport) = checked(&reassemble_v6(&out, dest_opts));
            assert_eq!(
                src,
                "2001:db8:1::1".parse::<IpAddr>().unwrap(),
                "masqueraded"
            );
            assert_eq!(
                (dst, dport),
                ("2001:db8:1::5".parse::<IpAddr>().unwrap(), 53)
            );
        }
        assert_eq!(dp.drops(DropReason::Malformed), 0);
        assert_eq!(frag_events(&dp, FragEvent::Followed), 4);
    });
}
