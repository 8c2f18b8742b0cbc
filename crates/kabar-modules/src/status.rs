//! The outage monitor inside the server (docs/MONITOR.md): problem reports from chat, alert
//! subscriptions, and the [`StatusHub`] the binary's HTTP pages and probe task share.
//!
//! * [`StatusHub`] wraps `kabar_monitor::Monitor` (report gate, baseline, detector) with per-minute
//!   records for the charts (counted and received reports, expectation, problem types, regions,
//!   probe results and latency), persistence in the key-value store, alert subscribers, and the
//!   time scale (`[monitor] minute_secs`: a detection "minute" may be shorter than 60 s in tests).
//! * In chat: the bot `status@<domain>` (a reserved username, so no account can take it) accepts
//!   messages — `report <service> <problem> [region]`, `status`, `subscribe`, `unsubscribe`,
//!   `confirm <token>` (a subscription asked for on the status page, see `confirm.rs`), `help` —
//!   and three XEP-0050 commands on the server: `urn:kabar:status:report`,
//!   `urn:kabar:status:subscribe`, `urn:kabar:status:unsubscribe`.
//! * Alerts: every state change of a service goes as a chat message from the bot to each
//!   subscribed account; [`StatusHub::tick`] returns the same alerts for the binary's webhooks.
//!
//! Key-value stores (user `""`): `monitor-state` (service → the serialised `ServiceMonitor`),
//! `monitor-minutes` (`<service>/<hour>` → that hour's minute records, kept
//! `minute_retention_hours`), `monitor-hours` (`<service>/<hour>` → hourly rollup, kept
//! `hour_retention_days`), `monitor-incidents` (id → incident, at most `max_incidents`),
//! `monitor-subscribers` (bare JID → ""). Nothing is stored per report; pending page
//! confirmations are memory only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jid::BareJid;
use kabar_core::monitor_config::MonitorSection;
use kabar_core::stanza::parse_bare;
use kabar_core::time::unix_now;
use kabar_core::{ns, Config, Event, Flow, Jid, Module, Server, StanzaError};
use kabar_monitor::{
    Cause, Event as MonEvent, Incident, Monitor, NotCounted, ProblemType, Region, Report, ReportError, ServiceMonitor,
    ServiceStatus, State, Verdict,
};
use kabar_xml::{elem, Element, ElementExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::adhoc::{self, AdhocCommand, AdhocCommands, CommandReply, CommandRequest};

mod confirm;
pub use confirm::{ConfirmError, RequestError, Requested, SubAction};
use confirm::PendingConfirmations;

pub const STORE_STATE: &str = "monitor-state";
pub const STORE_MINUTES: &str = "monitor-minutes";
pub const STORE_HOURS: &str = "monitor-hours";
pub const STORE_INCIDENTS: &str = "monitor-incidents";
pub const STORE_SUBSCRIBERS: &str = "monitor-subscribers";
/// The bot's username (reserved in `[registration] reserved_usernames`).
pub const BOT_USER: &str = "status";
pub const NODE_REPORT: &str = "urn:kabar:status:report";
pub const NODE_SUBSCRIBE: &str = "urn:kabar:status:subscribe";
pub const NODE_UNSUBSCRIBE: &str = "urn:kabar:status:unsubscribe";
/// Minutes of detail kept in memory per service (the 24-hour chart).
pub const HISTORY_MINUTES: usize = 1440;
/// Latest report comments kept per service (memory only).
const MAX_COMMENTS: usize = 20;

/// A configured service as shown on the page.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub title: String,
    pub regions: Vec<String>,
    pub probes: Vec<String>,
}

/// One probe's results within one minute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeMinute {
    pub ok: u32,
    pub fail: u32,
    pub latency_ms_sum: u64,
    pub latency_ms_max: u64,
}

impl ProbeMinute {
    pub fn latency_ms_avg(&self) -> Option<f64> {
        let n = self.ok + self.fail;
        (n > 0).then(|| self.latency_ms_sum as f64 / f64::from(n))
    }
}

/// One detection minute of one service: what the charts draw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteRecord {
    pub minute: u64,
    /// Reports counted by the gate.
    pub counted: u64,
    /// Every well-formed report, counted or only acknowledged.
    pub received: u64,
    /// The baseline's expectation per minute and relative spread (0 until judged).
    #[serde(default)]
    pub expected: f64,
    #[serde(default)]
    pub spread: f64,
    #[serde(default)]
    pub state: Option<State>,
    pub problems: [u64; 5],
    #[serde(default)]
    pub regions: BTreeMap<String, u64>,
    #[serde(default)]
    pub probes: BTreeMap<String, ProbeMinute>,
}

/// An hour of one service, kept for `hour_retention_days`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourRollup {
    pub hour: u64,
    pub counted: u64,
    pub received: u64,
    pub expected: f64,
    pub worst_state: Option<State>,
    pub probe_ok: u64,
    pub probe_fail: u64,
    pub latency_ms_avg: Option<f64>,
}

/// The last result of a probe, for the page.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeLast {
    pub ok: bool,
    pub at_secs: u64,
    pub latency_ms: u64,
    pub detail: String,
    pub cert_days: Option<i64>,
}

/// A state change, sent to subscribers and webhooks.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub service: String,
    pub title: String,
    pub from: State,
    pub to: State,
    pub cause: Cause,
    /// Unix seconds of the judged minute's start.
    pub at_secs: u64,
    pub ratio: f64,
    pub incident: Option<String>,
    pub text: String,
}

#[derive(Default)]
struct ServiceData {
    /// Finished minutes, oldest first, at most [`HISTORY_MINUTES`].
    history: VecDeque<MinuteRecord>,
    /// Minutes not finished yet.
    current: BTreeMap<u64, MinuteRecord>,
    comments: VecDeque<(u64, String)>,
    probes: BTreeMap<String, ProbeLast>,
}

struct Inner {
    monitor: Monitor,
    data: BTreeMap<String, ServiceData>,
    incidents: BTreeMap<String, Incident>,
    subscribers: BTreeSet<String>,
    /// (Un)subscriptions asked for on the status page, waiting for the account to confirm.
    pending: PendingConfirmations,
    /// Last hour (detection minutes / 60) whose expired keys were swept.
    swept_hour: Option<u64>,
}

/// Everything the page needs about one service.
#[derive(Clone, Debug)]
pub struct ServiceSnapshot {
    pub info: ServiceInfo,
    pub status: ServiceStatus,
    pub history: Vec<MinuteRecord>,
    pub probes: BTreeMap<String, ProbeLast>,
    pub comments: Vec<(u64, String)>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub services: Vec<ServiceSnapshot>,
    /// Newest first.
    pub incidents: Vec<Incident>,
    pub minute_secs: u64,
    pub subscribers: usize,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    minute_secs: u64,
    monitor: ServiceMonitor,
}

/// Why a subscription request from the page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebSubscribeError {
    #[error("not a valid JID")]
    InvalidJid,
    #[error("only accounts of this server can subscribe here")]
    NotLocal,
    #[error(transparent)]
    Limited(#[from] RequestError),
}

/// Why a confirmation did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfirmFailure {
    #[error(transparent)]
    Confirm(#[from] ConfirmError),
    #[error("could not change the subscription ({})", .0.condition)]
    Store(StanzaError),
}

/// `sha256=<hex>` HMAC-SHA256 of a webhook body under the configured secret: the value of the
/// `X-Kabar-Signature` header, so a receiver can tell kabar's deliveries from forged ones.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    Invalid(ReportError),
    Disabled,
}

/// The monitor shared by the status module, the HTTP pages and the probe task.
pub struct StatusHub {
    cfg: MonitorSection,
    domain: String,
    bot: Option<BareJid>,
    public_url: String,
    services: Vec<ServiceInfo>,
    inner: Mutex<Inner>,
}

fn now_secs() -> u64 {
    unix_now()
}

/// The services to watch: the configured ones, or the server itself.
fn services_of(config: &Config) -> Vec<ServiceInfo> {
    let m = &config.monitor;
    if m.service.is_empty() {
        return vec![ServiceInfo {
            name: config.domain.clone(),
            title: config.domain.clone(),
            regions: Vec::new(),
            probes: Vec::new(),
        }];
    }
    m.service
        .iter()
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            title: s.title.clone().unwrap_or_else(|| s.name.clone()),
            regions: s.regions.clone(),
            probes: s.probe.iter().enumerate().map(|(i, p)| probe_name(p, i)).collect(),
        })
        .collect()
}

/// A probe's id: its configured name or `<kind>-<index>`.
pub fn probe_name(p: &kabar_core::monitor_config::ProbeEntry, index: usize) -> String {
    p.name.clone().unwrap_or_else(|| format!("{:?}-{index}", p.kind).to_lowercase())
}

/// A stable pseudo address per account for the gate's per-IP buckets: in-chat reports have no
/// client address at this layer, and one shared address would let a few accounts exhaust it for
/// everyone. Unique local IPv6 with the account's hash in the /64 prefix (the gate groups by /64).
fn account_address(account: &str) -> IpAddr {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    account.hash(&mut h);
    let v = h.finish();
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    bytes[1..8].copy_from_slice(&v.to_be_bytes()[..7]);
    IpAddr::V6(Ipv6Addr::from(bytes))
}

impl StatusHub {
    pub fn new(config: &Config) -> StatusHub {
        let cfg = config.monitor.clone();
        let mut monitor = Monitor::new(cfg.detection.clone(), cfg.gate.clone());
        let services = services_of(config);
        let now = now_secs();
        let mut data = BTreeMap::new();
        let minute_secs = cfg.minute_secs.max(1);
        for s in &services {
            if let Err(e) = monitor.add_service(&s.name, now * 60 / minute_secs) {
                warn!(service = %s.name, error = %e, "monitor: service not added");
            }
            data.insert(s.name.clone(), ServiceData::default());
        }
        let public_url = config.http.public_url.clone().unwrap_or_else(|| {
            let port = config.http.listen.first().map(|a| a.port()).unwrap_or(5443);
            format!("https://{}:{port}", config.domain)
        });
        StatusHub {
            bot: parse_bare(&format!("{BOT_USER}@{}", config.domain)).ok(),
            domain: config.domain.clone(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            services,
            inner: Mutex::new(Inner {
                monitor,
                data,
                incidents: BTreeMap::new(),
                subscribers: BTreeSet::new(),
                pending: PendingConfirmations::new(cfg.max_pending_confirmations, cfg.max_pending_per_ip, cfg.confirm_ttl_secs),
                swept_hour: None,
            }),
            cfg,
        }
    }

    pub fn config(&self) -> &MonitorSection {
        &self.cfg
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn services(&self) -> &[ServiceInfo] {
        &self.services
    }

    pub fn bot_jid(&self) -> Option<&BareJid> {
        self.bot.as_ref()
    }

    fn minute_secs(&self) -> u64 {
        self.cfg.minute_secs.max(1)
    }

    /// Real unix seconds → the detector's clock (60 detector seconds per detection minute).
    pub fn detector_secs(&self, real: u64) -> u64 {
        real.saturating_mul(60) / self.minute_secs()
    }

    /// A detection minute → the real unix second it starts.
    pub fn minute_to_unix(&self, minute: u64) -> u64 {
        minute.saturating_mul(self.minute_secs())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one report through the counting rules. `reporter` is the person/device key (account
    /// or device id), never the bare IP unless nothing else is known.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_report(
        &self,
        service: &str,
        reporter: &str,
        ip: IpAddr,
        account: Option<&str>,
        problem: &str,
        region: Option<&str>,
        comment: Option<&str>,
        now: u64,
    ) -> Result<Verdict, SubmitError> {
        if !self.cfg.enabled {
            return Err(SubmitError::Disabled);
        }
        let problem = ProblemType::parse(problem).map_err(SubmitError::Invalid)?;
        let region = match region.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) => Some(Region::new(r).map_err(SubmitError::Invalid)?),
            None => None,
        };
        let report = Report {
            service: service.to_owned(),
            reporter: reporter.to_owned(),
            ip,
            account: account.map(str::to_owned),
            problem,
            region: region.clone(),
            at_secs: self.detector_secs(now),
        };
        let minute = now / self.minute_secs();
        let max_regions = self.cfg.max_regions;
        let max_comment = self.cfg.max_comment_bytes;
        let mut inner = self.lock();
        let verdict = inner.monitor.submit_report(&report).map_err(SubmitError::Invalid)?;
        let Some(data) = inner.data.get_mut(service) else { return Ok(verdict) };
        let rec = data.current.entry(minute).or_insert_with(|| MinuteRecord { minute, ..Default::default() });
        rec.received += 1;
        if verdict.is_counted() {
            rec.counted += 1;
            rec.problems[problem.index()] += 1;
            let key = region.as_ref().map(|r| r.as_str().to_owned()).unwrap_or_else(|| "unknown".to_owned());
            if rec.regions.contains_key(&key) || rec.regions.len() < max_regions {
                *rec.regions.entry(key).or_insert(0) += 1;
            } else {
                *rec.regions.entry("other".to_owned()).or_insert(0) += 1;
            }
            if let Some(c) = comment.map(str::trim).filter(|c| !c.is_empty()) {
                let mut end = c.len().min(max_comment);
                while !c.is_char_boundary(end) {
                    end -= 1;
                }
                let text: String = c[..end].chars().filter(|ch| !ch.is_control() || *ch == '\n').collect();
                data.comments.push_back((now, text));
                while data.comments.len() > MAX_COMMENTS {
                    data.comments.pop_front();
                }
            }
        }
        Ok(verdict)
    }

    /// Records one probe run.
    #[allow(clippy::too_many_arguments)]
    pub fn record_probe(
        &self,
        service: &str,
        probe: &str,
        ok: bool,
        latency_ms: u64,
        detail: &str,
        cert_days: Option<i64>,
        now: u64,
    ) {
        let minute = now / self.minute_secs();
        let at = self.detector_secs(now);
        let mut inner = self.lock();
        if inner.monitor.record_probe(service, probe, ok, at).is_err() {
            return;
        }
        let Some(data) = inner.data.get_mut(service) else { return };
        let rec = data.current.entry(minute).or_insert_with(|| MinuteRecord { minute, ..Default::default() });
        let p = rec.probes.entry(probe.to_owned()).or_default();
        if ok {
            p.ok += 1;
        } else {
            p.fail += 1;
        }
        p.latency_ms_sum += latency_ms;
        p.latency_ms_max = p.latency_ms_max.max(latency_ms);
        data.probes.insert(
            probe.to_owned(),
            ProbeLast { ok, at_secs: now, latency_ms, detail: detail.chars().take(300).collect(), cert_days },
        );
    }

    /// Loads saved state; call once before the first tick. Store failures are logged and the
    /// monitor starts fresh.
    pub async fn load(&self, server: &Server) {
        self.load_at(server, now_secs()).await
    }

    /// [`Self::load`] with the clock passed in (the chart's last 24 hours end at `now`).
    pub async fn load_at(&self, server: &Server, now: u64) {
        let ms = self.minute_secs();
        let hour_now = now / ms / 60;
        let mut restored = Vec::new();
        let mut history: BTreeMap<String, Vec<MinuteRecord>> = BTreeMap::new();
        for s in &self.services {
            match server.store.kv_get("", STORE_STATE, &s.name).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<SavedState>(&bytes) {
                    Ok(saved) if saved.minute_secs == ms && saved.monitor.name() == s.name => {
                        restored.push(saved.monitor)
                    }
                    Ok(_) => {
                        info!(service = %s.name, "monitor: saved state is for another minute length; starting fresh")
                    }
                    Err(e) => warn!(service = %s.name, error = %e, "monitor: saved state unreadable; starting fresh"),
                },
                Ok(None) => {}
                Err(e) => warn!(service = %s.name, error = %e, "monitor: cannot read saved state"),
            }
            let mut recs = Vec::new();
            for hour in hour_now.saturating_sub(24)..=hour_now {
                if let Ok(Some(bytes)) = server.store.kv_get("", STORE_MINUTES, &hour_key(&s.name, hour)).await {
                    if let Ok(list) = serde_json::from_slice::<Vec<MinuteRecord>>(&bytes) {
                        recs.extend(list);
                    }
                }
            }
            history.insert(s.name.clone(), recs);
        }
        let incidents = server.store.kv_list("", STORE_INCIDENTS).await.unwrap_or_else(|e| {
            warn!(error = %e, "monitor: cannot read incidents");
            Vec::new()
        });
        let subscribers = server.store.kv_list("", STORE_SUBSCRIBERS).await.unwrap_or_else(|e| {
            warn!(error = %e, "monitor: cannot read subscribers");
            Vec::new()
        });
        let mut inner = self.lock();
        for m in restored {
            info!(service = %m.name(), state = m.state().as_str(), "monitor: state restored");
            inner.monitor.restore_service(m);
        }
        for (name, mut recs) in history {
            recs.sort_by_key(|r| r.minute);
            recs.dedup_by_key(|r| r.minute);
            let start = recs.len().saturating_sub(HISTORY_MINUTES);
            if let Some(d) = inner.data.get_mut(&name) {
                d.history = recs.into_iter().skip(start).collect();
            }
        }
        for (_, bytes) in incidents {
            if let Ok(inc) = serde_json::from_slice::<Incident>(&bytes) {
                inner.incidents.insert(inc.id.clone(), inc);
            }
        }
        inner.subscribers = subscribers.into_iter().map(|(k, _)| k).collect();
    }

    /// Judges finished minutes, saves what changed, sends XMPP alerts; returns the alerts (for
    /// webhooks).
    pub async fn tick(&self, server: &Server) -> Vec<Alert> {
        self.tick_at(server, now_secs()).await
    }

    pub async fn tick_at(&self, server: &Server, now: u64) -> Vec<Alert> {
        let ms = self.minute_secs();
        let now_minute = now / ms;
        let mut alerts = Vec::new();
        let mut writes: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
        let mut sweep = None;
        let subscribers: Vec<String>;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let events = inner.monitor.advance(self.detector_secs(now));
            let mut changed_incidents = BTreeSet::new();
            for (service, ev) in &events {
                let title =
                    self.services.iter().find(|s| &s.name == service).map(|s| s.title.clone()).unwrap_or_default();
                match ev {
                    MonEvent::StateChanged(entry) => {
                        let sm = inner.monitor.service(service);
                        let incident = sm.and_then(|s| s.open_incident()).map(|i| i.id.clone());
                        let at_secs = self.minute_to_unix(entry.minute);
                        alerts.push(Alert {
                            service: service.clone(),
                            text: alert_text(
                                &title,
                                entry.from,
                                entry.to,
                                entry.cause,
                                entry.ratio,
                                at_secs,
                                &self.public_url,
                            ),
                            title,
                            from: entry.from,
                            to: entry.to,
                            cause: entry.cause,
                            at_secs,
                            ratio: entry.ratio,
                            incident,
                        });
                    }
                    MonEvent::IncidentOpened { id, .. } | MonEvent::IncidentResolved { id, .. } => {
                        changed_incidents.insert((service.clone(), id.clone()));
                    }
                }
            }
            // The open incident's timeline changes with every state change.
            for s in inner.monitor.services() {
                if let Some(i) = s.open_incident() {
                    if events.iter().any(|(name, _)| name == s.name()) {
                        changed_incidents.insert((s.name().to_owned(), i.id.clone()));
                    }
                }
            }
            for (service, id) in changed_incidents {
                let Some(sm) = inner.monitor.service(&service) else { continue };
                let inc = sm
                    .open_incident()
                    .filter(|i| i.id == id)
                    .or_else(|| sm.resolved_incidents().find(|i| i.id == id))
                    .cloned();
                if let Some(inc) = inc {
                    if let Ok(bytes) = serde_json::to_vec(&inc) {
                        writes.push((STORE_INCIDENTS, inc.id.clone(), bytes));
                    }
                    inner.incidents.insert(inc.id.clone(), inc);
                }
            }
            while inner.incidents.len() > self.cfg.max_incidents.max(1) {
                // Oldest by start minute, resolved first.
                let victim = inner
                    .incidents
                    .values()
                    .filter(|i| !i.is_open())
                    .min_by_key(|i| i.start_minute)
                    .or_else(|| inner.incidents.values().min_by_key(|i| i.start_minute))
                    .map(|i| i.id.clone());
                let Some(victim) = victim else { break };
                inner.incidents.remove(&victim);
                writes.push((STORE_INCIDENTS, victim, Vec::new()));
            }
            // Finish minute records and save.
            for s in &self.services {
                let Some(sm) = inner.monitor.service(&s.name) else { continue };
                let status = sm.status();
                let judged =
                    events.iter().any(|(n, _)| n == &s.name) || status.minute.is_some_and(|m| m + 1 >= now_minute);
                let saved = SavedState { minute_secs: ms, monitor: sm.clone() };
                let Some(data) = inner.data.get_mut(&s.name) else { continue };
                let mut touched_hours = BTreeSet::new();
                let first_missing = data.history.back().map(|r| r.minute + 1).unwrap_or(now_minute.saturating_sub(1));
                let from = first_missing.max(now_minute.saturating_sub(HISTORY_MINUTES as u64));
                for minute in from..now_minute {
                    let mut rec =
                        data.current.remove(&minute).unwrap_or_else(|| MinuteRecord { minute, ..Default::default() });
                    if let Some(exp) = status.expectation {
                        rec.expected = exp.per_minute;
                        rec.spread = exp.spread;
                    }
                    rec.state = Some(status.state);
                    touched_hours.insert(minute / 60);
                    data.history.push_back(rec);
                }
                // Records for minutes older than what was filled (a long pause) are dropped.
                data.current.retain(|m, _| *m >= now_minute);
                while data.history.len() > HISTORY_MINUTES {
                    data.history.pop_front();
                }
                for hour in touched_hours {
                    let recs: Vec<&MinuteRecord> = data.history.iter().filter(|r| r.minute / 60 == hour).collect();
                    if let Ok(bytes) = serde_json::to_vec(&recs) {
                        writes.push((STORE_MINUTES, hour_key(&s.name, hour), bytes));
                    }
                    if let Ok(bytes) = serde_json::to_vec(&rollup(hour, &recs)) {
                        writes.push((STORE_HOURS, hour_key(&s.name, hour), bytes));
                    }
                }
                if judged {
                    if let Ok(bytes) = serde_json::to_vec(&saved) {
                        writes.push((STORE_STATE, s.name.clone(), bytes));
                    }
                }
            }
            let hour = now_minute / 60;
            if inner.swept_hour != Some(hour) {
                inner.swept_hour = Some(hour);
                sweep = Some(hour);
            }
            subscribers = if alerts.is_empty() { Vec::new() } else { inner.subscribers.iter().cloned().collect() };
        }
        for (store, key, value) in writes {
            let r = if value.is_empty() {
                server.store.kv_delete("", store, &key).await.map(|_| ())
            } else {
                server.store.kv_put("", store, &key, &value).await
            };
            if let Err(e) = r {
                warn!(store, key, error = %e, "monitor: cannot save");
            }
        }
        if let Some(hour) = sweep {
            self.sweep(server, hour).await;
        }
        for alert in &alerts {
            info!(service = %alert.service, from = ?alert.from, to = ?alert.to, "monitor: state changed");
            for sub in &subscribers {
                self.send_chat(server, sub, &alert.text).await;
            }
        }
        alerts
    }

    async fn sweep(&self, server: &Server, hour: u64) {
        let minute_keep = self.cfg.minute_retention_hours.max(25);
        let hour_keep = self.cfg.hour_retention_days.max(1) * 24;
        for (store, keep) in [(STORE_MINUTES, minute_keep), (STORE_HOURS, hour_keep)] {
            let Ok(list) = server.store.kv_list("", store).await else { continue };
            for (key, _) in list {
                let expired =
                    key.rsplit_once('/').and_then(|(_, h)| h.parse::<u64>().ok()).is_none_or(|h| h + keep < hour);
                if expired {
                    let _ = server.store.kv_delete("", store, &key).await;
                }
            }
        }
    }

    async fn send_chat(&self, server: &Server, to: &str, text: &str) {
        let Some(bot) = &self.bot else { return };
        let msg = elem("message", ns::CLIENT)
            .with_attr("type", "chat")
            .with_attr("from", bot.as_str())
            .with_attr("to", to)
            .with_attr("id", format!("status-{:016x}", rand::random::<u64>()))
            .with_child(elem("body", ns::CLIENT).with_text(text));
        server.route(msg).await;
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let services = self
            .services
            .iter()
            .filter_map(|info| {
                let sm = inner.monitor.service(&info.name)?;
                let data = inner.data.get(&info.name)?;
                let mut history: Vec<MinuteRecord> = data.history.iter().cloned().collect();
                history.extend(data.current.values().cloned());
                Some(ServiceSnapshot {
                    info: info.clone(),
                    status: sm.status(),
                    history,
                    probes: data.probes.clone(),
                    comments: data.comments.iter().cloned().collect(),
                })
            })
            .collect();
        let mut incidents: Vec<Incident> = inner.incidents.values().cloned().collect();
        // The open incidents' live copies (timelines grow between saves).
        for s in inner.monitor.services() {
            if let Some(open) = s.open_incident() {
                match incidents.iter_mut().find(|i| i.id == open.id) {
                    Some(i) => *i = open.clone(),
                    None => incidents.push(open.clone()),
                }
            }
        }
        incidents.sort_by(|a, b| b.start_minute.cmp(&a.start_minute).then_with(|| a.id.cmp(&b.id)));
        Snapshot { services, incidents, minute_secs: self.minute_secs(), subscribers: inner.subscribers.len() }
    }

    /// The state of every service, cheaply (for summaries under load).
    pub fn states(&self) -> Vec<(String, State)> {
        let inner = self.lock();
        inner.monitor.services().map(|s| (s.name().to_owned(), s.state())).collect()
    }

    /// Adds an admin note to an incident (open or kept); `resolve` also closes an open one.
    pub async fn annotate(
        &self,
        server: &Server,
        id: &str,
        text: &str,
        resolve: bool,
    ) -> Result<Incident, AnnotateFailure> {
        let now = now_secs();
        let at = self.detector_secs(now);
        let inc = {
            let mut inner = self.lock();
            let service = inner.incidents.get(id).map(|i| i.service.clone()).or_else(|| {
                inner
                    .monitor
                    .services()
                    .find(|s| s.open_incident().is_some_and(|i| i.id == id))
                    .map(|s| s.name().to_owned())
            });
            let Some(service) = service else { return Err(AnnotateFailure::NotFound) };
            let Some(sm) = inner.monitor.service_mut(&service) else { return Err(AnnotateFailure::NotFound) };
            let is_open = sm.open_incident().is_some_and(|i| i.id == id);
            let in_monitor = is_open || sm.resolved_incidents().any(|i| i.id == id);
            if resolve {
                if !is_open {
                    return Err(AnnotateFailure::NotOpen);
                }
                sm.admin_resolve(at, (!text.is_empty()).then_some(text))
                    .map_err(|e| AnnotateFailure::Invalid(e.to_string()))?;
            } else if in_monitor {
                sm.annotate(id, text, at).map_err(|e| AnnotateFailure::Invalid(e.to_string()))?;
            }
            let updated = sm
                .open_incident()
                .filter(|i| i.id == id)
                .or_else(|| sm.resolved_incidents().find(|i| i.id == id))
                .cloned();
            let inc = match updated {
                Some(inc) => inc,
                None => {
                    // Older than the detector keeps in memory: annotate the stored copy.
                    let Some(stored) = inner.incidents.get_mut(id) else { return Err(AnnotateFailure::NotFound) };
                    stored.annotate(text, at).map_err(|e| AnnotateFailure::Invalid(e.to_string()))?;
                    stored.clone()
                }
            };
            inner.incidents.insert(inc.id.clone(), inc.clone());
            inc
        };
        if let Ok(bytes) = serde_json::to_vec(&inc) {
            if let Err(e) = server.store.kv_put("", STORE_INCIDENTS, &inc.id, &bytes).await {
                warn!(error = %e, "monitor: cannot save incident");
            }
        }
        Ok(inc)
    }

    pub async fn subscribe(&self, server: &Server, jid: &BareJid) -> Result<bool, StanzaError> {
        {
            let mut inner = self.lock();
            if inner.subscribers.contains(jid.as_str()) {
                return Ok(false);
            }
            if inner.subscribers.len() >= self.cfg.max_subscribers {
                return Err(StanzaError::resource_constraint().with_text("too many alert subscribers"));
            }
            inner.subscribers.insert(jid.as_str().to_owned());
        }
        server.store.kv_put("", STORE_SUBSCRIBERS, jid.as_str(), b"").await.map_err(|e| {
            warn!(error = %e, "monitor: cannot save subscriber");
            StanzaError::internal_server_error()
        })?;
        Ok(true)
    }

    pub async fn unsubscribe(&self, server: &Server, jid: &BareJid) -> Result<bool, StanzaError> {
        let was = self.lock().subscribers.remove(jid.as_str());
        server.store.kv_delete("", STORE_SUBSCRIBERS, jid.as_str()).await.map_err(|e| {
            warn!(error = %e, "monitor: cannot delete subscriber");
            StanzaError::internal_server_error()
        })?;
        Ok(was)
    }

    /// A subscription change asked for on the status page: validates the JID (an account of this
    /// server, not the bot) and sends it a confirmation message from the bot. Answers the same
    /// whether or not the account exists, so the form cannot be used to probe for accounts.
    pub async fn request_web_subscription(
        &self,
        server: &Server,
        jid: &str,
        action: SubAction,
        ip: IpAddr,
    ) -> Result<(), WebSubscribeError> {
        let jid = parse_bare(jid.trim()).map_err(|_| WebSubscribeError::InvalidJid)?;
        if jid.node().is_none() || jid.domain().as_str() != self.domain || Some(&jid) == self.bot.as_ref() {
            return Err(WebSubscribeError::NotLocal);
        }
        let requested = self.lock().pending.request(jid.as_str(), action, ip, now_secs())?;
        if let Requested::New(token) = requested {
            let what = match action {
                SubAction::Subscribe => "subscribe you to outage alerts",
                SubAction::Unsubscribe => "stop outage alerts to you",
            };
            let text = format!(
                "Someone (perhaps you) asked on {url}/status to {what} ({jid}). To confirm, reply \"confirm {token}\" or open {url}/status/confirm?token={token} within {hours} hours. If it was not you, ignore this message: nothing changes.",
                url = self.public_url,
                hours = self.cfg.confirm_ttl_secs.max(1).div_ceil(3600),
            );
            self.send_chat(server, jid.as_str(), &text).await;
        }
        Ok(())
    }

    /// Confirmations waiting (bounded by `max_pending_confirmations`).
    pub fn pending_confirmations(&self) -> usize {
        self.lock().pending.len()
    }

    /// What a confirmation token would do (for the page that asks before using it).
    pub fn peek_confirmation(&self, token: &str) -> Result<(String, SubAction), ConfirmError> {
        self.lock().pending.peek(token, now_secs())
    }

    /// Use a confirmation token: from the link (`from` None) or a chat reply by `from`.
    /// Returns the JID, the action and whether it changed anything.
    pub async fn confirm_subscription(
        &self,
        server: &Server,
        token: &str,
        from: Option<&BareJid>,
    ) -> Result<(BareJid, SubAction, bool), ConfirmFailure> {
        let (jid, action) = self.lock().pending.confirm(token, from.map(|j| j.as_str()), now_secs())?;
        let jid = parse_bare(&jid).map_err(|_| ConfirmFailure::Confirm(ConfirmError::Unknown))?;
        let changed = match action {
            SubAction::Subscribe => self.subscribe(server, &jid).await,
            SubAction::Unsubscribe => self.unsubscribe(server, &jid).await,
        }
        .map_err(ConfirmFailure::Store)?;
        info!(jid = %jid, action = action.as_str(), "monitor: alert subscription confirmed");
        Ok((jid, action, changed))
    }

    /// A report from a logged-in account (chat or ad-hoc command).
    pub fn report_from_account(
        &self,
        account: &BareJid,
        service: &str,
        problem: &str,
        region: Option<&str>,
        comment: Option<&str>,
    ) -> Result<Verdict, SubmitError> {
        self.submit_report(
            service,
            account.as_str(),
            account_address(account.as_str()),
            Some(account.as_str()),
            problem,
            region,
            comment,
            now_secs(),
        )
    }

    /// One-line status of every service.
    pub fn status_text(&self) -> String {
        let states = self.states();
        states.iter().map(|(name, state)| format!("{name}: {}", state.as_str())).collect::<Vec<_>>().join("\n")
    }
}

#[derive(Debug)]
pub enum AnnotateFailure {
    NotFound,
    NotOpen,
    Invalid(String),
}

fn hour_key(service: &str, hour: u64) -> String {
    format!("{service}/{hour:012}")
}

fn rollup(hour: u64, recs: &[&MinuteRecord]) -> HourRollup {
    let mut r = HourRollup { hour, ..Default::default() };
    let (mut lat_sum, mut lat_n) = (0u64, 0u64);
    for m in recs {
        r.counted += m.counted;
        r.received += m.received;
        r.expected += m.expected;
        r.worst_state = r.worst_state.max(m.state);
        for p in m.probes.values() {
            r.probe_ok += u64::from(p.ok);
            r.probe_fail += u64::from(p.fail);
            lat_sum += p.latency_ms_sum;
            lat_n += u64::from(p.ok + p.fail);
        }
    }
    r.latency_ms_avg = (lat_n > 0).then(|| lat_sum as f64 / lat_n as f64);
    r
}

fn alert_text(title: &str, from: State, to: State, cause: Cause, ratio: f64, at_secs: u64, url: &str) -> String {
    let why = match cause {
        Cause::Reports => format!("user reports at {ratio:.1}× normal"),
        Cause::Probes => "probes failing".to_owned(),
        Cause::ReportsAndProbes => format!("user reports at {ratio:.1}× normal and probes failing"),
        Cause::Recovered => "back to normal".to_owned(),
        Cause::AdminResolved => "resolved by an administrator".to_owned(),
    };
    format!(
        "{title}: {} (was {}) — {why}, since {} UTC. {url}/status",
        to.as_str(),
        from.as_str(),
        kabar_core::time::xep0082(at_secs)
    )
}

/// The words a person may use for a problem type in chat.
fn problem_from_word(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_lowercase().replace('-', "_");
    Some(match w.as_str() {
        "cant_send" | "send" | "sending" => "cant_send",
        "cant_log_in" | "login" | "log_in" | "cant_login" => "cant_log_in",
        "app_wont_load" | "load" | "app" => "app_wont_load",
        "messages_delayed" | "delayed" | "delay" | "slow" => "messages_delayed",
        "other" => "other",
        _ => return None,
    })
}

pub fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Counted => "Thanks, your report was counted.",
        Verdict::Acknowledged(NotCounted::Duplicate) => {
            "Thanks — you already reported this service in the last 30 minutes, so it was counted once."
        }
        Verdict::Acknowledged(_) => {
            "Thanks, your report was received (many reports right now: it was not counted again)."
        }
    }
}

fn problem_options() -> Vec<(String, String)> {
    [
        ("Can't send messages", "cant_send"),
        ("Can't log in", "cant_log_in"),
        ("App won't load", "app_wont_load"),
        ("Messages delayed", "messages_delayed"),
        ("Something else", "other"),
    ]
    .iter()
    .map(|(l, v)| (l.to_string(), v.to_string()))
    .collect()
}

// --- the module ----------------------------------------------------------------------------------

pub struct StatusModule {
    hub: Arc<StatusHub>,
}

impl StatusModule {
    /// Builds the hub and registers the ad-hoc commands.
    pub fn new(config: &Config, commands: &AdhocCommands) -> StatusModule {
        let hub = Arc::new(StatusHub::new(config));
        if hub.cfg.enabled {
            commands.register(Arc::new(ReportCommand { hub: hub.clone() }));
            commands.register(Arc::new(SubscribeCommand { hub: hub.clone(), subscribe: true }));
            commands.register(Arc::new(SubscribeCommand { hub: hub.clone(), subscribe: false }));
        }
        StatusModule { hub }
    }

    pub fn hub(&self) -> &Arc<StatusHub> {
        &self.hub
    }

    /// The hub of the status module registered with `server`, if any.
    pub fn hub_of(server: &Server) -> Option<Arc<StatusHub>> {
        server.modules().iter().find_map(|m| {
            let any: &dyn std::any::Any = m.as_ref();
            any.downcast_ref::<StatusModule>().map(|s| s.hub.clone())
        })
    }

    async fn bot_message(&self, server: &Server, from: &Jid, stanza: &Element) {
        let hub = &self.hub;
        let body = stanza.get_child("body", ns::CLIENT).map(|b| b.text()).unwrap_or_default();
        let body = body.trim();
        if body.is_empty() {
            return; // chat states, receipts: nothing to answer
        }
        let account = from.to_bare();
        let mut words = body.split_whitespace();
        let cmd = words.next().unwrap_or("").to_ascii_lowercase();
        let reply = match cmd.as_str() {
            "status" => hub.status_text(),
            "subscribe" => match hub.subscribe(server, &account).await {
                Ok(true) => "Subscribed: you will get a message when a service's state changes. Send \"unsubscribe\" to stop.".to_owned(),
                Ok(false) => "You are already subscribed.".to_owned(),
                Err(e) => format!("Could not subscribe ({}).", e.condition),
            },
            "unsubscribe" => match hub.unsubscribe(server, &account).await {
                Ok(_) => "Unsubscribed.".to_owned(),
                Err(e) => format!("Could not unsubscribe ({}).", e.condition),
            },
            "confirm" => match words.next() {
                Some(token) => match hub.confirm_subscription(server, token, Some(&account)).await {
                    Ok((_, SubAction::Subscribe, _)) => "Confirmed: you are subscribed to outage alerts. Send \"unsubscribe\" to stop.".to_owned(),
                    Ok((_, SubAction::Unsubscribe, _)) => "Confirmed: you are unsubscribed.".to_owned(),
                    Err(e) => format!("Not confirmed: {e}."),
                },
                None => "Usage: confirm <code from the confirmation message>.".to_owned(),
            },
            "report" => {
                let services: Vec<&str> = hub.services.iter().map(|s| s.name.as_str()).collect();
                let first = words.next();
                // "report <service> <problem> [region…]"; the service may be left out when there is one.
                let (service, problem_word) = match first {
                    Some(w) if services.contains(&w) => (Some(w), words.next()),
                    Some(w) if services.len() == 1 && problem_from_word(w).is_some() => (services.first().copied(), Some(w)),
                    Some(w) => (Some(w), words.next()),
                    None => (services.first().copied().filter(|_| services.len() == 1), None),
                };
                let region: Vec<&str> = words.collect();
                let region = (!region.is_empty()).then(|| region.join(" "));
                match (service, problem_word.map(|w| (w, problem_from_word(w)))) {
                    (Some(service), Some((_, Some(problem)))) => {
                        match hub.report_from_account(&account, service, problem, region.as_deref(), None) {
                            Ok(v) => verdict_text(v).to_owned(),
                            Err(SubmitError::Invalid(ReportError::UnknownService)) => {
                                format!("Unknown service \"{service}\". Services: {}", services.join(", "))
                            }
                            Err(SubmitError::Invalid(e)) => format!("Not a valid report: {e}."),
                            Err(SubmitError::Disabled) => "Reports are switched off.".to_owned(),
                        }
                    }
                    _ => format!(
                        "Usage: report <service> <problem> [region]. Services: {}. Problems: send, login, load, delayed, other.",
                        services.join(", ")
                    ),
                }
            }
            _ => "I am the status bot. Commands: \"report <service> <problem> [region]\" (problems: send, login, load, delayed, other), \"status\", \"subscribe\", \"unsubscribe\".".to_owned(),
        };
        hub.send_chat(server, from.as_str(), &reply).await;
    }
}

#[async_trait]
impl Module for StatusModule {
    fn name(&self) -> &'static str {
        "status"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        // Only messages and presence for the status bot; IQs to it go their usual way.
        H::ON_FILTER_IN_MESSAGE | H::ON_FILTER_IN_PRESENCE
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        let Event::Filter { account, peer, stanza, inbound: true } = event else { return Flow::Continue };
        let Some(bot) = &self.hub.bot else { return Flow::Continue };
        if *account != bot || !self.hub.cfg.enabled {
            return Flow::Continue;
        }
        match stanza.name() {
            "message" => {
                let typ = stanza.attr("type").unwrap_or("normal");
                if typ == "error" || typ == "groupchat" || typ == "headline" {
                    return Flow::Handled;
                }
                if !server.is_local(peer) || peer.node().is_none() {
                    return Flow::Reject(StanzaError::forbidden());
                }
                self.bot_message(server, peer, stanza).await;
                Flow::Handled
            }
            // Presence (subscriptions to the bot) needs no answer.
            "presence" => Flow::Handled,
            _ => Flow::Continue,
        }
    }
}

// --- ad-hoc commands -----------------------------------------------------------------------------

struct ReportCommand {
    hub: Arc<StatusHub>,
}

#[async_trait]
impl AdhocCommand for ReportCommand {
    fn node(&self) -> &'static str {
        NODE_REPORT
    }
    fn name(&self) -> &'static str {
        "Report a problem"
    }
    async fn execute(&self, _server: &Server, req: &CommandRequest<'_>) -> Result<CommandReply, StanzaError> {
        if req.form.is_none() {
            let services: Vec<(String, String)> =
                self.hub.services.iter().map(|s| (s.title.clone(), s.name.clone())).collect();
            let mut region = adhoc::text_field("region", "Where are you? (city or region, optional)", "text-single");
            let regions: Vec<String> = self
                .hub
                .services
                .iter()
                .flat_map(|s| s.regions.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !regions.is_empty() {
                region = adhoc::list_single(
                    "region",
                    "Where are you?",
                    false,
                    &regions.iter().map(|r| (r.clone(), r.clone())).collect::<Vec<_>>(),
                );
                region.set_attr_str("type", "list-single");
            }
            return Ok(CommandReply::Form(
                adhoc::form(
                    "Report a problem",
                    "Tell us what is not working. One report per service counts every 30 minutes.",
                )
                .with_child(adhoc::list_single("service", "Service", true, &services))
                .with_child(adhoc::list_single("problem", "Problem", true, &problem_options()))
                .with_child(region)
                .with_child(adhoc::text_field("comment", "Comment (optional)", "text-multi")),
            ));
        }
        let account = req.from.to_bare();
        let service = req.field("service").ok_or_else(|| adhoc::bad_payload("the service field is required"))?;
        let problem = req.field("problem").ok_or_else(|| adhoc::bad_payload("the problem field is required"))?;
        let region = req.field("region");
        let comment = req.field("comment");
        match self.hub.report_from_account(
            &account,
            service.trim(),
            problem.trim(),
            region.as_deref(),
            comment.as_deref(),
        ) {
            Ok(v) => Ok(CommandReply::Completed { note: verdict_text(v).to_owned(), result: None }),
            Err(SubmitError::Invalid(e)) => Err(adhoc::bad_payload(e.to_string())),
            Err(SubmitError::Disabled) => Err(StanzaError::service_unavailable()),
        }
    }
}

struct SubscribeCommand {
    hub: Arc<StatusHub>,
    subscribe: bool,
}

#[async_trait]
impl AdhocCommand for SubscribeCommand {
    fn node(&self) -> &'static str {
        if self.subscribe {
            NODE_SUBSCRIBE
        } else {
            NODE_UNSUBSCRIBE
        }
    }
    fn name(&self) -> &'static str {
        if self.subscribe {
            "Subscribe to outage alerts"
        } else {
            "Unsubscribe from outage alerts"
        }
    }
    async fn execute(&self, server: &Server, req: &CommandRequest<'_>) -> Result<CommandReply, StanzaError> {
        let account = req.from.to_bare();
        let note = if self.subscribe {
            match self.hub.subscribe(server, &account).await? {
                true => "Subscribed: you will get a message from the status bot when a service's state changes.",
                false => "You are already subscribed.",
            }
        } else {
            match self.hub.unsubscribe(server, &account).await? {
                true => "Unsubscribed.",
                false => "You were not subscribed.",
            }
        };
        Ok(CommandReply::Completed { note: note.to_owned(), result: None })
    }
}
