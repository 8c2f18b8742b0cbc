//! Report counting rules: which crowd problem reports are *counted*.
//!
//! Every well-formed report is acknowledged to the reporter; only some are counted toward the
//! service's minute buckets. [`ReportGate::submit`] decides, in this order:
//!
//! 1. **Validation** (rejected with a [`ReportError`], nothing recorded): non-empty service and
//!    reporter key, all keys at most [`GateConfig::max_key_bytes`], region checked by [`Region::new`].
//! 2. **Dedupe**: one counted report per (reporter key, service) per
//!    [`GateConfig::dedupe_window_secs`] (30 minutes), measured from the last *counted* report. A
//!    repeat inside the window is [`NotCounted::Duplicate`] and spends no rate-limit tokens.
//! 3. **Rate limits**: a token bucket per source IP (IPv6 grouped by
//!    [`GateConfig::ipv6_prefix_len`], default /64) and, when the report comes from a logged-in
//!    account, a token bucket per account. A report is counted only when both buckets hold a token;
//!    then one token is taken from each. Otherwise it is [`NotCounted::IpLimited`] /
//!    [`NotCounted::AccountLimited`] and nothing is spent (so it may count later, once refilled).
//! 4. **Saturation**: if a limiter table is full of live (not yet refilled) buckets, a report from a
//!    *new* IP/account is [`NotCounted::Saturated`] (fail closed: memory stays bounded even under a
//!    botnet; a real outage large enough to fill the table is detected long before).
//!
//! Memory is bounded: dedupe entries expire after the window and are capped at
//! [`GateConfig::max_dedupe_entries`] (at the cap the *oldest* entry is forgotten early — fail
//! open, that reporter could count once more); limiter tables are capped and swept of buckets that
//! have refilled to full (a full bucket is equivalent to no bucket). Keys are stored as 64-bit
//! SipHash fingerprints with a per-gate random key, never as strings.
//!
//! The gate is sans-IO: time comes in with the report as unix seconds.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What the reporter says is wrong. Shown as a breakdown on the status page; counting ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    CantSend,
    CantLogIn,
    AppWontLoad,
    MessagesDelayed,
    Other,
}

impl ProblemType {
    pub const ALL: [ProblemType; 5] = [
        ProblemType::CantSend,
        ProblemType::CantLogIn,
        ProblemType::AppWontLoad,
        ProblemType::MessagesDelayed,
        ProblemType::Other,
    ];

    /// The wire/config name (`cant_send`, `cant_log_in`, `app_wont_load`, `messages_delayed`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::CantSend => "cant_send",
            ProblemType::CantLogIn => "cant_log_in",
            ProblemType::AppWontLoad => "app_wont_load",
            ProblemType::MessagesDelayed => "messages_delayed",
            ProblemType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Result<ProblemType, ReportError> {
        ProblemType::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(ReportError::UnknownProblemType)
    }

    /// Dense index 0..5, in [`ProblemType::ALL`] order.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Longest accepted region, in bytes.
pub const MAX_REGION_BYTES: usize = 64;

/// A free-form region label ("Jakarta", "ID-JB", …): trimmed, 1..=64 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Region(String);

impl Region {
    pub fn new(s: &str) -> Result<Region, ReportError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ReportError::EmptyRegion);
        }
        if t.len() > MAX_REGION_BYTES {
            return Err(ReportError::RegionTooLong);
        }
        if t.chars().any(char::is_control) {
            return Err(ReportError::RegionInvalid);
        }
        Ok(Region(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One problem report as the HTTP layer hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Monitored service name (the monitor rejects unknown services).
    pub service: String,
    /// Person/device key chosen by the caller: the account's bare JID when logged in, otherwise a
    /// device cookie; never the raw IP (many Indonesian mobile users share CGNAT addresses).
    pub reporter: String,
    /// Source address; IPv6 is grouped by prefix for the IP limit.
    pub ip: IpAddr,
    /// Logged-in account, if any (gets its own, stricter, limit).
    pub account: Option<String>,
    pub problem: ProblemType,
    pub region: Option<Region>,
    /// Unix seconds.
    pub at_secs: u64,
}

/// Why a well-formed report was acknowledged but not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotCounted {
    /// Same reporter and service already counted within the dedupe window.
    Duplicate,
    /// The source IP (or IPv6 prefix) has no token left.
    IpLimited,
    /// The account has no token left.
    AccountLimited,
    /// A limiter table is full of live buckets; new sources are not counted until it drains.
    Saturated,
}

/// The gate's answer. Both variants mean "thank you" to the reporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Counted,
    Acknowledged(NotCounted),
}

impl Verdict {
    pub fn is_counted(self) -> bool {
        self == Verdict::Counted
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("service name is empty")]
    EmptyService,
    #[error("reporter key is empty")]
    EmptyReporter,
    #[error("a key (service, reporter or account) is too long")]
    KeyTooLong,
    #[error("unknown problem type")]
    UnknownProblemType,
    #[error("region is empty")]
    EmptyRegion,
    #[error("region is longer than {MAX_REGION_BYTES} bytes")]
    RegionTooLong,
    #[error("region contains control characters")]
    RegionInvalid,
    #[error("unknown service")]
    UnknownService,
}

/// A token bucket: holds at most `burst` tokens, refills `per_hour` tokens per hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketConfig {
    pub burst: f64,
    pub per_hour: f64,
}

/// Counting rules. Defaults in brackets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GateConfig {
    /// One counted report per (reporter, service) per this many seconds [1800 = 30 min].
    pub dedupe_window_secs: u64,
    /// Cap on remembered (reporter, service) pairs [200 000; ~32 bytes each].
    pub max_dedupe_entries: usize,
    /// Per source IP / IPv6 prefix [burst 30, 60 per hour]: generous, because CGNAT puts many
    /// people behind one address.
    pub ip_limit: BucketConfig,
    /// Per logged-in account, across services [burst 5, 10 per hour].
    pub account_limit: BucketConfig,
    /// Cap on IP buckets [100 000].
    pub max_ip_buckets: usize,
    /// Cap on account buckets [100 000].
    pub max_account_buckets: usize,
    /// IPv6 addresses sharing this prefix share a bucket [64].
    pub ipv6_prefix_len: u8,
    /// Longest service / reporter / account key, in bytes [256].
    pub max_key_bytes: usize,
    /// A full limiter table is swept of refilled buckets at most this often [60 s].
    pub sweep_interval_secs: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            dedupe_window_secs: 30 * 60,
            max_dedupe_entries: 200_000,
            ip_limit: BucketConfig { burst: 30.0, per_hour: 60.0 },
            account_limit: BucketConfig { burst: 5.0, per_hour: 10.0 },
            max_ip_buckets: 100_000,
            max_account_buckets: 100_000,
            ipv6_prefix_len: 64,
            max_key_bytes: 256,
            sweep_interval_secs: 60,
        }
    }
}

/// Running totals of verdicts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStats {
    pub counted: u64,
    pub duplicate: u64,
    pub ip_limited: u64,
    pub account_limited: u64,
    pub saturated: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_secs: u64,
}

impl Bucket {
    fn full(cfg: &BucketConfig, now: u64) -> Bucket {
        Bucket { tokens: cfg.burst, last_secs: now }
    }

    fn refill(&mut self, cfg: &BucketConfig, now: u64) {
        if now > self.last_secs {
            let add = (now - self.last_secs) as f64 * cfg.per_hour / 3600.0;
            self.tokens = (self.tokens + add).min(cfg.burst);
            self.last_secs = now;
        }
    }

    fn is_refilled(&self, cfg: &BucketConfig, now: u64) -> bool {
        let mut b = *self;
        b.refill(cfg, now);
        b.tokens >= cfg.burst
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u128),
}

/// One limiter table (IP or account).
#[derive(Debug)]
struct Limiter<K> {
    cfg: BucketConfig,
    max: usize,
    buckets: HashMap<K, Bucket>,
    last_sweep: Option<u64>,
}

enum Peek {
    HasToken,
    Empty,
    Saturated,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    fn new(cfg: BucketConfig, max: usize) -> Self {
        Limiter { cfg, max, buckets: HashMap::new(), last_sweep: None }
    }

    fn peek(&mut self, key: K, now: u64, sweep_interval: u64) -> Peek {
        if let Some(b) = self.buckets.get_mut(&key) {
            b.refill(&self.cfg, now);
            return if b.tokens >= 1.0 { Peek::HasToken } else { Peek::Empty };
        }
        if self.buckets.len() >= self.max {
            let due = self.last_sweep.is_none_or(|t| now >= t.saturating_add(sweep_interval));
            if due {
                let cfg = self.cfg;
                self.buckets.retain(|_, b| !b.is_refilled(&cfg, now));
                self.last_sweep = Some(now);
            }
            if self.buckets.len() >= self.max {
                return Peek::Saturated;
            }
        }
        if self.cfg.burst >= 1.0 {
            Peek::HasToken
        } else {
            Peek::Empty
        }
    }

    /// Take one token; only after `peek` said `HasToken`.
    fn take(&mut self, key: K, now: u64) {
        let cfg = self.cfg;
        let b = self.buckets.entry(key).or_insert_with(|| Bucket::full(&cfg, now));
        b.refill(&cfg, now);
        b.tokens -= 1.0;
    }
}

/// Decides whether a report is counted. See the module documentation for the rules.
#[derive(Debug)]
pub struct ReportGate {
    cfg: GateConfig,
    hasher: RandomState,
    /// fingerprint(service, reporter) → unix seconds of the last counted report.
    dedupe: HashMap<u64, u64>,
    /// Insertion order of `dedupe`, oldest first (lazy: stale entries are skipped).
    order: VecDeque<(u64, u64)>,
    ips: Limiter<IpKey>,
    accounts: Limiter<u64>,
    stats: GateStats,
}

impl ReportGate {
    pub fn new(cfg: GateConfig) -> ReportGate {
        ReportGate {
            hasher: RandomState::new(),
            dedupe: HashMap::new(),
            order: VecDeque::new(),
            ips: Limiter::new(cfg.ip_limit, cfg.max_ip_buckets),
            accounts: Limiter::new(cfg.account_limit, cfg.max_account_buckets),
            stats: GateStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    pub fn stats(&self) -> GateStats {
        self.stats
    }

    /// Remembered (reporter, service) pairs (bounded by `max_dedupe_entries`).
    pub fn dedupe_entries(&self) -> usize {
        self.dedupe.len()
    }

    pub fn ip_buckets(&self) -> usize {
        self.ips.buckets.len()
    }

    pub fn account_buckets(&self) -> usize {
        self.accounts.buckets.len()
    }

    /// Validate a report without recording anything.
    pub fn validate(&self, r: &Report) -> Result<(), ReportError> {
        if r.service.is_empty() {
            return Err(ReportError::EmptyService);
        }
        if r.reporter.is_empty() {
            return Err(ReportError::EmptyReporter);
        }
        let max = self.cfg.max_key_bytes;
        if r.service.len() > max
            || r.reporter.len() > max
            || r.account.as_ref().is_some_and(|a| a.len() > max)
        {
            return Err(ReportError::KeyTooLong);
        }
        if let Some(region) = &r.region {
            // Regions built by `Region::new` are valid; re-check in case of deserialised input.
            Region::new(region.as_str())?;
        }
        Ok(())
    }

    /// Decide whether `r` is counted, and record it if so.
    pub fn submit(&mut self, r: &Report) -> Result<Verdict, ReportError> {
        self.validate(r)?;
        let now = r.at_secs;
        self.expire(now);

        let fp = self.hasher.hash_one((0u8, r.service.as_str(), r.reporter.as_str()));
        if let Some(&last) = self.dedupe.get(&fp) {
            // `now < last` (clock went back) also counts as inside the window.
            if now < last.saturating_add(self.cfg.dedupe_window_secs) {
                self.stats.duplicate += 1;
                return Ok(Verdict::Acknowledged(NotCounted::Duplicate));
            }
        }

        let ip = self.ip_key(r.ip);
        let sweep = self.cfg.sweep_interval_secs;
        match self.ips.peek(ip, now, sweep) {
            Peek::HasToken => {}
            Peek::Empty => return Ok(self.not_counted(NotCounted::IpLimited)),
            Peek::Saturated => return Ok(self.not_counted(NotCounted::Saturated)),
        }
        let account = r.account.as_deref().map(|a| self.hasher.hash_one((1u8, a)));
        if let Some(acc) = account {
            match self.accounts.peek(acc, now, sweep) {
                Peek::HasToken => {}
                Peek::Empty => return Ok(self.not_counted(NotCounted::AccountLimited)),
                Peek::Saturated => return Ok(self.not_counted(NotCounted::Saturated)),
            }
        }

        self.ips.take(ip, now);
        if let Some(acc) = account {
            self.accounts.take(acc, now);
        }
        while self.dedupe.len() >= self.cfg.max_dedupe_entries.max(1) && !self.dedupe.contains_key(&fp) {
            self.evict_oldest();
        }
        self.dedupe.insert(fp, now);
        self.order.push_back((now, fp));
        if self.order.len() > 2 * self.cfg.max_dedupe_entries.max(16) {
            let dedupe = &self.dedupe;
            self.order.retain(|(t, k)| dedupe.get(k) == Some(t));
        }
        self.stats.counted += 1;
        Ok(Verdict::Counted)
    }

    fn not_counted(&mut self, why: NotCounted) -> Verdict {
        match why {
            NotCounted::Duplicate => self.stats.duplicate += 1,
            NotCounted::IpLimited => self.stats.ip_limited += 1,
            NotCounted::AccountLimited => self.stats.account_limited += 1,
            NotCounted::Saturated => self.stats.saturated += 1,
        }
        Verdict::Acknowledged(why)
    }

    /// Drop dedupe entries whose window has passed.
    fn expire(&mut self, now: u64) {
        let window = self.cfg.dedupe_window_secs;
        while let Some(&(t, fp)) = self.order.front() {
            if t.saturating_add(window) > now {
                break;
            }
            self.order.pop_front();
            if self.dedupe.get(&fp) == Some(&t) {
                self.dedupe.remove(&fp);
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((t, fp)) = self.order.pop_front() {
            if self.dedupe.get(&fp) == Some(&t) {
                self.dedupe.remove(&fp);
                return;
            }
        }
        // `order` lost track (cannot happen); keep the bound anyway.
        self.dedupe.clear();
    }

    fn ip_key(&self, ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => {
                    let bits = u128::from(v6);
                    let p = u32::from(self.cfg.ipv6_prefix_len.min(128));
                    let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                    IpKey::V6(bits & mask)
                }
            },
        }
    }
}
