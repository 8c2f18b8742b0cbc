//! Admission control: when the node nears its limits it refuses *new* work first, cheapest to
//! refuse first, so that the people already chatting keep going (docs/OVERLOAD.md).
//!
//! Priorities: established sessions are never refused here; new logins (new streams) are refused
//! when any signal reaches its limit; registrations are refused earlier, from
//! `registration_headroom_pct` of a limit, because each costs two PBKDF2 derivations.
//!
//! Signals, sampled every `check_interval_ms` by [`run_sampler`] (and connections counted live):
//! open client connections, resident memory, open file descriptors (against the process's soft
//! limit), event-loop lag (how late a timer fires: CPU saturation), store latency (how long a
//! barrier through the store's write queue takes), and the queue of registrations waiting for a
//! key-derivation worker. Each has a configured limit; 0 turns one off.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{info, warn};

use crate::metrics::{Counter, Transport};
use crate::server::Server;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Master switch; off: nothing is ever refused for load.
    pub enabled: bool,
    /// Open client connections (TCP + WebSocket + BOSH) at which new ones are refused. 0: 90 % of
    /// the process's open-file soft limit.
    pub max_connections: u64,
    /// Resident memory (MiB) at which new work is refused. 0: no limit.
    pub max_memory_mb: u64,
    /// Event-loop lag (ms, smoothed) at which new work is refused: the CPU is saturated.
    pub max_loop_lag_ms: u64,
    /// Store latency (ms, smoothed) at which new work is refused: the disk is behind.
    pub max_store_latency_ms: u64,
    /// Registrations waiting for a key-derivation worker at which new ones are refused.
    pub max_registration_queue: u64,
    /// Registrations are refused from this percentage of any limit on (logins at 100 %).
    pub registration_headroom_pct: u64,
    /// The retry hint given with every refusal (stream error text, stanza error text, HTTP
    /// `Retry-After`), in seconds.
    pub retry_after_secs: u64,
    /// When set (`host` or `host:port` of another node), refused streams get `<see-other-host/>`
    /// pointing there instead of `<resource-constraint/>`.
    pub see_other_host: Option<String>,
    /// How often the signals are sampled, in milliseconds.
    pub check_interval_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            max_connections: 0,
            max_memory_mb: 0,
            max_loop_lag_ms: 1000,
            max_store_latency_ms: 2000,
            max_registration_queue: 256,
            registration_headroom_pct: 80,
            retry_after_secs: 30,
            see_other_host: None,
            check_interval_ms: 250,
        }
    }
}

/// New work, in the order it is shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Registration,
    Login,
}

impl Work {
    pub fn label(self) -> &'static str {
        match self {
            Work::Registration => "registration",
            Work::Login => "login",
        }
    }
}

/// Why new work was refused, and what to tell the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The signal over its limit ("connections", "memory", "loop_lag", …).
    pub signal: &'static str,
    pub retry_after_secs: u64,
    /// Another node to try, for `<see-other-host/>`.
    pub other_host: Option<String>,
}

impl Refusal {
    /// A human-readable text for error `<text/>` elements.
    pub fn text(&self) -> String {
        format!("The server is busy ({}); please retry in {} seconds", self.signal, self.retry_after_secs)
    }
}

/// The sampled signals, in the units of their limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    pub memory_mb: u64,
    pub open_fds: u64,
    pub fd_limit: u64,
    pub loop_lag_ms: u64,
    pub store_latency_ms: u64,
    pub registration_queue: u64,
}

pub struct Admission {
    cfg: AdmissionConfig,
    memory_mb: AtomicU64,
    open_fds: AtomicU64,
    fd_limit: AtomicU64,
    loop_lag_us: AtomicU64,
    store_latency_us: AtomicU64,
    /// 0 open, 1 shedding registrations, 2 shedding logins too (from the last sample).
    level: AtomicU8,
    pub refused_logins: Counter,
    pub refused_registrations: Counter,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Admission {
        let fd_limit = fd_soft_limit().unwrap_or(0);
        Admission {
            cfg,
            memory_mb: AtomicU64::new(0),
            open_fds: AtomicU64::new(0),
            fd_limit: AtomicU64::new(fd_limit),
            loop_lag_us: AtomicU64::new(0),
            store_latency_us: AtomicU64::new(0),
            level: AtomicU8::new(0),
            refused_logins: Counter::default(),
            refused_registrations: Counter::default(),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }

    /// The connection limit in force (configured, or derived from the open-file limit).
    pub fn max_connections(&self) -> u64 {
        if self.cfg.max_connections > 0 {
            return self.cfg.max_connections;
        }
        self.fd_limit.load(Ordering::Relaxed) * 9 / 10
    }

    pub fn signals(&self) -> Signals {
        Signals {
            memory_mb: self.memory_mb.load(Ordering::Relaxed),
            open_fds: self.open_fds.load(Ordering::Relaxed),
            fd_limit: self.fd_limit.load(Ordering::Relaxed),
            loop_lag_ms: self.loop_lag_us.load(Ordering::Relaxed) / 1000,
            store_latency_ms: self.store_latency_us.load(Ordering::Relaxed) / 1000,
            registration_queue: crate::accounts::derivations_waiting() as u64,
        }
    }

    /// 0 open, 1 shedding registrations, 2 shedding logins and registrations.
    pub fn level(&self) -> u8 {
        self.level.load(Ordering::Relaxed)
    }

    /// Each signal as (name, value, limit); limit 0 means not limited.
    fn readings(&self, connections: u64) -> [(&'static str, u64, u64); 6] {
        let s = self.signals();
        let c = &self.cfg;
        [
            ("connections", connections, self.max_connections()),
            ("memory", s.memory_mb, c.max_memory_mb),
            ("file_descriptors", s.open_fds, s.fd_limit * 9 / 10),
            ("loop_lag", s.loop_lag_ms, c.max_loop_lag_ms),
            ("store_latency", s.store_latency_ms, c.max_store_latency_ms),
            ("registration_queue", s.registration_queue, c.max_registration_queue),
        ]
    }

    /// Whether `work` may start now (refusals are counted). `connections` is the number of client
    /// connections open now, including the one asking, for a login.
    pub fn check(&self, work: Work, connections: u64) -> Result<(), Refusal> {
        let Some(refusal) = self.evaluate(work, connections) else { return Ok(()) };
        match work {
            Work::Login => self.refused_logins.inc(),
            Work::Registration => self.refused_registrations.inc(),
        }
        Err(refusal)
    }

    fn evaluate(&self, work: Work, connections: u64) -> Option<Refusal> {
        if !self.cfg.enabled {
            return None;
        }
        let headroom = self.cfg.registration_headroom_pct.clamp(1, 100);
        let (signal, _, _) = self.readings(connections).into_iter().find(|&(signal, value, limit)| {
            match work {
                _ if limit == 0 => false,
                // The registration queue only ever limits registrations.
                Work::Login if signal == "registration_queue" => false,
                // A login's own connection is counted: refuse only beyond the limit.
                Work::Login if signal == "connections" => value > limit,
                Work::Login => value >= limit,
                Work::Registration => value.saturating_mul(100) >= limit.saturating_mul(headroom),
            }
        })?;
        Some(Refusal {
            signal,
            retry_after_secs: self.cfg.retry_after_secs,
            other_host: self.cfg.see_other_host.clone().filter(|_| work == Work::Login),
        })
    }

    fn record(&self, memory_mb: Option<u64>, open_fds: Option<u64>, lag: Duration, store: Option<Duration>) {
        if let Some(m) = memory_mb {
            self.memory_mb.store(m, Ordering::Relaxed);
        }
        if let Some(n) = open_fds {
            self.open_fds.store(n, Ordering::Relaxed);
        }
        smooth(&self.loop_lag_us, lag);
        if let Some(d) = store {
            smooth(&self.store_latency_us, d);
        }
    }
}

/// Exponentially weighted moving average (α = 1/4): one late tick (a GC-like pause elsewhere on the
/// machine) does not shed anything, a sustained problem shows within a few samples (about a second).
fn smooth(avg: &AtomicU64, sample: Duration) {
    let us = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
    let old = avg.load(Ordering::Relaxed);
    avg.store(old.saturating_mul(3).saturating_add(us) / 4, Ordering::Relaxed);
}

impl Server {
    /// Client connections open now, over every transport.
    pub fn client_connections(&self) -> u64 {
        Transport::ALL.iter().map(|t| u64::try_from(self.metrics.connections_open(*t)).unwrap_or(0)).sum()
    }

    /// Admission control for new work from a client connection that is already counted (see
    /// [`Admission::check`]); refusals are logged.
    pub fn admit(&self, work: Work) -> Result<(), Refusal> {
        self.admit_with(work, self.client_connections())
    }

    /// [`Server::admit`] for a connection not counted yet (an HTTP request about to become a
    /// WebSocket or BOSH session).
    pub fn admit_new_connection(&self, work: Work) -> Result<(), Refusal> {
        self.admit_with(work, self.client_connections().saturating_add(1))
    }

    fn admit_with(&self, work: Work, connections: u64) -> Result<(), Refusal> {
        self.admission.check(work, connections).inspect_err(|r| {
            info!(work = work.label(), signal = r.signal, "refused new work: the server is busy");
        })
    }
}

/// Samples the signals until the server is dropped. The binary spawns it once.
pub async fn run_sampler(server: std::sync::Weak<Server>) {
    let interval = {
        let Some(s) = server.upgrade() else { return };
        Duration::from_millis(s.admission.cfg.check_interval_ms.max(10))
    };
    loop {
        let asked = Instant::now();
        tokio::time::sleep(interval).await;
        let lag = asked.elapsed().saturating_sub(interval);
        let Some(server) = server.upgrade() else { return };
        let started = Instant::now();
        let store = match tokio::time::timeout(Duration::from_secs(30), server.store.archive_flush()).await {
            Ok(Ok(())) => Some(started.elapsed()),
            Ok(Err(e)) => {
                warn!(error = %e, "admission: store barrier failed");
                Some(started.elapsed())
            }
            Err(_) => Some(started.elapsed()),
        };
        let a = &server.admission;
        a.record(resident_mb(), open_fds(), lag, store);
        let connections = server.client_connections();
        // Hypothetically: would one more login / registration be refused now?
        let level = if a.evaluate(Work::Login, connections + 1).is_some() {
            2
        } else if a.evaluate(Work::Registration, connections).is_some() {
            1
        } else {
            0
        };
        let before = a.level.swap(level, Ordering::Relaxed);
        if before != level {
            warn!(level, signals = ?a.signals(), connections, "admission level changed (0 open, 1 registrations shed, 2 logins shed)");
        }
        drop(server);
    }
}

/// Resident set size in MiB (Linux `/proc/self/statm`; `None` elsewhere).
fn resident_mb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096 / (1024 * 1024))
}

fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64)
}

/// The soft open-file limit (Linux `/proc/self/limits`).
fn fd_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(cfg: AdmissionConfig) -> Admission {
        Admission::new(cfg)
    }

    #[test]
    fn logins_are_refused_beyond_the_connection_limit_registrations_earlier() {
        let a = admission(AdmissionConfig { max_connections: 10, registration_headroom_pct: 50, ..Default::default() });
        assert!(a.check(Work::Login, 10).is_ok(), "the 10th connection is within the limit");
        let r = a.check(Work::Login, 11).expect_err("the 11th is refused");
        assert_eq!(r.signal, "connections");
        assert!(a.check(Work::Registration, 4).is_ok());
        assert!(a.check(Work::Registration, 5).is_err(), "registrations stop at 50 % of the limit");
        assert_eq!((a.refused_logins.get(), a.refused_registrations.get()), (1, 1));
    }

    #[test]
    fn disabled_admission_refuses_nothing() {
        let a = admission(AdmissionConfig { enabled: false, max_connections: 1, ..Default::default() });
        assert!(a.check(Work::Login, 1000).is_ok());
        assert!(a.check(Work::Registration, 1000).is_ok());
    }

    #[test]
    fn sustained_lag_sheds_logins_a_single_late_tick_does_not() {
        let a = admission(AdmissionConfig { max_loop_lag_ms: 100, max_connections: 1000, ..Default::default() });
        a.record(None, None, Duration::from_millis(300), None);
        assert!(a.check(Work::Login, 1).is_ok(), "one late tick (smoothed to 75 ms) sheds nothing");
        for _ in 0..4 {
            a.record(None, None, Duration::from_millis(300), None);
        }
        assert_eq!(a.check(Work::Login, 1).expect_err("saturated").signal, "loop_lag");
        for _ in 0..20 {
            a.record(None, None, Duration::ZERO, None);
        }
        assert!(a.check(Work::Login, 1).is_ok(), "it recovers as the lag goes away");
    }

    #[test]
    fn see_other_host_is_offered_to_logins_only() {
        let a = admission(AdmissionConfig {
            max_connections: 1,
            see_other_host: Some("node2.example:5222".into()),
            ..Default::default()
        });
        assert_eq!(a.check(Work::Login, 2).expect_err("full").other_host.as_deref(), Some("node2.example:5222"));
        assert_eq!(a.check(Work::Registration, 2).expect_err("full").other_host, None);
    }
}
