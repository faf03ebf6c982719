//! `routing-peer policy check`: would this traffic pass, and which rule
//! decides? Runs the data path's own lookups on the compiled tables.

use std::net::IpAddr;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::{
    compile::Compiled,
    config::{Config, ResourceAddress},
};
use routing_peer_common::{
    MasqKey, ACTION_ACCEPT, DEST_MASQUERADE, DEST_MASQ_BY_RULE, DEST_SELF, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub chain: &'static str,
    pub peer: Option<String>,
    pub resource: Option<String>,
    pub rule: Option<String>,
    /// For an allowed forward: whether the flow is masqueraded (the
    /// setting of the resource whose rule grants it).
    pub masquerade: Option<bool>,
    pub reason: String,
}

/// Resolves `--from` (a peer name or overlay address) to an address.
pub fn source_addr(config: &Config, from: &str, want_v6: bool) -> Result<IpAddr> {
    if let Ok(ip) = from.parse::<IpAddr>() {
        return Ok(ip);
    }
    let Some(peer) = config.peers.iter().find(|p| p.name == from) else {
        bail!("no peer named `{from}`");
    };
    peer.addresses
        .iter()
        .find(|a| a.is_ipv6() == want_v6)
        .or_else(|| peer.addresses.first())
        .copied()
        .ok_or_else(|| anyhow::anyhow!("peer `{from}` has no address"))
}

pub fn proto_number(proto: &str, v6: bool) -> Result<u8> {
    Ok(match proto {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        "icmp" if v6 => IPPROTO_ICMPV6,
        "icmp" => IPPROTO_ICMP,
        other => bail!("unknown protocol `{other}`: use tcp, udp or icmp"),
    })
}

pub fn check(compiled: &Compiled, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Verdict {
    let tables = &compiled.tables;
    let name = |list: &[String], id: u32| list.get(id as usize).cloned();
    let mut v = Verdict {
        allowed: false,
        chain: "forward",
        peer: None,
        resource: None,
        rule: None,
        masquerade: None,
        reason: String::new(),
    };
    let Some(peer) = tables.peer(src) else {
        v.reason = format!("{src} is no configured peer's overlay address");
        return v;
    };
    v.peer = name(&compiled.names.peers, peer.peer_id);
    let Some((net, dest)) = tables.dest(dst) else {
        v.reason = format!("{dst} is in no enabled resource (default deny)");
        return v;
    };
    if dest.flags & DEST_SELF != 0 {
        v.chain = "input";
    } else {
        v.resource = name(&compiled.names.resources, dest.resource_id);
    }
    let port = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        port
    } else {
        0
    };
    match tables.decide(peer.src_class, dest.dst_class, proto, port) {
        Some(p) if p.action == ACTION_ACCEPT => {
            v.allowed = true;
            v.rule = name(&compiled.names.rules, p.rule_id);
            if v.chain == "forward" {
                let own = dest.flags & DEST_MASQUERADE != 0;
                let by_rule = (dest.flags & DEST_MASQ_BY_RULE != 0)
                    .then(|| {
                        tables.masq.get(&MasqKey {
                            resource_id: dest.resource_id,
                            rule_id: p.rule_id,
                        })
                    })
                    .flatten();
                v.masquerade = Some(by_rule.map(|m| *m != 0).unwrap_or(own));
            }
            v.reason = format!(
                "allowed by policy `{}` (matched {net})",
                v.rule.clone().unwrap_or_default()
            );
        }
        Some(p) => {
            v.rule = name(&compiled.names.rules, p.rule_id);
            v.reason = format!("dropped by policy `{}`", v.rule.clone().unwrap_or_default());
        }
        None if v.chain == "input" => {
            v.reason = "to the routing peer itself: no peer (input-chain) policy allows it; resource policies never do".into();
        }
        None => v.reason = "no policy allows it (default deny)".into(),
    }
    v
}

/// The resource whose policy grants traffic to `dst`: the most specific
/// enabled host or subnet resource covering `dst` that the policy named
/// `rule` targets. `None` for domain resources and the input chain.
pub fn granting_resource(config: &Config, dst: IpAddr, rule: &str) -> Option<String> {
    let policy = config.policies.iter().find(|p| p.name == rule)?;
    config
        .networks
        .iter()
        .flat_map(|n| &n.resources)
        .filter(|r| r.enabled)
        .filter(|r| {
            policy.destination_resources.contains(&r.name)
                || policy.destinations.iter().any(|g| r.groups.contains(g))
        })
        .filter_map(
            |r| match crate::config::parse_resource_address(&r.address) {
                Ok(ResourceAddress::Host(n)) | Ok(ResourceAddress::Subnet(n))
                    if n.contains(&dst) =>
                {
                    Some((n.prefix_len(), r.name.clone()))
                }
                _ => None,
            },
        )
        .max_by_key(|(len, _)| *len)
        .map(|(_, name)| name)
}
