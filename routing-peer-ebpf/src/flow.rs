//! What both directions share: a flow's key and policy port, and the
//! re-check of a tracked flow against a changed policy.

use routing_peer_common::{
    AddrKey, CtEntry, CtKey, DatapathConfig, DropReason, Family, DEST_SELF, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{conntrack, parse::Packet, policy, policy::Verdict};

#[inline(always)]
pub fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// The port policy matches on: the destination port for TCP and UDP, none otherwise.
#[inline(always)]
pub fn policy_port(proto: u8, port: u16) -> u16 {
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        port
    } else {
        0
    }
}

#[inline(always)]
pub fn forward_key(pkt: &Packet) -> CtKey {
    CtKey::new(
        Family::of(pkt.ipv6),
        pkt.proto,
        (pkt.src, pkt.sport),
        (pkt.dst, if is_icmp(pkt.proto) { 0 } else { pkt.dport }),
    )
}

/// Re-checks a tracked flow against the current policy when it changed.
/// A flow the new policy no longer allows is removed and its packet dropped.
#[inline(always)]
pub fn revalidate(
    entry: *mut CtEntry,
    key: &CtKey,
    src_class: Option<u32>,
    cfg: &DatapathConfig,
) -> Result<(), DropReason> {
    // SAFETY: map value pointer, valid for this run.
    if unsafe { (*entry).policy_gen } == cfg.policy_gen {
        return Ok(());
    }
    let slot = cfg.active_slot;
    let family = key.family();
    let src_class = match src_class {
        Some(c) => Some(c),
        None => policy::peer(slot, &AddrKey::new(family, key.peer)).map(|p| p.src_class),
    };
    let dest = policy::dest(slot, &AddrKey::new(family, key.remote));
    if let (Some(src_class), Some(dest)) = (src_class, dest) {
        let port = policy_port(key.proto, key.remote_port);
        if let Verdict::Accept(rule_id) =
            policy::decide(slot, src_class, dest.dst_class, key.proto, port)
        {
            if dest.flags & DEST_SELF == 0 {
                // SAFETY: as above.
                unsafe {
                    (*entry).rule_id = rule_id;
                    (*entry).resource_id = dest.resource_id;
                    (*entry).policy_gen = cfg.policy_gen;
                }
                return Ok(());
            }
        }
    }
    crate::events::flow(
        key,
        entry,
        routing_peer_common::EventKind::End,
        routing_peer_common::EndReason::Revoked,
    );
    conntrack::remove(key);
    Err(DropReason::PolicyRevoked)
}
