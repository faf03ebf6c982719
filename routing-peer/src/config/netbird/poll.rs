//! The daemon's poller: a sync every `poll_secs`, each outcome handed to
//! the daemon's loop, which applies a good one as an in-place reload and
//! keeps the running configuration on a bad one. Faults back off; a 429's
//! `Retry-After` is honoured; and the interval stretches so that a sync's
//! requests stay within NetBird Cloud's 120 per minute.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::{sync_once, Client, Import, SyncError};
use crate::config::{Config, Netbird};

/// Requests per minute this poller allows itself (NetBird Cloud: 120).
pub const REQUESTS_PER_MINUTE: u64 = 100;

/// One sync's result.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<(Import, Config), SyncError>,
    /// Requests it made.
    pub requests: u64,
}

/// Polls until the daemon drops its receiver. `local` is the file's
/// configuration; the first sync waits `first`.
pub async fn run(local: Config, source: Netbird, first: Duration, tx: mpsc::Sender<Outcome>) {
    tokio::time::sleep(first).await;
    let mut failures: u32 = 0;
    let mut warned_budget = false;
    loop {
        let (result, requests) = match Client::new(&source) {
            Ok(mut client) => {
                let r = sync_once(&mut client, &local, &source).await;
                (r, client.requests)
            }
            Err(e) => (Err(e), 0),
        };
        failures = if result.is_ok() { 0 } else { failures + 1 };
        let delay = next_delay(&source, result.as_ref().err(), failures, requests);
        if !warned_budget && delay.as_secs() > source.poll_secs && result.is_ok() {
            warned_budget = true;
            warn!(
                requests,
                poll_secs = source.poll_secs,
                every_secs = delay.as_secs(),
                "NetBird sync: {requests} requests per sync exceed {REQUESTS_PER_MINUTE}/min at this poll_secs; syncing less often"
            );
        }
        if tx.send(Outcome { result, requests }).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// When to sync next: `poll_secs`, no sooner than the rate budget allows,
/// doubled per consecutive failure (up to 8×), and never before a 429's
/// `Retry-After`.
pub fn next_delay(
    source: &Netbird,
    error: Option<&SyncError>,
    failures: u32,
    requests: u64,
) -> Duration {
    let budget = (requests * 60).div_ceil(REQUESTS_PER_MINUTE);
    let base = source.poll_secs.max(budget);
    let Some(e) = error else {
        return Duration::from_secs(base);
    };
    let backoff = Duration::from_secs(base << failures.saturating_sub(1).min(3));
    backoff.max(e.retry_after().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(poll_secs: u64) -> Netbird {
        Netbird {
            management_url: "http://127.0.0.1:1".into(),
            token_file: "/dev/null".into(),
            peer: None,
            poll_secs,
            timeout_secs: 1,
        }
    }

    #[test]
    fn the_interval_keeps_within_the_rate_limit() {
        // 50 served networks: 5 account-wide lists and 50 resource lists.
        let requests = 55;
        let every = next_delay(&source(1), None, 0, requests).as_secs();
        assert!(requests * 60 / every <= REQUESTS_PER_MINUTE, "{every}");
        assert_eq!(next_delay(&source(30), None, 0, requests).as_secs(), 33);
        assert_eq!(next_delay(&source(60), None, 0, requests).as_secs(), 60);
    }

    #[test]
    fn faults_back_off_and_honour_retry_after() {
        let down = SyncError::Server {
            url: "u".into(),
            status: 503,
        };
        let s = source(4);
        let secs: Vec<u64> = (1..=6)
            .map(|f| next_delay(&s, Some(&down), f, 5).as_secs())
            .collect();
        assert_eq!(secs, [4, 8, 16, 32, 32, 32]);
        let limited = SyncError::RateLimited {
            url: "u".into(),
            retry_after_secs: 45,
        };
        assert_eq!(next_delay(&s, Some(&limited), 1, 5).as_secs(), 45);
    }
}
