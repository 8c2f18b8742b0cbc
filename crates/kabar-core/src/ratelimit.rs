//! Token buckets: one per session for stanza shaping, and keyed ones for per-IP / per-account
//! limits (failed logins, registrations).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_sec: f64) -> Self {
        TokenBucket { capacity: capacity.max(1) as f64, per_sec, tokens: capacity.max(1) as f64, last: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes one token; when none is left, returns how long until one is.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.per_sec > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        } else {
            Err(Duration::from_secs(3600))
        }
    }

    fn has_token(&mut self) -> bool {
        self.refill(Instant::now());
        self.tokens >= 1.0
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// Many buckets by key ("ip:1.2.3.4", "user:alice@localhost"). Memory is bounded: idle, full
/// buckets are dropped when the map grows.
pub struct KeyedLimiter {
    capacity: u32,
    per_sec: f64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

const PRUNE_AT: usize = 50_000;

impl KeyedLimiter {
    /// `capacity` events per `period`, refilled smoothly.
    pub fn new(capacity: u32, period: Duration) -> Self {
        let per_sec = capacity as f64 / period.as_secs_f64().max(0.001);
        KeyedLimiter { capacity, per_sec, buckets: Mutex::new(HashMap::new()) }
    }

    fn with_bucket<R>(&self, key: &str, f: impl FnOnce(&mut TokenBucket) -> R) -> R {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            let now = Instant::now();
            map.retain(|_, b| !b.is_full(now));
        }
        let bucket = map.entry(key.to_string()).or_insert_with(|| TokenBucket::new(self.capacity, self.per_sec));
        f(bucket)
    }

    /// Counts one event; false if the key is over its limit.
    pub fn allow(&self, key: &str) -> bool {
        self.with_bucket(key, |b| b.take().is_ok())
    }

    /// Whether an event would be allowed now, without counting one.
    pub fn would_allow(&self, key: &str) -> bool {
        self.with_bucket(key, |b| b.has_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_limiter_refuses_past_capacity_per_key() {
        let l = KeyedLimiter::new(3, Duration::from_secs(3600));
        assert!(l.allow("a") && l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(!l.would_allow("a"));
        assert!(l.allow("b"));
    }

    #[test]
    fn bucket_reports_wait_time_when_empty() {
        let mut b = TokenBucket::new(1, 10.0);
        assert!(b.take().is_ok());
        let wait = b.take().expect_err("empty");
        assert!(wait <= Duration::from_millis(101));
    }
}
