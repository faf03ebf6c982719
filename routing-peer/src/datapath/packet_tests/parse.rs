//! Parsing: counters per hook, non-IP, malformed IPv4, fragments, IPv6 extension headers, and the verifier on every program.

use super::*;

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn valid_ipv4_is_counted_exactly_per_hook() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let frame = udp(WIKI, RP_LAN, 5353, 40000, &[7u8; 100]);
        assert_eq!(dp.lan(&frame).0, XDP_PASS);
        assert_eq!(dp.lan(&frame).0, XDP_PASS);
        let snap = stats::read_loaded(&dp.ebpf).unwrap();
        let lan = snap.hook(Hook::LanIngress);
        assert_eq!((lan.packets, lan.bytes), (2, 2 * frame.len() as u64));
        assert_eq!(snap.hook(Hook::OverlayIngress).packets, 0);
        assert!(snap.drops.iter().all(|d| d.packets == 0), "{snap:?}");
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn non_ip_frames_pass_untouched() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let mut arp = Vec::from([0xffu8; 6]);
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(dp.lan(&arp).0, XDP_PASS);
        assert_eq!(dp.overlay(&arp).0, TC_ACT_OK);
    });
}

/// Each malformed variant is dropped and counted under `malformed`, bytes included.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn malformed_ipv4_is_dropped_and_counted() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let good = udp(ALICE, WIKI, 1000, 443, &[1u8; 32]);
        let truncated_ip = good[..ETH_LEN + 12].to_vec();
        let mut bad_ihl = good.clone();
        bad_ihl[ETH_LEN] = 0x44;
        let mut long_total = good.clone();
        long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        let mut bad_version = good.clone();
        bad_version[ETH_LEN] = 0x55;
        let mut truncated_udp = good[..ETH_LEN + 20 + 4].to_vec();
        truncated_udp[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&24u16.to_be_bytes());
        let cases = [
            truncated_ip,
            bad_ihl,
            long_total,
            bad_version,
            truncated_udp,
        ];
        let (mut packets, mut bytes) = (0, 0);
        for (i, frame) in cases.iter().enumerate() {
            assert_eq!(dp.lan(frame).0, XDP_DROP, "case {i} on the LAN");
            (packets, bytes) = (packets + 1, bytes + frame.len() as u64);
            // The kernel's skb test run refuses frames shorter than an IPv4
            // header (EINVAL), so the TC path sees the others only.
            if frame.len() >= ETH_LEN + 20 {
                assert_eq!(dp.overlay(frame).0, TC_ACT_SHOT, "case {i} on the overlay");
                (packets, bytes) = (packets + 1, bytes + frame.len() as u64);
            }
        }
        let snap = stats::read_loaded(&dp.ebpf).unwrap();
        let malformed = snap.drop(DropReason::Malformed);
        assert_eq!((malformed.packets, malformed.bytes), (packets, bytes));
        assert!(dp.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn ipv6_extension_headers_are_walked() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let v6 = udp_v6(&[3u8; 8]);
        let mut hbh = v6[..ETH_LEN + 40].to_vec();
        hbh[ETH_LEN + 6] = 0;
        hbh.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        hbh.extend_from_slice(&v6[ETH_LEN + 40..]);
        let payload_len = (hbh.len() - ETH_LEN - 40) as u16;
        hbh[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
        // Parsed through to UDP: policy then denies UDP to the wiki.
        assert_eq!(dp.overlay(&hbh).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::NoPolicy), 1);
        let mut truncated = hbh.clone();
        truncated[ETH_LEN + 41] = 8; // 72 bytes of options
        assert_eq!(dp.overlay(&truncated).0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::Malformed), 1);
    });
}

/// Every program in the objects (the benchmark's and the per-CPU LRU
/// comparison with feature `bench`, as `cargo xtask test` builds) passes
/// the verifier: a program no test
/// loads could otherwise break unseen.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn every_program_in_the_object_passes_the_verifier() {
    in_netns(|| {
        let ebpf = datapath::load(None, datapath::log_level_for(false), &[]).expect("load");
        assert_eq!(load_all(ebpf), 6, "the data path's programs");
        #[cfg(feature = "bench")]
        {
            let bench = aya::EbpfLoader::new()
                .load(datapath::BENCH_OBJECT)
                .expect("load the benchmark's object");
            assert_eq!(
                load_all(bench),
                13,
                "the data path's and the benchmark's seven"
            );
            let lru = aya::EbpfLoader::new()
                .load(datapath::PERCPU_LRU_OBJECT)
                .expect("load the per-CPU LRU comparison object");
            assert_eq!(load_all(lru), 6, "the per-CPU LRU object's");
        }
    });
}

/// Loads every program of `ebpf` into the kernel; returns how many.
fn load_all(mut ebpf: aya::Ebpf) -> usize {
    let mut loaded = 0;
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => panic!("{name}: a program type we do not attach"),
        };
        result.unwrap_or_else(|e| panic!("{name} fails the verifier: {e}"));
        loaded += 1;
    }
    loaded
}
