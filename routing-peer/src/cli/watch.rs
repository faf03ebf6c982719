//! The `--watch` loop shared by `flows` and `stats`: read, compute rates
//! from the (packets, bytes) totals of each row since the last read, redraw
//! every second until interrupted.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;

/// (packets/s, bytes/s) by row key.
pub type Rates = HashMap<String, (f64, f64)>;

/// Totals by row key from one read to the next.
#[derive(Default)]
pub struct RateMeter {
    last: HashMap<String, (u64, u64)>,
}

impl RateMeter {
    /// Rates over `secs` for the keys seen last time too; counters that went
    /// backwards (a flow replaced under the same key) count as new.
    pub fn update(&mut self, totals: Vec<(String, (u64, u64))>, secs: f64) -> Rates {
        let secs = secs.max(1e-3);
        let mut rates = Rates::new();
        for (key, now) in totals {
            if let Some((p, b)) = self.last.insert(key.clone(), now) {
                let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                rates.insert(key, (per_sec(now.0, p), per_sec(now.1, b)));
            }
        }
        rates
    }
}

/// Redraws `read` every second with `draw`, until the process is stopped.
pub fn watch<T>(
    mut read: impl FnMut() -> Result<T>,
    totals: impl Fn(&T) -> Vec<(String, (u64, u64))>,
    draw: impl Fn(&T, &Rates),
) -> Result<()> {
    let mut meter = RateMeter::default();
    let mut last_at = Instant::now();
    loop {
        let now = read()?;
        let rates = meter.update(totals(&now), last_at.elapsed().as_secs_f64());
        last_at = Instant::now();
        print!("\x1b[2J\x1b[H");
        draw(&now, &rates);
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_difference_over_the_interval_for_rows_seen_before() {
        let mut m = RateMeter::default();
        assert!(m.update(vec![("a".into(), (10, 1000))], 1.0).is_empty());
        let r = m.update(vec![("a".into(), (30, 3000)), ("b".into(), (5, 5))], 2.0);
        assert_eq!(r.get("a"), Some(&(10.0, 1000.0)));
        assert_eq!(r.get("b"), None);
        let r = m.update(vec![("a".into(), (1, 1))], 1.0);
        assert_eq!(r.get("a"), Some(&(0.0, 0.0)));
    }
}
