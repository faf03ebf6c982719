//! The HTTP side: GETs to NetBird's management API with the service user's
//! token, a deadline on every request, gzip, and every fault classified
//! (the `reason` label of `routing_peer_source_sync_errors_total`). The
//! token is read afresh for each sync (rotation needs no restart) and never
//! leaves the `Authorization` header, which is marked sensitive.

use std::{path::PathBuf, time::Duration};

use reqwest::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::{
    api::{Documents, Network, NetworkResource, NetworkRouter, Peer, Policy},
    map::{self, MapError},
};
use crate::config::Netbird;

/// Why a sync did not apply; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("token file {0}")]
    Token(String),
    #[error("{url}: unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: no answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: HTTP {status}: the token was refused (revoked or expired?); give a valid service-user token")]
    Unauthorized { url: String, status: u16 },
    #[error("{url}: HTTP 429: rate limited; next try in {retry_after_secs} s")]
    RateLimited { url: String, retry_after_secs: u64 },
    #[error("{url}: HTTP {status}: server error")]
    Server { url: String, status: u16 },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not JSON: {detail}")]
    Malformed { url: String, detail: String },
    #[error("{url}: breaks NetBird's schema: {detail}")]
    Schema { url: String, detail: String },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("the imported configuration is invalid: {0}")]
    Invalid(String),
}

impl SyncError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Token(_) => "token_file",
            SyncError::Unreachable { .. } => "unreachable",
            SyncError::Timeout { .. } => "timeout",
            SyncError::Unauthorized { status: 403, .. } => "forbidden",
            SyncError::Unauthorized { .. } => "unauthorized",
            SyncError::RateLimited { .. } => "rate_limited",
            SyncError::Server { .. } => "server_error",
            SyncError::Status { .. } => "http_status",
            SyncError::Malformed { .. } => "malformed",
            SyncError::Schema { .. } => "schema",
            SyncError::Map(MapError::Inconsistent(_)) => "inconsistent",
            SyncError::Map(MapError::SelfNotFound(_)) => "peer_not_found",
            SyncError::Invalid(_) => "invalid",
        }
    }

    /// How long the server asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::RateLimited {
                retry_after_secs, ..
            } => Some(Duration::from_secs(*retry_after_secs)),
            _ => None,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token_file: PathBuf,
    timeout_secs: u64,
    /// Requests made by this client, for the rate budget.
    pub requests: u64,
}

impl Client {
    pub fn new(source: &Netbird) -> Result<Self, SyncError> {
        let timeout = Duration::from_secs(source.timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .gzip(true)
            .user_agent(concat!("routing-peer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SyncError::Unreachable {
                url: source.management_url.clone(),
                detail: format!("building the HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            base: source.management_url.trim_end_matches('/').to_string(),
            token_file: source.token_file.clone(),
            timeout_secs: source.timeout_secs,
            requests: 0,
        })
    }

    fn token(&self) -> Result<header::HeaderValue, SyncError> {
        let path = self.token_file.display();
        if let Some(mode) = crate::config::others_can_read(&self.token_file) {
            return Err(SyncError::Token(format!(
                "{path} is readable by group or others (mode {mode:o}); chmod 600 it"
            )));
        }
        let raw = std::fs::read_to_string(&self.token_file)
            .map_err(|e| SyncError::Token(format!("{path}: cannot read: {e}")))?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(SyncError::Token(format!("{path} is empty")));
        }
        let mut value = header::HeaderValue::from_str(&format!("Token {token}")).map_err(|_| {
            SyncError::Token(format!("{path}: not a valid token (control characters)"))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// GET `/api/{path}`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, SyncError> {
        let url = format!("{}/api/{path}", self.base);
        let token = self.token()?;
        self.requests += 1;
        let answer = self
            .http
            .get(&url)
            .header(header::AUTHORIZATION, token)
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => return Err(transport(url, e, self.timeout_secs)),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(refused(url, status, response.headers()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transport(url.clone(), e, self.timeout_secs))?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| SyncError::Malformed {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        serde_json::from_value(value).map_err(|e| SyncError::Schema {
            url,
            detail: e.to_string(),
        })
    }

    /// One sync's documents: the account-wide lists, then the resources of
    /// each network this peer serves (5 + served networks requests).
    pub async fn documents(
        &mut self,
        selector: Option<&str>,
        overlay: &[std::net::IpAddr],
    ) -> Result<Documents, SyncError> {
        let mut docs = Documents {
            peers: self.get::<Vec<Peer>>("peers").await?,
            groups: self.get("groups").await?,
            policies: self.get::<Vec<Policy>>("policies").await?,
            networks: self.get::<Vec<Network>>("networks").await?,
            routers: self.get::<Vec<NetworkRouter>>("networks/routers").await?,
            resources: Default::default(),
        };
        let me = map::find_self(&docs.peers, selector, overlay)?;
        for s in map::served(&docs, &me)? {
            let list: Vec<NetworkResource> = self
                .get(&format!("networks/{}/resources", s.network_id))
                .await?;
            docs.resources.insert(s.network_id, list);
        }
        Ok(docs)
    }
}

fn transport(url: String, e: reqwest::Error, secs: u64) -> SyncError {
    if e.is_timeout() {
        SyncError::Timeout { url, secs }
    } else {
        // The chain says why (refused, DNS, TLS); the URL holds no secret.
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        SyncError::Unreachable { url, detail }
    }
}

fn refused(url: String, status: StatusCode, headers: &header::HeaderMap) -> SyncError {
    let code = status.as_u16();
    match code {
        401 | 403 => SyncError::Unauthorized { url, status: code },
        429 => SyncError::RateLimited {
            url,
            retry_after_secs: retry_after(headers).unwrap_or(60),
        },
        500..=599 => SyncError::Server { url, status: code },
        _ => SyncError::Status { url, status: code },
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<u64> {
    let raw = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(7));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let secs = retry_after(&h).unwrap();
        assert!((115..=120).contains(&secs), "{secs}");
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
