//! The daemon's upkeep: peer liveness, pool ports held by local sockets,
//! conntrack GC, DNS-resolved addresses, and the state the CLI reads.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use super::{self_addresses, unix_now, Daemon};
use crate::{
    control::{self, PeerReport},
    datapath::ports,
    dns,
    model::DestPrefix,
};

impl Daemon {
    pub(super) fn refresh_peers(&mut self) {
        let reported = match self.wg.peers() {
            Ok(p) => p,
            Err(e) => {
                warn!("reading WireGuard peers: {e}");
                return;
            }
        };
        let now = unix_now();
        let mut peers = Vec::new();
        for peer in &self.config.peers {
            let wg = reported.iter().find(|r| r.is(peer));
            let age = wg
                .filter(|w| w.last_handshake_unix > 0)
                .map(|w| now.saturating_sub(w.last_handshake_unix));
            // Up: a recent handshake, or traffic (keepalives count) since.
            // Handshakes alone renew only every two minutes.
            let rx = wg.map(|w| w.rx_bytes).unwrap_or(0);
            let window = Duration::from_secs(self.config.routing_peer.peer_down_after_secs);
            let rx_seen = self
                .peers_rx
                .entry(peer.name.clone())
                .or_insert((rx, std::time::Instant::now()));
            if rx != rx_seen.0 {
                *rx_seen = (rx, std::time::Instant::now());
            }
            let recent_rx = rx > 0 && rx_seen.1.elapsed() < window;
            let up = age.is_some_and(|a| a < window.as_secs()) || (age.is_some() && recent_rx);
            let was_up = self.peers_up.insert(peer.name.clone(), up).unwrap_or(false);
            if up && !was_up {
                info!(event = "peer_connected", peer = %peer.name, "peer connected");
            } else if !up && was_up {
                warn!(event = "peer_disconnected", peer = %peer.name, "peer disconnected");
            }
            peers.push(PeerReport {
                name: peer.name.clone(),
                addresses: peer.addresses.iter().map(|a| a.to_string()).collect(),
                public_key: wg
                    .map(|w| w.public_key.clone())
                    .unwrap_or_else(|| peer.public_key.clone()),
                endpoint: wg.and_then(|w| w.endpoint.clone()),
                handshake_age_secs: age,
                rx_bytes: wg.map(|w| w.rx_bytes).unwrap_or(0),
                tx_bytes: wg.map(|w| w.tx_bytes).unwrap_or(0),
                up,
            });
        }
        crate::locks::lock(&self.status).peers = peers;
    }

    /// Keeps the pool ports the routing peer's own sockets hold away from
    /// masqueraded flows.
    pub(super) fn reserve_held_ports(&mut self) {
        let pool = (
            self.policy.config.snat_port_min,
            self.policy.config.snat_port_max,
        );
        let held = ports::held_ports(pool);
        match self.reserved.sync(&held) {
            Ok(n) if n > 0 => debug!(
                ports = n,
                "pool ports held by local sockets kept out of NAT"
            ),
            Ok(_) => {}
            Err(e) => warn!("reserving pool ports held by local sockets: {e}"),
        }
    }

    pub(super) fn collect_garbage(&mut self) {
        self.reserve_held_ports();
        match self.gc.collect(&self.policy.config) {
            Ok(s) => {
                if s.flows_expired + s.nat_removed > 0 {
                    info!(
                        live = s.flows_live,
                        expired = s.flows_expired,
                        nat_removed = s.nat_removed,
                        "conntrack GC"
                    );
                }
                self.publish_ends(&s);
            }
            Err(e) => warn!("conntrack GC: {e}"),
        }
    }

    pub(super) fn resolved_addrs(&self) -> HashMap<String, Vec<IpAddr>> {
        self.resolved
            .iter()
            .map(|(name, addrs)| (name.clone(), addrs.keys().copied().collect()))
            .collect()
    }

    /// Puts DNS-resolved addresses in the data path, then lets the answer go.
    pub(super) fn install_resolved(&mut self, install: dns::Install) {
        self.events.stale = true;
        let Some(value) = self
            .compiled
            .domain_dests
            .get(&install.resource_id)
            .copied()
        else {
            return; // the resource went away meanwhile: the answer gets SERVFAIL
        };
        let name = self.compiled.names.resources[install.resource_id as usize].clone();
        let dns_cfg = &self.config.dns;
        for (ip, ttl) in install.addrs {
            let lifetime = u64::from(ttl.max(dns_cfg.min_ttl_secs) + dns_cfg.grace_secs);
            if let Err(e) = self
                .policy
                .upsert_dest(DestPrefix::new(IpNet::from(ip)), value)
            {
                error!(%ip, resource = %name, "installing a resolved address: {e}");
                return;
            }
            self.resolved
                .entry(name.clone())
                .or_default()
                .insert(ip, Instant::now() + Duration::from_secs(lifetime));
            self.dns_counters
                .installed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = install.done.send(());
        let _ = self.publish();
    }

    pub(super) fn expire_resolved(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (name, addrs) in &mut self.resolved {
            addrs.retain(|ip, expires| {
                let keep = *expires > now;
                if !keep {
                    expired.push((name.clone(), *ip));
                }
                keep
            });
        }
        self.resolved.retain(|_, addrs| !addrs.is_empty());
        let prefixes: Vec<DestPrefix> = expired
            .iter()
            .map(|(_, ip)| DestPrefix::new(IpNet::from(*ip)))
            .collect();
        match self.policy.expire_dests(&prefixes) {
            Ok(()) => {
                for (name, ip) in &expired {
                    self.dns_counters
                        .expired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(resource = %name, %ip, "resolved address expired: its flows are cut");
                }
            }
            Err(e) => warn!("removing expired addresses: {e}"),
        }
    }

    pub(super) fn publish(&self) -> Result<()> {
        let status = {
            let mut status = crate::locks::lock(&self.status);
            status.dns = self.dns_counters.snapshot();
            status.events = self.event_counters();
            // Expired DNS grants bump it too.
            status.generation = self.policy.config.policy_gen;
            // Addresses come and go (DHCP, an operator): `policy check`
            // treats every current one as the input chain.
            status.self_addresses = self_addresses(&self.config);
            let mut resolved: Vec<(String, Vec<String>)> = self
                .resolved
                .iter()
                .map(|(n, a)| (n.clone(), a.keys().map(|ip| ip.to_string()).collect()))
                .collect();
            resolved.sort();
            status.resolved = resolved;
            status.clone()
        };
        control::write_state(&self.opts.instance, &status)
    }
}
