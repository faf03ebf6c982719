//! Events: what the data path reports through the ring buffer (a flow's
//! start, a drop with its rule, a revoked flow's end), what it aggregates
//! (a dropped packet like the last), and that an established packet
//! reports nothing.

use aya::maps::RingBuf;
use routing_peer_common::{DropAgg, DropKey, EndReason, Event, EventKind, EVENT_FROM_OVERLAY};

use super::*;

const NO_SSH: &str = "[[policies]]\nname = \"no-ssh\"\nsources = [\"Development\"]\n\
    destinations = [\"Internal Apps\"]\nprotocol = \"tcp\"\nports = [22]\naction = \"drop\"\n";

fn drain(dp: &mut Dp) -> Vec<Event> {
    let map = dp.ebpf.map_mut(map_names::EVENTS).unwrap();
    let mut ring = RingBuf::try_from(map).unwrap();
    crate::events::reader::Reader::drain(&mut ring)
}

fn aggregates(dp: &Dp) -> Vec<(DropKey, DropAgg)> {
    let map = dp.ebpf.map(map_names::DROP_AGG).unwrap();
    let agg = BpfHashMap::<_, DropKey, DropAgg>::try_from(map).unwrap();
    agg.iter().map(|r| r.unwrap()).collect()
}

fn v4(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn starts_drops_and_ends_are_reported_and_established_packets_are_not() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config(NO_SSH, true));
        assert!(drain(&mut dp).is_empty());

        // A new flow: its start, with peer, resource, rule and NAT.
        let syn = tcp(ALICE, WIKI, 40000, 443, "S", &[]);
        assert_eq!(dp.overlay(&syn).0, TC_ACT_REDIRECT);
        let events = drain(&mut dp);
        assert_eq!(events.len(), 1, "{events:?}");
        let start = events[0];
        assert_eq!(start.kind, EventKind::Start as u8);
        assert_eq!((start.src, start.dst), (v4(ALICE), v4(WIKI)));
        assert_eq!((start.sport, start.dport, start.proto), (40000, 443, 6));
        assert_eq!((start.peer_id, start.resource_id, start.rule_id), (1, 1, 1));
        assert_eq!((start.nat_addr, start.nat_port), (v4(RP_LAN), 40000));

        // Its established packets: nothing.
        let data = tcp(ALICE, WIKI, 40000, 443, "A", b"GET /");
        for _ in 0..3 {
            assert_eq!(dp.overlay(&data).0, TC_ACT_REDIRECT);
        }
        assert!(
            drain(&mut dp).is_empty(),
            "an established packet reported something"
        );

        // A drop rule: the drop, its rule; the retransmission only counted.
        let ssh = tcp(ALICE, WIKI, 40001, 22, "S", &[]);
        assert_eq!(dp.overlay(&ssh).0, TC_ACT_SHOT);
        let events = drain(&mut dp);
        assert_eq!(events.len(), 1, "{events:?}");
        let d = events[0];
        assert_eq!(d.kind, EventKind::Drop as u8);
        assert_eq!(d.reason, DropReason::PolicyDrop as u8);
        assert_eq!((d.peer_id, d.resource_id, d.rule_id), (1, 1, 2));
        assert_eq!(
            (d.tcp_flags, d.count, d.hook),
            (0x02, 1, EVENT_FROM_OVERLAY)
        );
        assert_eq!(dp.overlay(&ssh).0, TC_ACT_SHOT);
        assert_eq!(dp.overlay(&ssh).0, TC_ACT_SHOT);
        assert!(
            drain(&mut dp).is_empty(),
            "a drop like the last is aggregated"
        );
        let aggs = aggregates(&dp);
        assert_eq!(aggs.len(), 1);
        assert_eq!((aggs[0].0.dport, aggs[0].1.count), (22, 3));
        assert_eq!(aggs[0].1.first.rule_id, 2);

        // Sales has no policy: a drop with its peer, no rule.
        assert_eq!(
            dp.overlay(&tcp(CAROL_SALES, WIKI, 40002, 443, "S", &[])).0,
            TC_ACT_SHOT
        );
        let d = drain(&mut dp)[0];
        assert_eq!(d.reason, DropReason::NoPolicy as u8);
        assert_eq!((d.peer_id, d.resource_id, d.rule_id), (3, 1, 0));

        // The policy goes: the flow's next packet ends it (revoked), with
        // its counts, and is dropped.
        dp.install(&base_config("", true).replace("ports = [443]", "ports = [444]"));
        assert_eq!(dp.overlay(&data).0, TC_ACT_SHOT);
        let events = drain(&mut dp);
        let end = events
            .iter()
            .find(|e| e.kind == EventKind::End as u8)
            .expect("the revoked flow's end");
        assert_eq!(end.reason, EndReason::Revoked as u8);
        assert_eq!((end.forward.packets, end.sport), (4, 40000));
        assert!(events.iter().any(
            |e| e.kind == EventKind::Drop as u8 && e.reason == DropReason::PolicyRevoked as u8
        ));
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn flows_the_lru_evicted_are_found_gone_by_gc_with_their_counts() {
    in_netns(|| {
        let extra = "[[policies]]\nname = \"lan-udp\"\nsources = [\"Development\"]\ndestination_resources = [\"office-lan\"]\nprotocol = \"udp\"\n";
        let mut dp = Dp::with_sizes(&base_config(extra, false), &[(map_names::CONNTRACK, 1024)]);
        let flow = |dp: &mut Dp, port: u16| {
            assert_eq!(
                dp.overlay(&udp(ALICE, OTHER_HOST, port, 53, b"x")).0,
                TC_ACT_REDIRECT
            );
        };
        for port in 10_000..10_500 {
            flow(&mut dp, port);
        }
        let config = DatapathConfig::default();
        let mut gc = super::super::gc::GcMaps::take(&mut dp.ebpf).unwrap();
        let first = gc.collect(&config).unwrap();
        assert!(first.vanished.is_empty());
        let before: std::collections::HashSet<CtKey> = gc.live_keys().copied().collect();
        assert_eq!(before.len(), first.flows_live);
        // 2000 more through a table of 1024: the LRU makes room.
        for port in 20_000..22_000 {
            flow(&mut dp, port);
        }
        let second = gc.collect(&config).unwrap();
        let after: std::collections::HashSet<CtKey> = gc.live_keys().copied().collect();
        let evicted: std::collections::HashSet<CtKey> =
            before.difference(&after).copied().collect();
        assert!(!evicted.is_empty(), "nothing was evicted");
        let vanished: std::collections::HashSet<CtKey> =
            second.vanished.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            vanished, evicted,
            "exactly the first pass's flows that are gone"
        );
        assert!(second.vanished.iter().all(|(_, e)| e.forward.packets == 1));
        assert!(second.ended.is_empty(), "none expired");
    });
}
