//! Gluing it together: a [`ServiceMonitor`] per service (minute buckets → baseline → detector,
//! plus probes), and a [`Monitor`] holding the services and the report gate.
//!
//! Everything is driven by the caller's clock: `record_*` with the event's unix seconds, and
//! [`Monitor::advance`] / [`ServiceMonitor::advance`] with "now" (e.g. every few seconds). A minute
//! is judged once it has finished (`now` is in a later minute).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::baseline::{Baseline, BaselineConfig, Expectation, MinuteBucket, MinuteBuckets, WindowSum};
use crate::detector::{AnnotateError, Detector, DetectorConfig, Event, Incident, ProbeTracker, State, WindowSignal};
use crate::reports::{GateConfig, ProblemType, Report, ReportError, ReportGate, Verdict};

/// Monitor-wide parameters. Defaults in brackets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    pub baseline: BaselineConfig,
    pub detector: DetectorConfig,
    /// After a service is added, reports alone cannot go beyond PossibleProblems for this long
    /// [120 min]: the baseline must learn at least one hour first, or a service that is simply
    /// busier than the cold floor would open an incident that never lets it learn.
    pub warmup_minutes: u32,
    /// When an incident opens, this many minutes before it are marked unclean for the baseline
    /// [30] (≤ `baseline.commit_delay_minutes`).
    pub unclean_lookback_minutes: u32,
    /// `advance` judges at most this many missed minutes [10]; older ones (server was down) are
    /// treated as unobserved, never as zero reports.
    pub max_catchup_minutes: u32,
    /// After an admin resolves an incident by hand, reports alone are capped at
    /// PossibleProblems for this long [1440 min] while the baseline learns the new level.
    pub admin_quiet_minutes: u32,
    /// Minutes of an incident older than this are learned by the baseline again (still clipped)
    /// [360]: a real outage is over long before, while a permanent level change would otherwise
    /// keep the incident open and the baseline blind forever.
    pub max_excluded_incident_minutes: u32,
    /// Reports recorded for minutes this far ahead of the monitor are clamped to it [5].
    pub max_future_minutes: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            baseline: BaselineConfig::default(),
            detector: DetectorConfig::default(),
            warmup_minutes: 120,
            unclean_lookback_minutes: 30,
            max_catchup_minutes: 10,
            admin_quiet_minutes: 1440,
            max_future_minutes: 5,
            max_excluded_incident_minutes: 360,
        }
    }
}

/// Snapshot for the status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub state: State,
    /// Last judged minute.
    pub minute: Option<u64>,
    /// Window signals of the last judged minute.
    pub windows: Vec<WindowSignal>,
    pub expectation: Option<Expectation>,
    pub open_incident: Option<String>,
    /// Counted reports per problem type over the last hour, in [`ProblemType::ALL`] order.
    pub problems_last_hour: [u64; 5],
}

/// One monitored service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceMonitor {
    name: String,
    cfg: MonitorConfig,
    created_minute: u64,
    /// First minute not yet judged.
    cursor: u64,
    /// Counts for minutes `cursor, cursor+1, …` not yet judged.
    pending: VecDeque<u64>,
    buckets: MinuteBuckets,
    baseline: Baseline,
    detector: Detector,
    probes: ProbeTracker,
    capped_until: u64,
    last_signals: Vec<WindowSignal>,
    last_expectation: Option<Expectation>,
    last_minute: Option<u64>,
    /// (minute, counts per problem type) for the last hour.
    problems: VecDeque<(u64, [u64; 5])>,
}

impl ServiceMonitor {
    pub fn new(name: &str, cfg: MonitorConfig, now_secs: u64) -> ServiceMonitor {
        let now = now_secs / 60;
        let capacity = cfg.detector.longest_window() as usize;
        ServiceMonitor {
            name: name.to_owned(),
            created_minute: now,
            cursor: now,
            pending: VecDeque::new(),
            buckets: MinuteBuckets::new(capacity),
            baseline: Baseline::new(cfg.baseline.clone()),
            detector: Detector::new(name, cfg.detector.clone()),
            probes: ProbeTracker::new(),
            capped_until: now + u64::from(cfg.warmup_minutes),
            last_signals: Vec::new(),
            last_expectation: None,
            last_minute: None,
            problems: VecDeque::new(),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> State {
        self.detector.state()
    }

    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn open_incident(&self) -> Option<&Incident> {
        self.detector.open_incident()
    }

    pub fn resolved_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.detector.resolved_incidents()
    }

    /// Record `n` counted reports at `at_secs`. Reports for an already judged minute go into the
    /// current one; reports far in the future are clamped.
    pub fn record_counted(&mut self, at_secs: u64, n: u64) {
        let minute = (at_secs / 60).max(self.cursor);
        let idx = (minute - self.cursor).min(u64::from(self.cfg.max_future_minutes)) as usize;
        if self.pending.len() <= idx {
            self.pending.resize(idx + 1, 0);
        }
        self.pending[idx] += n;
    }

    /// Record one counted report with its problem type (for the breakdown).
    pub fn record_report(&mut self, at_secs: u64, problem: ProblemType) {
        self.record_counted(at_secs, 1);
        let minute = (at_secs / 60).max(self.cursor);
        match self.problems.back_mut() {
            Some((m, counts)) if *m == minute => counts[problem.index()] += 1,
            _ => {
                let mut counts = [0; 5];
                counts[problem.index()] = 1;
                self.problems.push_back((minute, counts));
            }
        }
        while self.problems.front().is_some_and(|(m, _)| m + 60 <= minute) || self.problems.len() > 60 {
            self.problems.pop_front();
        }
    }

    /// Record a probe result (`ok` = the probe could log in / send / receive) at `at_secs`.
    pub fn record_probe(&mut self, probe: &str, ok: bool, at_secs: u64) -> bool {
        let cfg = &self.cfg.detector;
        self.probes.record(probe, ok, at_secs / 60, cfg)
    }

    /// Judge every minute that finished before `now_secs`.
    pub fn advance(&mut self, now_secs: u64) -> Vec<Event> {
        let now = now_secs / 60;
        let mut events = Vec::new();
        let catchup = u64::from(self.cfg.max_catchup_minutes.max(1));
        if now > self.cursor + catchup {
            // Unobserved gap: skip it; pending counts for skipped minutes are dropped.
            let skip = now - catchup - self.cursor;
            for _ in 0..skip.min(self.pending.len() as u64) {
                self.pending.pop_front();
            }
            self.cursor = now - catchup;
        }
        while self.cursor < now {
            let minute = self.cursor;
            let count = self.pending.pop_front().unwrap_or(0);
            self.cursor += 1;
            events.extend(self.judge(minute, count));
        }
        events
    }

    fn judge(&mut self, minute: u64, count: u64) -> Vec<Event> {
        let limit = u64::from(self.cfg.max_excluded_incident_minutes);
        let clean = self.detector.open_incident().is_none_or(|i| minute >= i.start_minute + limit);
        let exp = self.baseline.observe(minute, count, clean);
        self.buckets.ensure_capacity(self.cfg.detector.longest_window() as usize);
        self.buckets.push(MinuteBucket { minute, count, expected: exp.per_minute });
        let signals: Vec<WindowSignal> = self
            .cfg
            .detector
            .windows
            .iter()
            .map(|w| WindowSignal::from_sum(self.buckets.window(minute, w.minutes), exp.spread))
            .collect();
        let probes = self.probes.level(minute, &self.cfg.detector);
        let capped = minute < self.capped_until;
        self.detector.observe_minute(count, exp.per_minute);
        if let Some(rule) = self.cfg.detector.onset {
            if let Some(short) = signals.iter().find(|s| s.minutes == rule.short_minutes) {
                let end = minute.saturating_sub(u64::from(rule.short_minutes));
                self.detector.observe_onset(short, self.buckets.window(end, rule.lookback_minutes));
            }
        }
        if let Some(rule) = &self.cfg.detector.tail {
            let sums: Vec<WindowSum> = rule.windows.iter().map(|&w| self.buckets.window(minute, w)).collect();
            self.detector.observe_tail(&sums, exp.spread, self.baseline.minute_dispersion());
        }
        let events = self.detector.step(minute, &signals, probes, capped);
        if events.iter().any(|e| matches!(e, Event::IncidentOpened { .. })) {
            let from = minute.saturating_sub(u64::from(self.cfg.unclean_lookback_minutes));
            self.baseline.mark_unclean(from, minute);
        }
        self.last_signals = signals;
        self.last_expectation = Some(exp);
        self.last_minute = Some(minute);
        events
    }

    /// Resolve the open incident by hand (e.g. the level really changed for good). Reports alone
    /// are then capped at PossibleProblems for `admin_quiet_minutes` while the baseline learns.
    pub fn admin_resolve(&mut self, at_secs: u64, note: Option<&str>) -> Result<Vec<Event>, AnnotateError> {
        let minute = at_secs / 60;
        let Some(id) = self.detector.open_incident().map(|i| i.id.clone()) else {
            return Err(AnnotateError::UnknownIncident);
        };
        if let Some(text) = note {
            self.annotate(&id, text, at_secs)?;
        }
        self.capped_until = self.capped_until.max(minute + u64::from(self.cfg.admin_quiet_minutes));
        Ok(self.detector.admin_resolve(minute))
    }

    /// Annotate an incident (open or still in memory) by id.
    pub fn annotate(&mut self, incident_id: &str, text: &str, at_secs: u64) -> Result<(), AnnotateError> {
        self.detector
            .incident_mut(incident_id)
            .ok_or(AnnotateError::UnknownIncident)?
            .annotate(text, at_secs)
    }

    pub fn status(&self) -> ServiceStatus {
        let mut problems = [0u64; 5];
        let horizon = self.last_minute.unwrap_or(self.cursor).saturating_sub(59);
        for (m, counts) in &self.problems {
            if *m >= horizon {
                for (p, c) in problems.iter_mut().zip(counts) {
                    *p += c;
                }
            }
        }
        ServiceStatus {
            service: self.name.clone(),
            state: self.state(),
            minute: self.last_minute,
            windows: self.last_signals.clone(),
            expectation: self.last_expectation,
            open_incident: self.open_incident().map(|i| i.id.clone()),
            problems_last_hour: problems,
        }
    }

    /// Replace the detector parameters (after a restart with a changed configuration); they
    /// apply from the next judged minute on. The baseline keeps the parameters it learned with
    /// (a changed UTC offset or ring size would misplace what it has learned).
    pub fn set_config(&mut self, mut cfg: MonitorConfig) {
        cfg.baseline = self.cfg.baseline.clone();
        self.detector.set_config(cfg.detector.clone());
        self.buckets.ensure_capacity(cfg.detector.longest_window() as usize);
        self.cfg = cfg;
    }

    /// Minute this service was added.
    pub fn created_minute(&self) -> u64 {
        self.created_minute
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    #[error("service already monitored")]
    DuplicateService,
    #[error("invalid service name")]
    InvalidService,
    #[error("unknown service")]
    UnknownService,
}

/// All monitored services plus the report gate.
#[derive(Debug)]
pub struct Monitor {
    cfg: MonitorConfig,
    gate: ReportGate,
    services: BTreeMap<String, ServiceMonitor>,
}

impl Monitor {
    pub fn new(cfg: MonitorConfig, gate: GateConfig) -> Monitor {
        Monitor { cfg, gate: ReportGate::new(gate), services: BTreeMap::new() }
    }

    pub fn add_service(&mut self, name: &str, now_secs: u64) -> Result<(), MonitorError> {
        if name.is_empty() || name.len() > self.gate.config().max_key_bytes || name.chars().any(char::is_control) {
            return Err(MonitorError::InvalidService);
        }
        if self.services.contains_key(name) {
            return Err(MonitorError::DuplicateService);
        }
        self.services.insert(name.to_owned(), ServiceMonitor::new(name, self.cfg.clone(), now_secs));
        Ok(())
    }

    /// Put back a service saved earlier (serde), replacing one of the same name. The saved
    /// parameters are replaced by this monitor's, so a changed configuration applies after a
    /// restart while the learned baseline, detector state and incidents are kept.
    pub fn restore_service(&mut self, mut service: ServiceMonitor) {
        service.set_config(self.cfg.clone());
        self.services.insert(service.name.clone(), service);
    }

    pub fn service(&self, name: &str) -> Option<&ServiceMonitor> {
        self.services.get(name)
    }

    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceMonitor> {
        self.services.get_mut(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceMonitor> {
        self.services.values()
    }

    pub fn gate(&self) -> &ReportGate {
        &self.gate
    }

    /// Run a report through the counting rules; counted reports go into the service's buckets.
    pub fn submit_report(&mut self, report: &Report) -> Result<Verdict, ReportError> {
        let Some(service) = self.services.get_mut(&report.service) else {
            return Err(ReportError::UnknownService);
        };
        let verdict = self.gate.submit(report)?;
        if verdict.is_counted() {
            service.record_report(report.at_secs, report.problem);
        }
        Ok(verdict)
    }

    pub fn record_probe(&mut self, service: &str, probe: &str, ok: bool, at_secs: u64) -> Result<bool, MonitorError> {
        let s = self.services.get_mut(service).ok_or(MonitorError::UnknownService)?;
        Ok(s.record_probe(probe, ok, at_secs))
    }

    /// Judge every finished minute of every service; events tagged with the service name.
    pub fn advance(&mut self, now_secs: u64) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        for (name, s) in &mut self.services {
            out.extend(s.advance(now_secs).into_iter().map(|e| (name.clone(), e)));
        }
        out
    }
}
