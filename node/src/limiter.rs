//! Failures per client address in a sliding window: the console's sign-in
//! limiter and the tills' wrong-PIN limiter.
//!
//! Hand-written rather than taken from `governor`: what is limited is
//! *failures* (a right PIN or a good password costs nothing), counted
//! after the outcome is known, which a token bucket taken before the
//! request does not express. The map is bounded: past windows go first,
//! then the clients whose last failure is oldest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures per client within a window, bounded in clients remembered.
#[derive(Clone)]
pub struct FailureLimiter {
    inner: Arc<Mutex<HashMap<String, VecDeque<Instant>>>>,
    max_failures: usize,
    window: Duration,
    max_clients: usize,
    what: &'static str,
}

impl FailureLimiter {
    /// `max_failures` within `window` per client, at most `max_clients`
    /// clients remembered; `what` names it in the security log.
    pub fn new(
        what: &'static str,
        max_failures: usize,
        window: Duration,
        max_clients: usize,
    ) -> FailureLimiter {
        FailureLimiter {
            inner: Arc::default(),
            max_failures: max_failures.max(1),
            window,
            max_clients: max_clients.max(2),
            what,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a failure from `client`.
    pub fn record_failure(&self, client: &str) {
        let mut g = self.lock();
        if g.len() >= self.max_clients && !g.contains_key(client) {
            let now = Instant::now();
            let window = self.window;
            g.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            if g.len() >= self.max_clients {
                let mut by_age: Vec<(Instant, String)> = g
                    .iter()
                    .filter_map(|(k, q)| q.back().map(|t| (*t, k.clone())))
                    .collect();
                by_age.sort();
                let excess = g.len() + 1 - self.max_clients / 2;
                for (_, k) in by_age.into_iter().take(excess) {
                    g.remove(&k);
                }
                tracing::warn!(target: "caisse::security", limiter = self.what, clients = g.len(), "many clients failing at once: the oldest were forgotten");
            }
        }
        let q = g.entry(client.to_owned()).or_default();
        q.push_back(Instant::now());
        while q.len() > self.max_failures {
            q.pop_front();
        }
        if q.len() == self.max_failures {
            tracing::warn!(target: "caisse::security", limiter = self.what, %client, "limit reached: this address must wait");
        }
    }

    /// How long `client` must wait before trying again, if it must.
    pub fn wait(&self, client: &str) -> Option<Duration> {
        let g = self.lock();
        let q = g.get(client)?;
        if q.len() < self.max_failures {
            return None;
        }
        let first = q.front()?;
        self.window
            .checked_sub(Instant::now().duration_since(*first))
            .filter(|d| !d.is_zero())
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_limit_wait_and_the_map_stays_bounded() {
        let l = FailureLimiter::new("test", 3, Duration::from_secs(60), 100);
        l.record_failure("a");
        l.record_failure("a");
        assert!(l.wait("a").is_none());
        l.record_failure("a");
        assert!(l.wait("a").is_some_and(|d| d <= Duration::from_secs(60)));
        assert!(l.wait("b").is_none());
        for i in 0..10_000 {
            l.record_failure(&format!("10.0.{}.{}", i / 256, i % 256));
        }
        assert!(l.len() <= 100, "{}", l.len());
    }
}
