//! The detector: rolling windows of counted reports judged against the baseline, combined with
//! probe results, into three states with hysteresis, and incidents.
//!
//! ## Per-minute signals
//!
//! For every window in [`DetectorConfig::windows`] (default the last 5 and the last 15 minutes) the
//! monitor hands over `observed` (counted reports) and `expected` (sum of the baseline's per-minute
//! expectations) plus the baseline's relative spread `s`. From them:
//!
//! * `ratio = observed / expected` — what the status page shows ("4.2× normal");
//! * `z` — the signed square root of the negative-binomial deviance of `observed` against mean
//!   `expected` with size `1/s²` (variance `μ + s²μ²`). It behaves like a normal z-score but keeps
//!   the right tail of small Poisson counts honest, so "8 reports where 1.5 were expected" is judged
//!   by its real improbability, not a normal approximation.
//!
//! A window passes a [`Thresholds`] when `observed ≥ min_count` **and** `ratio ≥ ratio` **and**
//! `z ≥ z`: the ratio keeps large services from alarming on statistically significant but harmless
//! wobble, `z` keeps small services from alarming on noise, `min_count` guarantees a handful of
//! reports never triggers whatever the baseline says.
//!
//! ## Levels and states
//!
//! Reports give an *entry* level (the highest of `possible`/`detected` passed by any window) and a
//! *hold* level (the same with the lower `hold_*` thresholds). Probes give `any_failing` (some
//! active probe has failed for [`DetectorConfig::probe_fail_minutes`]) and `all_failing` (at least
//! [`DetectorConfig::all_probes_min`] active probes, all failing for
//! [`DetectorConfig::all_probes_fail_minutes`]). Combined:
//!
//! | reports \ probes | none failing       | some failing       | all failing        |
//! |------------------|--------------------|--------------------|--------------------|
//! | normal           | Ok                 | PossibleProblems   | ProblemsDetected   |
//! | possible         | PossibleProblems   | ProblemsDetected   | ProblemsDetected   |
//! | detected         | ProblemsDetected   | ProblemsDetected   | ProblemsDetected   |
//!
//! Hysteresis (minimum durations and separate enter/hold thresholds):
//! * up to `ProblemsDetected` when the entry level is `ProblemsDetected` *and* has been at least
//!   `PossibleProblems` for [`DetectorConfig::enter_detected_minutes`] consecutive minutes (this
//!   one included) — a signal must persist, but a sharply rising outage is not delayed a further
//!   minute once it already looked "possible";
//! * from `Ok` up to `PossibleProblems` after [`DetectorConfig::enter_possible_minutes`]
//!   consecutive minutes at that entry level;
//! * down to the *hold* level (computed with the lower `hold_*` thresholds) only after it has
//!   been below the state for [`DetectorConfig::exit_minutes`] consecutive minutes; the count
//!   restarts after every change, so ProblemsDetected → PossibleProblems → Ok takes two periods
//!   when the signal decays through "possible", one when it drops straight to normal.
//!
//! ## Incidents
//!
//! An incident opens when the state reaches `ProblemsDetected` and none is open. Every state change
//! while it is open is a timeline entry. It resolves automatically once the state has stayed `Ok`
//! for [`DetectorConfig::resolve_after_ok_minutes`]; its `end` is the minute the state returned to
//! `Ok`. Rising again before that continues the same incident. Admins annotate it and may resolve it
//! by hand.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::baseline::WindowSum;
use crate::tail::{TailRule, TailSignal};

/// The per-service state shown on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    PossibleProblems,
    ProblemsDetected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "no problems",
            State::PossibleProblems => "possible problems",
            State::ProblemsDetected => "problems detected",
        }
    }
}

/// A test one window must pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub ratio: f64,
    pub z: f64,
    pub min_count: u64,
}

impl Thresholds {
    pub fn passed_by(&self, s: &WindowSignal) -> bool {
        s.observed >= self.min_count && s.ratio >= self.ratio && s.z >= self.z
    }
}

/// Thresholds of one rolling window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRule {
    pub minutes: u32,
    /// Entry into PossibleProblems.
    pub possible: Thresholds,
    /// Entry into ProblemsDetected.
    pub detected: Thresholds,
    /// Staying in PossibleProblems (lower than `possible`).
    pub hold_possible: Thresholds,
    /// Staying in ProblemsDetected (lower than `detected`).
    pub hold_detected: Thresholds,
}

/// A one-sided Poisson CUSUM on 1-minute counts (Page's test for a rate multiplied by `shift`):
/// `S ← clamp(S + x·ln(shift) − (shift − 1)·μ, 0, cap)` for each minute with `x` counted reports
/// and `μ` expected. It accumulates evidence minute by minute, so a low-volume service whose
/// 5-minute window holds too few reports for a windowed test still rises within a few minutes,
/// while a normal surge below `shift·ln(shift)/(shift−1)`× the baseline (≈ 2.2× for 4) drifts it
/// back down. Reading the counts directly, it is exact for small Poisson counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CusumRule {
    /// Rate multiple the test is tuned to detect.
    pub shift: f64,
    /// `S` at or above this, with at least `min_count` reports at `min_ratio`× the expectation in
    /// the shortest window, is PossibleProblems.
    pub possible: f64,
    /// `S` at or above this is ProblemsDetected, under the same shortest-window condition (a
    /// handful never triggers, nor a big service's statistically significant wobble) and when
    /// the onset gate agrees. `None` (the default): the CUSUM only raises "possible", which starts
    /// the two-minute streak the windows' "detected" needs a minute earlier — in the evaluation a
    /// CUSUM "detected" added false alarms without adding recall.
    pub detected: Option<f64>,
    pub min_count: u64,
    pub min_ratio: f64,
    /// Upper clamp of `S`, so it falls back below the thresholds soon after an outage ends.
    pub cap: f64,
}

/// The onset test: a normal surge (more users in the evening, a news event) builds up over an
/// hour or more, an outage starts abruptly. The short windows' (and the CUSUM's) entry into
/// ProblemsDetected therefore also needs the last `short_minutes` to stand out against the level
/// of the `lookback_minutes` before them, not just against the seasonal baseline:
/// `jump = ratio(short) / local`, `local = (observed + prior) / (expected + prior)` over the
/// lookback (`prior` in expected reports keeps a quiet service's local level near 1).
/// Windows longer than `short_minutes` are not gated, so a slowly building real outage is still
/// caught by the 15-minute window; holding a state is never gated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OnsetRule {
    pub short_minutes: u32,
    pub lookback_minutes: u32,
    pub min_jump: f64,
    pub prior: f64,
}

/// All detector parameters. Defaults in brackets; see docs/MONITOR.md for how they were tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Rolling windows [5 and 15 minutes; thresholds in [`DetectorConfig::default`]].
    pub windows: Vec<WindowRule>,
    /// The 1-minute CUSUM combined with the windows (the higher level wins) [off; the tuned
    /// parameters are [`DEFAULT_CUSUM`]]; `None` judges by the windows only.
    pub cusum: Option<CusumRule>,
    /// The abrupt-onset gate on short windows [on; see [`DetectorConfig::default`]]; `None`
    /// judges short windows against the baseline only.
    pub onset: Option<OnsetRule>,
    /// The exact tail test on 1/2/3/5-minute windows, thresholds from a weekly false-alarm budget
    /// [on; see [`TailRule::default`]]; its "detected" is onset-gated like the short windows.
    /// `None` turns it off.
    pub tail: Option<TailRule>,
    /// Consecutive minutes at entry level ≥ PossibleProblems to leave Ok [2].
    pub enter_possible_minutes: u32,
    /// ProblemsDetected is entered when the entry level is ProblemsDetected after this many
    /// consecutive minutes at PossibleProblems or above, the current one included [2].
    pub enter_detected_minutes: u32,
    /// Consecutive minutes with the hold level below the state before falling to it [10].
    pub exit_minutes: u32,
    /// An incident resolves after the state has been Ok this long [30].
    pub resolve_after_ok_minutes: u32,
    /// A probe failing this long (minutes, first failure to now) counts as failing [3].
    pub probe_fail_minutes: u32,
    /// All probes failing this long → ProblemsDetected on probes alone [5].
    pub all_probes_fail_minutes: u32,
    /// "All probes failing" needs at least this many active probes [2], so one broken probe host
    /// cannot declare an outage on its own.
    pub all_probes_min: usize,
    /// A probe silent for longer than this is inactive (ignored) [10].
    pub probe_stale_minutes: u32,
    /// Probes tracked per service [64].
    pub max_probes: usize,
    /// Timeline entries kept per incident [500].
    pub max_timeline_entries: usize,
    /// Annotations per incident [100] and their length in bytes [2000].
    pub max_annotations: usize,
    pub max_annotation_bytes: usize,
    /// Resolved incidents kept in memory per service [100]; the server persists older ones.
    pub max_incidents_kept: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        let t = |ratio, z, min_count| Thresholds { ratio, z, min_count };
        DetectorConfig {
            windows: vec![
                WindowRule {
                    minutes: 5,
                    possible: t(2.0, 3.0, 6),
                    detected: t(3.0, 4.0, 8),
                    hold_possible: t(1.5, 2.0, 4),
                    hold_detected: t(2.0, 3.0, 6),
                },
                WindowRule {
                    minutes: 15,
                    possible: t(1.8, 3.5, 10),
                    detected: t(2.5, 5.0, 15),
                    hold_possible: t(1.4, 2.0, 6),
                    hold_detected: t(1.8, 3.0, 10),
                },
            ],
            // Off by default since the tail test: with it the CUSUM changed neither recall nor
            // false alarms in the evaluation, only added "possible problems" flicker.
            cusum: None,
            onset: Some(DEFAULT_ONSET),
            tail: Some(TailRule::default()),
            enter_possible_minutes: 2,
            enter_detected_minutes: 2,
            exit_minutes: 10,
            resolve_after_ok_minutes: 30,
            probe_fail_minutes: 3,
            all_probes_fail_minutes: 5,
            all_probes_min: 2,
            probe_stale_minutes: 10,
            max_probes: 64,
            max_timeline_entries: 500,
            max_annotations: 100,
            max_annotation_bytes: 2000,
            max_incidents_kept: 100,
        }
    }
}

/// The CUSUM parameters tuned on evaluation seeds 1–6 (shipped on until the tail test made
/// them redundant; set `cusum` to these to turn it back on).
pub const DEFAULT_CUSUM: CusumRule =
    CusumRule { shift: 3.0, possible: 4.0, detected: None, min_count: 8, min_ratio: 2.5, cap: 10.0 };

/// The shipped onset gate.
pub const DEFAULT_ONSET: OnsetRule = OnsetRule { short_minutes: 5, lookback_minutes: 30, min_jump: 2.0, prior: 5.0 };

impl DetectorConfig {
    /// Longest window, in minutes.
    pub fn longest_window(&self) -> u32 {
        let onset = self.onset.map_or(0, |o| o.short_minutes.saturating_add(o.lookback_minutes));
        let tail = self.tail.as_ref().map_or(0, TailRule::longest);
        self.windows.iter().map(|w| w.minutes).max().unwrap_or(1).max(onset).max(tail)
    }
}

/// One window's judgement for the current minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowSignal {
    pub minutes: u32,
    pub observed: u64,
    pub expected: f64,
    pub ratio: f64,
    pub z: f64,
}

impl WindowSignal {
    /// Judge a window sum with relative spread `spread` (see [`nb_deviance_z`]).
    pub fn from_sum(sum: WindowSum, spread: f64) -> WindowSignal {
        let ratio = if sum.expected > 0.0 { sum.observed as f64 / sum.expected } else { 0.0 };
        WindowSignal {
            minutes: sum.minutes,
            observed: sum.observed,
            expected: sum.expected,
            ratio,
            z: nb_deviance_z(sum.observed as f64, sum.expected, spread),
        }
    }
}

/// Signed root of the negative-binomial deviance of `x` against mean `mu`, variance `mu + s²mu²`
/// (Poisson when `s = 0`). Approximately standard normal under the null, right tail included.
pub fn nb_deviance_z(x: f64, mu: f64, s: f64) -> f64 {
    if mu <= 0.0 || !mu.is_finite() {
        return 0.0;
    }
    let xlx = if x > 0.0 { x * (x / mu).ln() } else { 0.0 };
    let dev = if s > 0.0 {
        let r = 1.0 / (s * s);
        2.0 * (xlx - (x + r) * ((x + r) / (mu + r)).ln())
    } else {
        2.0 * (xlx - (x - mu))
    };
    let root = dev.max(0.0).sqrt();
    if x >= mu {
        root
    } else {
        -root
    }
}

/// What the probes say this minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeLevel {
    pub active: usize,
    pub any_failing: bool,
    pub all_failing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ProbeRecord {
    last_seen: u64,
    failing_since: Option<u64>,
}

/// Longest accepted probe id, in bytes.
pub const MAX_PROBE_ID_BYTES: usize = 128;

/// Tracks probe outcomes (probe id → failure streak). Bounded by `max_probes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTracker {
    probes: HashMap<String, ProbeRecord>,
}

impl ProbeTracker {
    pub fn new() -> ProbeTracker {
        ProbeTracker::default()
    }

    /// Record one probe run finishing at `minute`. Returns false (ignored) for an empty or over-long
    /// probe id, or when the table is full and the probe is new even after dropping stale probes.
    pub fn record(&mut self, probe: &str, ok: bool, minute: u64, cfg: &DetectorConfig) -> bool {
        if probe.is_empty() || probe.len() > MAX_PROBE_ID_BYTES {
            return false;
        }
        if !self.probes.contains_key(probe) && self.probes.len() >= cfg.max_probes {
            let stale = u64::from(cfg.probe_stale_minutes);
            self.probes.retain(|_, p| minute.saturating_sub(p.last_seen) <= stale);
            if self.probes.len() >= cfg.max_probes {
                return false;
            }
        }
        let rec = self
            .probes
            .entry(probe.to_owned())
            .or_insert(ProbeRecord { last_seen: minute, failing_since: None });
        rec.last_seen = rec.last_seen.max(minute);
        if ok {
            rec.failing_since = None;
        } else if rec.failing_since.is_none() {
            rec.failing_since = Some(minute);
        }
        true
    }

    pub fn level(&self, minute: u64, cfg: &DetectorConfig) -> ProbeLevel {
        let stale = u64::from(cfg.probe_stale_minutes);
        let mut level = ProbeLevel { active: 0, any_failing: false, all_failing: true };
        for p in self.probes.values() {
            if minute.saturating_sub(p.last_seen) > stale {
                continue;
            }
            level.active += 1;
            let failing_for = p.failing_since.map_or(0, |s| minute.saturating_sub(s) + 1);
            if failing_for >= u64::from(cfg.probe_fail_minutes.max(1)) {
                level.any_failing = true;
            }
            if failing_for < u64::from(cfg.all_probes_fail_minutes.max(1)) {
                level.all_failing = false;
            }
        }
        if level.active < cfg.all_probes_min.max(1) {
            level.all_failing = false;
        }
        level
    }
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Reports,
    Probes,
    ReportsAndProbes,
    Recovered,
    AdminResolved,
}

/// A state change, as recorded in an incident's timeline and returned as an event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix minute of the evaluation that changed the state (the minute just finished).
    pub minute: u64,
    pub from: State,
    pub to: State,
    pub cause: Cause,
    /// Highest window ratio at that minute.
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub at_secs: u64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Auto,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotateError {
    #[error("annotation is empty")]
    Empty,
    #[error("annotation is too long")]
    TooLong,
    #[error("too many annotations on this incident")]
    TooMany,
    #[error("no such incident")]
    UnknownIncident,
}

/// One incident of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `"<service>@<start minute>"`: unique per service and stable across restarts.
    pub id: String,
    pub service: String,
    /// Unix minute the state reached ProblemsDetected.
    pub start_minute: u64,
    /// Unix minute the state returned to Ok for good (set on resolution).
    pub end_minute: Option<u64>,
    /// Unix minute the incident was resolved (end + `resolve_after_ok_minutes`, or an admin's time).
    pub resolved_minute: Option<u64>,
    pub resolution: Option<Resolution>,
    /// Highest window ratio while open.
    pub peak_ratio: f64,
    pub timeline: Vec<TimelineEntry>,
    /// Timeline entries dropped because of `max_timeline_entries`.
    pub timeline_dropped: u32,
    pub annotations: Vec<Annotation>,
    #[serde(skip)]
    max_annotations: usize,
    #[serde(skip)]
    max_annotation_bytes: usize,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.resolved_minute.is_none()
    }

    /// Add an admin note ("investigating", "fixed by restarting the database", …).
    pub fn annotate(&mut self, text: &str, at_secs: u64) -> Result<(), AnnotateError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(AnnotateError::Empty);
        }
        let max_bytes = if self.max_annotation_bytes == 0 { 2000 } else { self.max_annotation_bytes };
        if text.len() > max_bytes {
            return Err(AnnotateError::TooLong);
        }
        let max_n = if self.max_annotations == 0 { 100 } else { self.max_annotations };
        if self.annotations.len() >= max_n {
            return Err(AnnotateError::TooMany);
        }
        self.annotations.push(Annotation { at_secs, text: text.to_owned() });
        Ok(())
    }

    fn push_timeline(&mut self, entry: TimelineEntry, max: usize) {
        if self.timeline.len() < max.max(2) {
            self.timeline.push(entry);
        } else {
            // Keep the first entries and always the latest one.
            self.timeline_dropped += 1;
            if let Some(last) = self.timeline.last_mut() {
                *last = entry;
            }
        }
    }
}

/// What happened during one detector step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    StateChanged(TimelineEntry),
    IncidentOpened { id: String, minute: u64 },
    IncidentResolved { id: String, minute: u64, resolution: Resolution },
}

/// The per-service detector state machine. Pure: call [`Detector::step`] once per finished minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    cfg: DetectorConfig,
    service: String,
    state: State,
    pp_streak: u32,
    down_streak: u32,
    last_ok_minute: Option<u64>,
    last_ratio: f64,
    open: Option<Incident>,
    closed: VecDeque<Incident>,
    /// CUSUM statistic after the last [`Detector::observe_minute`] (absent in older saved state).
    #[serde(default)]
    cusum: f64,
    /// Onset jump handed over for the next step (None: not gated).
    #[serde(default)]
    jump: Option<f64>,
    /// Tail-test result handed over for the next step.
    #[serde(default, skip_serializing)]
    tail: Option<TailSignal>,
}

/// `gated_up_to`: windows up to this many minutes may not enter ProblemsDetected (the onset gate
/// said no); 0 gates nothing. `superseded`: window lengths whose "detected" entry the exact tail
/// test makes instead (one test per window, the exact one), so they enter "possible" at most.
fn reports_level(
    signals: &[WindowSignal],
    rules: &[WindowRule],
    hold: bool,
    gated_up_to: u32,
    superseded: &[u32],
) -> State {
    let mut level = State::Ok;
    for s in signals {
        let Some(rule) = rules.iter().find(|r| r.minutes == s.minutes) else { continue };
        let (pp, pd) = if hold { (&rule.hold_possible, &rule.hold_detected) } else { (&rule.possible, &rule.detected) };
        if pd.passed_by(s) {
            if hold || (s.minutes > gated_up_to && !superseded.contains(&s.minutes)) {
                return State::ProblemsDetected;
            }
            // Gated: as strong as "detected", but not an abrupt onset — still worth "possible".
            level = State::PossibleProblems;
        } else if pp.passed_by(s) {
            level = State::PossibleProblems;
        }
    }
    level
}

fn combine(reports: State, probes: ProbeLevel) -> State {
    if reports == State::ProblemsDetected
        || probes.all_failing
        || (reports == State::PossibleProblems && probes.any_failing)
    {
        State::ProblemsDetected
    } else if reports == State::PossibleProblems || probes.any_failing {
        State::PossibleProblems
    } else {
        State::Ok
    }
}

fn cause_of(reports: State, probes: ProbeLevel) -> Cause {
    let by_reports = reports > State::Ok;
    let by_probes = probes.any_failing || probes.all_failing;
    match (by_reports, by_probes) {
        (true, true) => Cause::ReportsAndProbes,
        (false, true) => Cause::Probes,
        _ => Cause::Reports,
    }
}

impl Detector {
    pub fn new(service: &str, cfg: DetectorConfig) -> Detector {
        Detector {
            cfg,
            service: service.to_owned(),
            state: State::Ok,
            pp_streak: 0,
            down_streak: 0,
            last_ok_minute: None,
            last_ratio: 0.0,
            open: None,
            closed: VecDeque::new(),
            cusum: 0.0,
            jump: None,
            tail: None,
        }
    }

    /// Hand over the onset measure for the next [`Detector::step`]: `lookback` is the window sum
    /// of the `lookback_minutes` that end just before the short window. Without it the step is
    /// not gated (so a detector driven by windows alone behaves as before).
    pub fn observe_onset(&mut self, short: &WindowSignal, lookback: WindowSum) {
        let Some(rule) = self.cfg.onset else { return };
        let prior = rule.prior.max(0.0);
        let local = (lookback.observed as f64 + prior) / (lookback.expected + prior).max(f64::MIN_POSITIVE);
        self.jump = Some(if local > 0.0 { short.ratio / local } else { f64::INFINITY });
    }

    /// Feed the CUSUM one finished minute (`observed` counted reports, `expected` by the
    /// baseline); call it before [`Detector::step`] for the same minute. Without it (or without a
    /// configured [`CusumRule`]) the detector judges by the windows alone.
    pub fn observe_minute(&mut self, observed: u64, expected: f64) {
        let Some(rule) = self.cfg.cusum else { return };
        if !(expected.is_finite() && expected > 0.0) || rule.shift <= 1.0 {
            return;
        }
        let step = observed as f64 * rule.shift.ln() - (rule.shift - 1.0) * expected;
        self.cusum = (self.cusum + step).clamp(0.0, rule.cap.max(0.0));
    }

    /// Hand over the short window sums for the next [`Detector::step`]'s tail test (see
    /// [`TailRule`]); `spread` is the baseline's relative spread and `phi` its per-minute
    /// overdispersion. Without it, or without a configured rule, the step does not use the test.
    pub fn observe_tail(&mut self, sums: &[WindowSum], spread: f64, phi: f64) {
        self.tail = self.cfg.tail.as_ref().map(|rule| rule.level(sums, spread, phi));
    }

    /// The CUSUM statistic (0 when not in use).
    pub fn cusum(&self) -> f64 {
        self.cusum
    }

    fn cusum_level(&self, signals: &[WindowSignal], onset_ok: bool) -> State {
        let Some(rule) = self.cfg.cusum else { return State::Ok };
        let shortest = signals.iter().min_by_key(|s| s.minutes);
        // Like the windows, the CUSUM needs a minimum of reports in the shortest window, so a
        // handful on a silent service (where μ is the floor) never triggers.
        let enough = shortest.is_some_and(|s| s.observed >= rule.min_count && s.ratio >= rule.min_ratio);
        if rule.detected.is_some_and(|h| self.cusum >= h) && onset_ok && enough {
            State::ProblemsDetected
        } else if self.cusum >= rule.possible && enough {
            State::PossibleProblems
        } else {
            State::Ok
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Replace the parameters; the state, streaks and incidents are kept.
    pub fn set_config(&mut self, cfg: DetectorConfig) {
        self.cfg = cfg;
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Highest qualifying window ratio of the last step.
    pub fn last_ratio(&self) -> f64 {
        self.last_ratio
    }

    pub fn open_incident(&self) -> Option<&Incident> {
        self.open.as_ref()
    }

    /// Resolved incidents still in memory, oldest first.
    pub fn resolved_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.closed.iter()
    }

    pub fn incident_mut(&mut self, id: &str) -> Option<&mut Incident> {
        if self.open.as_ref().is_some_and(|i| i.id == id) {
            return self.open.as_mut();
        }
        self.closed.iter_mut().find(|i| i.id == id)
    }

    /// Judge one finished minute. `signals` are this minute's window signals; when
    /// `reports_capped` (warm-up, admin quiet period) reports alone cannot go beyond
    /// PossibleProblems.
    pub fn step(&mut self, minute: u64, signals: &[WindowSignal], probes: ProbeLevel, reports_capped: bool) -> Vec<Event> {
        let mut events = Vec::new();
        let onset = self.cfg.onset.zip(self.jump.take());
        let onset_ok = onset.is_none_or(|(rule, jump)| jump >= rule.min_jump);
        let gated_up_to = if onset_ok { 0 } else { onset.map_or(0, |(rule, _)| rule.short_minutes) };
        let by_cusum = self.cusum_level(signals, onset_ok);
        let tail = self.tail.take();
        let by_tail = match tail.map(|t| t.level) {
            // Its windows are all short: an onset the gate refuses is at most "possible".
            Some(State::ProblemsDetected) if !onset_ok => State::PossibleProblems,
            Some(level) => level,
            None => State::Ok,
        };
        // A tail-test "detected" over several minutes that are not one burst is persistent
        // evidence already (the test reads all of its window), so it needs no further streak.
        let tail_persistent = by_tail == State::ProblemsDetected && tail.is_some_and(|t| t.persistent) && !reports_capped;
        // Only when the test ran this minute: a detector fed windows alone judges as before.
        let superseded = match (&self.cfg.tail, tail) {
            (Some(rule), Some(_)) => &rule.windows[..],
            _ => &[][..],
        };
        let mut rep_entry =
            reports_level(signals, &self.cfg.windows, false, gated_up_to, superseded).max(by_cusum).max(by_tail);
        let mut rep_hold = reports_level(signals, &self.cfg.windows, true, 0, &[]).max(rep_entry);
        if reports_capped {
            rep_entry = rep_entry.min(State::PossibleProblems);
            rep_hold = rep_hold.min(State::PossibleProblems);
        }
        let entry = combine(rep_entry, probes);
        let hold = combine(rep_hold, probes).max(entry);
        self.last_ratio = self.qualifying_ratio(signals);

        self.pp_streak = if entry >= State::PossibleProblems { self.pp_streak.saturating_add(1) } else { 0 };
        self.down_streak = if hold < self.state { self.down_streak.saturating_add(1) } else { 0 };

        // ProblemsDetected needs the entry level at ProblemsDetected now, after at least
        // `enter_detected_minutes` consecutive minutes at PossibleProblems or above.
        let pd_ready = entry == State::ProblemsDetected
            && (self.pp_streak >= self.cfg.enter_detected_minutes.max(1) || tail_persistent);
        let next = if self.state < State::ProblemsDetected && pd_ready {
            State::ProblemsDetected
        } else if self.state == State::Ok && self.pp_streak >= self.cfg.enter_possible_minutes.max(1) {
            State::PossibleProblems
        } else if self.state > State::Ok && self.down_streak >= self.cfg.exit_minutes.max(1) {
            // Down to what the signals still justify (ProblemsDetected may go straight to Ok).
            hold
        } else {
            self.state
        };

        if next != self.state {
            let cause = if next > self.state { cause_of(rep_entry, probes) } else { Cause::Recovered };
            let entry = TimelineEntry { minute, from: self.state, to: next, cause, ratio: self.last_ratio };
            self.state = next;
            self.down_streak = 0;
            if next == State::Ok {
                self.last_ok_minute = Some(minute);
            }
            if next == State::ProblemsDetected && self.open.is_none() {
                let id = format!("{}@{}", self.service, minute);
                self.open = Some(Incident {
                    id: id.clone(),
                    service: self.service.clone(),
                    start_minute: minute,
                    end_minute: None,
                    resolved_minute: None,
                    resolution: None,
                    peak_ratio: self.last_ratio,
                    timeline: Vec::new(),
                    timeline_dropped: 0,
                    annotations: Vec::new(),
                    max_annotations: self.cfg.max_annotations,
                    max_annotation_bytes: self.cfg.max_annotation_bytes,
                });
                events.push(Event::IncidentOpened { id, minute });
            }
            let max_tl = self.cfg.max_timeline_entries;
            if let Some(inc) = self.open.as_mut() {
                inc.push_timeline(entry, max_tl);
            }
            events.push(Event::StateChanged(entry));
        }

        if let Some(inc) = self.open.as_mut() {
            inc.peak_ratio = inc.peak_ratio.max(self.last_ratio);
            if self.state == State::Ok {
                let end = self.last_ok_minute.unwrap_or(minute);
                if minute >= end + u64::from(self.cfg.resolve_after_ok_minutes) {
                    events.push(self.close(end, minute, Resolution::Auto));
                }
            }
        }
        events
    }

    /// An admin resolves the open incident by hand: the state returns to Ok at once.
    pub fn admin_resolve(&mut self, minute: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if self.open.is_none() {
            return events;
        }
        if self.state != State::Ok {
            let entry = TimelineEntry { minute, from: self.state, to: State::Ok, cause: Cause::AdminResolved, ratio: self.last_ratio };
            let max_tl = self.cfg.max_timeline_entries;
            if let Some(inc) = self.open.as_mut() {
                inc.push_timeline(entry, max_tl);
            }
            self.state = State::Ok;
            events.push(Event::StateChanged(entry));
        }
        self.pp_streak = 0;
        self.down_streak = 0;
        events.push(self.close(minute, minute, Resolution::Admin));
        events
    }

    fn close(&mut self, end: u64, at: u64, resolution: Resolution) -> Event {
        let Some(mut inc) = self.open.take() else {
            return Event::IncidentResolved { id: String::new(), minute: at, resolution };
        };
        inc.end_minute = Some(end);
        inc.resolved_minute = Some(at);
        inc.resolution = Some(resolution);
        let ev = Event::IncidentResolved { id: inc.id.clone(), minute: at, resolution };
        self.closed.push_back(inc);
        while self.closed.len() > self.cfg.max_incidents_kept {
            self.closed.pop_front();
        }
        ev
    }

    /// Highest ratio among windows holding enough reports to mean something (at least the
    /// window's `hold_possible.min_count`), else 0.
    fn qualifying_ratio(&self, signals: &[WindowSignal]) -> f64 {
        signals
            .iter()
            .filter(|s| {
                self.cfg
                    .windows
                    .iter()
                    .find(|r| r.minutes == s.minutes)
                    .is_some_and(|r| s.observed >= r.hold_possible.min_count)
            })
            .map(|s| s.ratio)
            .fold(0.0, f64::max)
    }
}
