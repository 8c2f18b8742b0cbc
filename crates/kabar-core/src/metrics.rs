//! Process-wide counters for observability, reachable as `server.metrics`: plain atomics and
//! fixed-bucket histograms, cheap enough for the stanza path. The binary renders them in the
//! Prometheus text format at `/metrics` (`kabar/src/http/metrics.rs`); nothing here does I/O.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stanza::Kind;

/// A monotonically growing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A latency histogram with the fixed [`LATENCY_BUCKETS`]. Buckets are stored non-cumulatively;
/// [`Histogram::snapshot`] returns them cumulative, as Prometheus wants.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy of a histogram: cumulative bucket counts (last one is `+Inf`), sum in
/// seconds, count.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observes the time until the returned guard is dropped.
    pub fn start_timer(&self) -> Timer<'_> {
        Timer { histogram: self, started: Instant::now() }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            // The bucket total, so `_count` always equals the `+Inf` bucket.
            count: total,
        }
    }
}

pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

/// How a client connection reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
    Bosh,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::WebSocket, Transport::Bosh];
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
    /// The transport names the HTTP bridges use ("websocket", "bosh"); anything else is TCP.
    pub fn from_label(label: &str) -> Transport {
        match label {
            "websocket" => Transport::WebSocket,
            "bosh" => Transport::Bosh,
            _ => Transport::Tcp,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Store calls whose latency is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Credentials lookup (login, account existence checks during routing).
    Credentials,
    /// Appending a message to a user's offline queue.
    OfflinePush,
    /// Reading a user's offline queue (initial presence).
    OfflineFetch,
}

impl StoreOp {
    pub const ALL: [StoreOp; 3] = [StoreOp::Credentials, StoreOp::OfflinePush, StoreOp::OfflineFetch];
    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Credentials => "credentials",
            StoreOp::OfflinePush => "offline_push",
            StoreOp::OfflineFetch => "offline_fetch",
        }
    }
}

pub const STANZA_KINDS: [Kind; 3] = [Kind::Message, Kind::Presence, Kind::Iq];

pub fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => "message",
        Kind::Presence => "presence",
        Kind::Iq => "iq",
    }
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Message => 0,
        Kind::Presence => 1,
        Kind::Iq => 2,
    }
}

/// Every counter the server keeps. Gauges that can be read from elsewhere (bound sessions, queue
/// depth) are computed when scraped, not kept here.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: [Gauge; 3],
    connections_total: [Counter; 3],
    pub auth_success: Counter,
    pub auth_failure: Counter,
    stanzas_in: [Counter; 3],
    stanzas_out: [Counter; 3],
    /// Time spent in `Server::from_client` per client stanza.
    pub routing: Histogram,
    store: [Histogram; 3],
    /// Accounts created by XEP-0077 in-band registration.
    pub registrations: Counter,
    /// Admin API requests refused for a missing or wrong token.
    pub admin_auth_failures: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a new connection; it stays open (in the gauge) until the guard is dropped.
    pub fn connection(&self, transport: Transport) -> ConnectionGuard<'_> {
        self.connections_open[transport.index()].inc();
        self.connections_total[transport.index()].inc();
        ConnectionGuard { metrics: self, transport }
    }

    pub fn connections_open(&self, transport: Transport) -> i64 {
        self.connections_open[transport.index()].get()
    }

    pub fn connections_total(&self, transport: Transport) -> u64 {
        self.connections_total[transport.index()].get()
    }

    /// A stanza received from a client session.
    pub fn stanza_in(&self, kind: Kind) {
        self.stanzas_in[kind_index(kind)].inc();
    }

    /// A stanza written to a client session.
    pub fn stanza_out(&self, kind: Kind) {
        self.stanzas_out[kind_index(kind)].inc();
    }

    pub fn stanzas_in(&self, kind: Kind) -> u64 {
        self.stanzas_in[kind_index(kind)].get()
    }

    pub fn stanzas_out(&self, kind: Kind) -> u64 {
        self.stanzas_out[kind_index(kind)].get()
    }

    pub fn store(&self, op: StoreOp) -> &Histogram {
        &self.store[op as usize]
    }
}

pub struct ConnectionGuard<'a> {
    metrics: &'a Metrics,
    transport: Transport,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connections_open[self.transport.index()].dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // first bucket
        h.observe(Duration::from_millis(3)); // 0.005
        h.observe(Duration::from_secs(5)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[5], 2);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(*s.cumulative.last().unwrap_or(&0), 3);
        assert_eq!(s.count, 3);
        assert!((s.sum_seconds - 5.00305).abs() < 1e-6);
    }

    #[test]
    fn connection_guard_tracks_open_and_total() {
        let m = Metrics::new();
        {
            let _a = m.connection(Transport::Bosh);
            let _b = m.connection(Transport::Bosh);
            assert_eq!(m.connections_open(Transport::Bosh), 2);
        }
        assert_eq!(m.connections_open(Transport::Bosh), 0);
        assert_eq!(m.connections_total(Transport::Bosh), 2);
        assert_eq!(m.connections_total(Transport::Tcp), 0);
    }
}
