//! The DNS forwarder for domain resources.
//!
//! It answers only names that an enabled domain resource covers, and only
//! for peers that some policy lets reach that resource; everything else is
//! REFUSED, so it is never an open resolver and internal names don't leak.
//! Covered queries go to the upstream servers; every A/AAAA address in the
//! answer is installed in the data path for that resource *before* the
//! answer leaves, so the client's first packet is not dropped. Entries
//! expire after the record's TTL (raised to a floor) plus a grace period,
//! unless a later answer refreshes them. When every upstream fails the
//! answer is SERVFAIL (no stale answers are served).
//!
//! Parsing and building messages is hickory-proto's job.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RData,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::{
    compile::{Compiled, DomainResource},
    config::{Action, Config},
};

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What the forwarder needs from the configuration; rebuilt on every reload.
#[derive(Debug, Default)]
pub struct View {
    pub domains: Vec<DomainResource>,
    /// Peer overlay address → domain resource ids it may resolve.
    pub access: HashMap<IpAddr, HashSet<u32>>,
    pub upstreams: Vec<SocketAddr>,
}

impl View {
    pub fn new(config: &Config, compiled: &Compiled) -> Self {
        // For each domain resource: the source groups of the accept policies that cover it.
        let allowed_groups: Vec<(u32, HashSet<&str>)> = compiled
            .domains
            .iter()
            .map(|d| {
                let groups = config
                    .policies_covering(&d.name, &d.groups)
                    .filter(|p| p.action == Action::Accept)
                    .flat_map(|p| p.sources.iter().map(String::as_str))
                    .collect();
                (d.resource_id, groups)
            })
            .collect();
        let mut access: HashMap<IpAddr, HashSet<u32>> = HashMap::new();
        for peer in &config.peers {
            let ids: HashSet<u32> = allowed_groups
                .iter()
                .filter(|(_, groups)| peer.groups.iter().any(|g| groups.contains(g.as_str())))
                .map(|(id, _)| *id)
                .collect();
            for addr in &peer.addresses {
                access.insert(*addr, ids.clone());
            }
        }
        let upstreams = if config.dns.upstreams.is_empty() {
            host_resolvers()
        } else {
            config.dns.upstreams.clone()
        };
        Self {
            domains: compiled.domains.clone(),
            access,
            upstreams,
        }
    }

    /// The domain resource covering `name` (see `compile::domain_for`).
    pub fn resource_for(&self, name: &str) -> Option<&DomainResource> {
        crate::compile::domain_for(&self.domains, name)
    }
}

/// The host's resolvers, from /etc/resolv.conf.
fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[derive(Debug, Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub installed: AtomicU64,
    pub expired: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub queries: u64,
    pub refused: u64,
    pub upstream_failures: u64,
    pub installed: u64,
    pub expired: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            queries: self.queries.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            upstream_failures: self.upstream_failures.load(Ordering::Relaxed),
            installed: self.installed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }
}

/// A request to the daemon to install resolved addresses; answered once
/// they are in the data path.
pub struct Install {
    pub resource_id: u32,
    pub addrs: Vec<(IpAddr, u32)>,
    pub done: oneshot::Sender<()>,
}

#[derive(Clone)]
pub struct Forwarder {
    pub view: Arc<RwLock<View>>,
    pub counters: Arc<Counters>,
    pub install: mpsc::Sender<Install>,
}

impl Forwarder {
    /// Serves DNS on UDP and TCP at `bind` until the task is dropped.
    pub async fn serve(self, bind: SocketAddr) -> Result<()> {
        let udp = Arc::new(
            UdpSocket::bind(bind)
                .await
                .with_context(|| format!("DNS on udp/{bind}"))?,
        );
        let tcp = TcpListener::bind(bind)
            .await
            .with_context(|| format!("DNS on tcp/{bind}"))?;
        let tcp_fwd = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = tcp.accept().await else {
                    continue;
                };
                let fwd = tcp_fwd.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    if let Some(answer) = fwd.answer(&query, peer.ip()).await {
                        let _ = stream.write_all(&(answer.len() as u16).to_be_bytes()).await;
                        let _ = stream.write_all(&answer).await;
                    }
                });
            }
        });
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await?;
            let query = buf[..n].to_vec();
            let fwd = self.clone();
            let udp = udp.clone();
            tokio::spawn(async move {
                if let Some(answer) = fwd.answer(&query, peer.ip()).await {
                    let _ = udp.send_to(&answer, peer).await;
                }
            });
        }
    }

    /// The answer to `query` from `client`; `None` for garbage.
    pub async fn answer(&self, query: &[u8], client: IpAddr) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        // One question per query, as every resolver sends: checking one of
        // several and forwarding all would let the others through unchecked.
        let Some(name) = single_question(&request) else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return reply_code(&request, ResponseCode::Refused);
        };
        let resource = {
            let view = crate::locks::read(&self.view);
            let resource = view.resource_for(&name).cloned();
            match resource {
                Some(r)
                    if view
                        .access
                        .get(&client)
                        .is_some_and(|ids| ids.contains(&r.resource_id)) =>
                {
                    Some((r, view.upstreams.clone()))
                }
                _ => None,
            }
        };
        let Some((resource, upstreams)) = resource else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            debug!(%client, name, "refused");
            return reply_code(&request, ResponseCode::Refused);
        };
        let Some(raw) = forward(query, &upstreams).await else {
            self.counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(name, "every upstream failed; SERVFAIL");
            return reply_code(&request, ResponseCode::ServFail);
        };
        let response = Message::from_vec(&raw).ok()?;
        let addrs: Vec<(IpAddr, u32)> = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
                _ => None,
            })
            .collect();
        if !addrs.is_empty() {
            let (done, installed) = oneshot::channel();
            let install = Install {
                resource_id: resource.resource_id,
                addrs,
                done,
            };
            let sent = self.install.send(install).await.is_ok();
            let done = tokio::time::timeout(Duration::from_secs(2), installed).await;
            if !sent || !matches!(done, Ok(Ok(()))) {
                warn!(name, "addresses not installed in time; SERVFAIL");
                return reply_code(&request, ResponseCode::ServFail);
            }
        }
        Some(raw)
    }
}

/// The name asked, when the query asks exactly one question.
fn single_question(request: &Message) -> Option<String> {
    match request.queries.as_slice() {
        [q] => Some(q.name().to_ascii()),
        _ => None,
    }
}

fn reply_code(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.add_queries(request.queries.iter().cloned());
    reply.to_vec().ok()
}

/// Sends the query to each upstream in turn; the first answer wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == *upstream => return Some(buf[..n].to_vec()),
            _ => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(domains: &[(&str, u32)]) -> View {
        View {
            domains: domains
                .iter()
                .map(|(a, id)| DomainResource {
                    resource_id: *id,
                    name: format!("r{id}"),
                    address: crate::config::parse_resource_address(a).unwrap(),
                    groups: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn wildcards_match_subdomains_at_any_depth_never_the_apex() {
        let v = view(&[("*.berlin.internal", 1), ("grafana.berlin.internal", 2)]);
        assert_eq!(
            v.resource_for("grafana.berlin.internal.")
                .unwrap()
                .resource_id,
            2,
            "exact first"
        );
        assert_eq!(
            v.resource_for("wiki.berlin.internal").unwrap().resource_id,
            1
        );
        assert_eq!(
            v.resource_for("a.b.berlin.internal").unwrap().resource_id,
            1
        );
        assert_eq!(
            v.resource_for("WIKI.Berlin.Internal").unwrap().resource_id,
            1
        );
        assert!(v.resource_for("berlin.internal").is_none());
        assert!(v.resource_for("evilberlin.internal").is_none());
        assert!(v.resource_for("example.com").is_none());
    }

    #[test]
    fn queries_with_several_questions_are_refused() {
        use hickory_proto::op::Query;
        use hickory_proto::rr::{Name, RecordType};
        let q = |n: &str| Query::query(Name::from_ascii(n).unwrap(), RecordType::A);
        let mut one = Message::query();
        one.add_query(q("grafana.berlin.internal."));
        assert_eq!(
            single_question(&one).as_deref(),
            Some("grafana.berlin.internal.")
        );
        let mut two = one.clone();
        two.add_query(q("internal.example.org."));
        assert_eq!(single_question(&two), None);
        assert_eq!(single_question(&Message::query()), None);
    }
}
