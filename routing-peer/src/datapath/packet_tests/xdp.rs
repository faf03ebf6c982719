//! The XDP paths: replies translated and redirected, the overlay forward path without an skb.

use super::*;

/// Where the overlay takes XDP redirects (an L2 stand-in whose peer runs
/// XDP), XDP translates and redirects replies itself, checksums included.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn xdp_fast_path_translates_and_redirects_replies() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        // Our own neighbour entry, so the XDP FIB lookup resolves Alice's MAC.
        dp.xdp_egress("ov0", "100.64.0.2", "02:00:00:00:00:aa");
        assert_eq!(
            dp.overlay(&tcp(ALICE, WIKI, 40050, 443, "S", &[])).0,
            TC_ACT_REDIRECT
        );
        let syn_ack = tcp(WIKI, RP_LAN, 443, 40050, "SA", &[]);
        let (verdict, out) = dp.lan(&syn_ack);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(checked(&out), (ip(WIKI), ip(ALICE), 443, 40050));
        assert_eq!(
            &out[..6],
            &[2, 0, 0, 0, 0, 0xaa],
            "destination MAC from the FIB"
        );
        assert_eq!(out[ETH_LEN + 8], 63, "TTL decremented");
        assert_eq!(dp.flows()[0].1.reply.packets, 1);
    });
}

/// The overlay's XDP path: where the egress takes XDP redirects, the whole
/// forward path (policy, conntrack, masquerade) runs without an skb.
#[test]
#[ignore = "needs root and network namespaces: cargo xtask test runs it"]
fn xdp_overlay_forwards_and_masquerades_without_an_skb() {
    in_netns(|| {
        let mut dp = Dp::new(&base_config("", true));
        let lan0 = dp.xdp_egress("lan0", "198.51.100.5", "02:00:00:00:00:55");
        let syn = tcp(ALICE, WIKI, 40060, 443, "S", &[]);
        let (verdict, out) = dp.run(program_names::OVERLAY_XDP, &syn);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(checked(&out), (ip(RP_LAN), ip(WIKI), 40060, 443));
        assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 0x55]);
        assert_eq!(dp.flows()[0].1.forward.packets, 1);
        // Denied traffic is dropped right there.
        let (verdict, _) = dp.run(
            program_names::OVERLAY_XDP,
            &tcp(ALICE, WIKI, 40061, 80, "S", &[]),
        );
        assert_eq!(verdict, XDP_DROP);
        // Without an XDP-capable egress it passes untouched, state untouched, to TC.
        let map = dp.ebpf.map_mut(map_names::XDP_REDIRECT_IFACES).unwrap();
        BpfHashMap::<_, u32, u32>::try_from(map)
            .unwrap()
            .remove(&lan0)
            .unwrap();
        let other = tcp(ALICE, WIKI, 40062, 443, "S", &[]);
        let (verdict, out) = dp.run(program_names::OVERLAY_XDP, &other);
        assert_eq!((verdict, out), (XDP_PASS, other));
        assert_eq!(dp.flows().len(), 1);
    });
}
