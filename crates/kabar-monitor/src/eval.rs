//! Reproducible evaluation of the detector on labelled synthetic report series.
//!
//! Each service's counted reports per minute are drawn as
//! `Poisson(base · day(t) · week(t) · growth(t) · dayNoise · hourNoise · surge(t) · outage(t) · G)`
//! where `day` is an Indonesia-like (WIB) daily curve (quiet 01–05, evening peak 19–22), `week`
//! lowers Friday–Sunday, `growth` is a slow per-week trend, `dayNoise`/`hourNoise` are log-normal
//! (the hourly one AR(1)), `G ~ Gamma(k, 1/k)` makes each minute negative-binomial, `surge` is a
//! labelled *normal* slow hump (1.4–2.0× over 2.5–9 hours) and `outage` multiplies by the labelled
//! magnitude (2, 3, 5, 10 or 100×) for 5–240 minutes (log-uniform), starting at any hour.
//! Events are at least 12 hours apart. The first `warmup_weeks` are simulated (with outages) but
//! not scored.
//!
//! Scoring: an outage is *detected* when the state enters ProblemsDetected between its start and
//! `grace_minutes` after its end; time-to-detect (TTD) is minutes from the outage start to the end
//! of the minute whose evaluation entered ProblemsDetected (1 = first possible). An incident
//! opened outside every outage's `[start, end + grace)` is a false alarm. Precision = incidents
//! matching an outage / all incidents.
//!
//! The RNG is xoshiro256** seeded by SplitMix64, so a seed fully determines the report.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::detector::{Event, State};
use crate::monitor::{MonitorConfig, ServiceMonitor};

/// xoshiro256** with SplitMix64 seeding: small, fast, reproducible.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform().ln()
    }

    /// Gamma(shape, scale 1) by Marsaglia–Tsang.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Poisson(lambda): multiplication method below 30, Hörmann's PTRS above.
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 || !lambda.is_finite() {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut k = 0u64;
            let mut p = self.uniform();
            while p > limit {
                k += 1;
                p *= self.uniform();
            }
            return k;
        }
        let slam = lambda.sqrt();
        let loglam = lambda.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let vr = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.uniform() - 0.5;
            let v = self.uniform();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
            if us >= 0.07 && v <= vr {
                return k as u64;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            if v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln() <= -lambda + k * loglam - ln_factorial(k) {
                return k as u64;
            }
        }
    }
}

fn ln_factorial(k: f64) -> f64 {
    if k < 20.0 {
        (2..=(k as u64)).map(|i| (i as f64).ln()).sum()
    } else {
        let n = k + 1.0;
        (n - 0.5) * n.ln() - n + 0.5 * std::f64::consts::TAU.ln() + 1.0 / (12.0 * n) - 1.0 / (360.0 * n.powi(3))
    }
}

/// Relative report level by local hour-of-day (WIB), mean ≈ 1: quiet after midnight, a small bump
/// at the dawn prayer, flat working day, evening peak 19–22.
const DAY_PROFILE: [f64; 24] = [
    0.55, 0.35, 0.22, 0.17, 0.20, 0.40, 0.65, 0.85, 0.95, 1.00, 1.00, 1.00, 0.95, 1.00, 0.95, 0.95, 1.00, 1.05,
    1.15, 1.45, 1.70, 1.75, 1.45, 0.95,
];
/// Monday..Sunday.
const WEEK_PROFILE: [f64; 7] = [1.0, 1.0, 1.0, 1.0, 0.97, 0.88, 0.92];

/// Monday 2025-01-06 00:00 WIB (UTC+7), in unix minutes.
pub const EVAL_START_MINUTE: u64 = 1_736_096_400 / 60;
const WEEK: u64 = 7 * 24 * 60;

/// One simulated service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    /// Mean counted reports per minute over a week (before growth).
    pub base_rate: f64,
    /// Gamma shape of the per-minute rate multiplier (smaller = more overdispersed).
    pub dispersion: f64,
    /// Compound growth per week (0.05 = +5 %/week): a slow, normal, rising trend.
    pub weekly_growth: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub seed: u64,
    pub weeks: u32,
    pub warmup_weeks: u32,
    pub services: Vec<ServiceSpec>,
    pub outages_per_week: f64,
    pub surges_per_week: f64,
    pub magnitudes: Vec<f64>,
    pub min_outage_minutes: u32,
    pub max_outage_minutes: u32,
    pub min_gap_minutes: u32,
    pub grace_minutes: u32,
    pub hour_noise_sigma: f64,
    pub day_noise_sigma: f64,
    pub monitor: MonitorConfig,
}

impl EvalConfig {
    /// The standard evaluation: 7 services from 0.5 to 50 reports/minute, 12 weeks, 3 warm-up.
    pub fn standard(seed: u64) -> EvalConfig {
        let s = |name: &str, base_rate, dispersion, weekly_growth| ServiceSpec {
            name: name.to_owned(),
            base_rate,
            dispersion,
            weekly_growth,
        };
        EvalConfig {
            seed,
            weeks: 12,
            warmup_weeks: 3,
            services: vec![
                s("rate-0.5", 0.5, 20.0, 0.0),
                s("rate-1", 1.0, 20.0, 0.05),
                s("rate-2", 2.0, 15.0, 0.0),
                s("rate-5", 5.0, 15.0, 0.08),
                s("rate-10", 10.0, 10.0, 0.0),
                s("rate-20", 20.0, 10.0, 0.10),
                s("rate-50", 50.0, 8.0, 0.03),
            ],
            outages_per_week: 4.0,
            surges_per_week: 1.0,
            magnitudes: vec![2.0, 3.0, 5.0, 10.0, 100.0],
            min_outage_minutes: 5,
            max_outage_minutes: 240,
            min_gap_minutes: 12 * 60,
            grace_minutes: 15,
            hour_noise_sigma: 0.10,
            day_noise_sigma: 0.08,
            monitor: MonitorConfig::default(),
        }
    }

    /// A small, fast configuration for tests of determinism.
    pub fn small(seed: u64) -> EvalConfig {
        let mut c = EvalConfig::standard(seed);
        c.weeks = 5;
        c.warmup_weeks = 3;
        c.services.retain(|s| s.base_rate == 2.0 || s.base_rate == 20.0);
        c
    }
}

/// A labelled injected outage (minutes relative to the series start, end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub start: u64,
    pub end: u64,
    pub magnitude: f64,
}

/// A labelled normal surge (slow hump).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Surge {
    pub start: u64,
    pub up: u64,
    pub plateau: u64,
    pub down: u64,
    pub peak: f64,
}

impl Surge {
    fn end(&self) -> u64 {
        self.start + self.up + self.plateau + self.down
    }

    fn factor(&self, t: u64) -> f64 {
        if t < self.start || t >= self.end() {
            return 1.0;
        }
        let x = t - self.start;
        let shape = if x < self.up {
            0.5 - 0.5 * (std::f64::consts::PI * x as f64 / self.up as f64).cos()
        } else if x < self.up + self.plateau {
            1.0
        } else {
            let y = (x - self.up - self.plateau) as f64 / self.down as f64;
            0.5 + 0.5 * (std::f64::consts::PI * y).cos()
        };
        1.0 + (self.peak - 1.0) * shape
    }
}

/// Detection figures for a group of outages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectionStats {
    pub outages: usize,
    /// Entered ProblemsDetected.
    pub detected: usize,
    /// Entered ProblemsDetected at most 5 minutes after the start.
    pub detected_within_5: usize,
    /// Entered PossibleProblems or ProblemsDetected.
    pub alerted: usize,
    pub ttd_median: Option<f64>,
    pub ttd_p90: Option<f64>,
    #[serde(skip)]
    ttds: Vec<u64>,
}

impl DetectionStats {
    pub fn recall(&self) -> f64 {
        ratio(self.detected, self.outages)
    }

    pub fn recall_within_5(&self) -> f64 {
        ratio(self.detected_within_5, self.outages)
    }

    fn add(&mut self, ttd: Option<u64>, alerted: bool) {
        self.outages += 1;
        if alerted {
            self.alerted += 1;
        }
        if let Some(t) = ttd {
            self.detected += 1;
            if t <= 5 {
                self.detected_within_5 += 1;
            }
            self.ttds.push(t);
        }
    }

    fn merge(&mut self, other: &DetectionStats) {
        self.outages += other.outages;
        self.detected += other.detected;
        self.detected_within_5 += other.detected_within_5;
        self.alerted += other.alerted;
        self.ttds.extend_from_slice(&other.ttds);
        self.finish();
    }

    fn finish(&mut self) {
        self.ttds.sort_unstable();
        self.ttd_median = percentile(&self.ttds, 0.5);
        self.ttd_p90 = percentile(&self.ttds, 0.9);
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceResult {
    pub name: String,
    pub base_rate: f64,
    pub detection: DetectionStats,
    pub detection_5x: DetectionStats,
    pub incidents: usize,
    pub false_alarms: usize,
    pub false_possible: usize,
}

/// Everything the evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Seeds aggregated into this report (one for a single run).
    pub seeds: Vec<u64>,
    pub weeks: u32,
    pub warmup_weeks: u32,
    pub service_weeks: f64,
    pub overall: DetectionStats,
    pub by_magnitude: Vec<(f64, DetectionStats)>,
    pub by_service: Vec<ServiceResult>,
    pub surges: usize,
    pub incidents: usize,
    pub true_incidents: usize,
    pub false_alarms: usize,
    /// False alarms that fell inside a labelled normal surge.
    pub false_alarms_in_surges: usize,
    /// Ok → PossibleProblems entries outside every outage.
    pub false_possible: usize,
    /// 5× outages not detected within 5 minutes, for studying what the detector misses.
    #[serde(default)]
    pub missed_5x: Vec<MissedOutage>,
}

/// A 5× outage the detector did not catch within 5 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissedOutage {
    pub seed: u64,
    pub service: String,
    /// Local (WIB) hour of day at the outage start.
    pub local_hour: u32,
    pub minutes: u64,
    /// Normal (pre-outage) rate at the start, reports/minute, without noise.
    pub normal_rate: f64,
    /// Time to detect, if detected later.
    pub ttd: Option<u64>,
}

impl EvalReport {
    pub fn precision(&self) -> f64 {
        ratio(self.true_incidents, self.incidents)
    }

    pub fn false_alarms_per_service_week(&self) -> f64 {
        if self.service_weeks > 0.0 {
            self.false_alarms as f64 / self.service_weeks
        } else {
            0.0
        }
    }

    /// Add another run (same configuration, another seed) into this report.
    pub fn merge(&mut self, other: &EvalReport) {
        self.seeds.extend_from_slice(&other.seeds);
        self.service_weeks += other.service_weeks;
        self.overall.merge(&other.overall);
        for (m, s) in &other.by_magnitude {
            match self.by_magnitude.iter_mut().find(|(k, _)| k == m) {
                Some((_, mine)) => mine.merge(s),
                None => self.by_magnitude.push((*m, s.clone())),
            }
        }
        for o in &other.by_service {
            match self.by_service.iter_mut().find(|s| s.name == o.name) {
                Some(mine) => {
                    mine.detection.merge(&o.detection);
                    mine.detection_5x.merge(&o.detection_5x);
                    mine.incidents += o.incidents;
                    mine.false_alarms += o.false_alarms;
                    mine.false_possible += o.false_possible;
                }
                None => self.by_service.push(o.clone()),
            }
        }
        self.surges += other.surges;
        self.incidents += other.incidents;
        self.true_incidents += other.true_incidents;
        self.false_alarms += other.false_alarms;
        self.false_alarms_in_surges += other.false_alarms_in_surges;
        self.false_possible += other.false_possible;
        self.missed_5x.extend_from_slice(&other.missed_5x);
    }

    /// Highest false-alarm rate of any single service, per week.
    pub fn worst_service_false_alarms_per_week(&self) -> f64 {
        let weeks = f64::from(self.weeks - self.warmup_weeks) * self.seeds.len() as f64;
        if weeks <= 0.0 {
            return 0.0;
        }
        self.by_service.iter().map(|s| s.false_alarms as f64 / weeks).fold(0.0, f64::max)
    }

    /// 5× recall within 5 minutes over services with at least `min_rate` reports/minute.
    pub fn recall_5x_within_5_for_rates_at_least(&self, min_rate: f64) -> f64 {
        let (mut n, mut d) = (0, 0);
        for s in self.by_service.iter().filter(|s| s.base_rate >= min_rate) {
            n += s.detection_5x.outages;
            d += s.detection_5x.detected_within_5;
        }
        ratio(d, n)
    }

    pub fn magnitude(&self, m: f64) -> Option<&DetectionStats> {
        self.by_magnitude.iter().find(|(k, _)| *k == m).map(|(_, s)| s)
    }

    /// The goal: 5× outages detected within 5 minutes with recall ≥ 0.9, and ≤ 1 false alarm per
    /// service per week — on average *and* for every single service.
    pub fn meets_goal(&self) -> bool {
        self.magnitude(5.0).is_some_and(|s| s.recall_within_5() >= 0.9)
            && self.false_alarms_per_service_week() <= 1.0
            && self.worst_service_false_alarms_per_week() <= 1.0
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kabar monitor evaluation: {} {}, {} weeks each ({} warm-up, not scored), {} services, {:.0} scored service-weeks",
            if self.seeds.len() == 1 { "seed" } else { "seeds" },
            self.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            self.weeks,
            self.warmup_weeks,
            self.by_service.len(),
            self.service_weeks
        )?;
        writeln!(f)?;
        writeln!(f, "magnitude  outages  recall  recall@5min  any-alert  TTD median  TTD p90  (minutes)")?;
        let row = |f: &mut fmt::Formatter<'_>, label: &str, s: &DetectionStats| {
            writeln!(
                f,
                "{:<9}  {:>7}  {:>6.3}  {:>11.3}  {:>9.3}  {:>10}  {:>7}",
                label,
                s.outages,
                s.recall(),
                s.recall_within_5(),
                ratio(s.alerted, s.outages),
                fmt_opt(s.ttd_median),
                fmt_opt(s.ttd_p90)
            )
        };
        for (m, s) in &self.by_magnitude {
            row(f, &format!("{m}x"), s)?;
        }
        row(f, "all", &self.overall)?;
        writeln!(f)?;
        writeln!(f, "service     rate/min  outages  recall  5x: n  recall@5min  TTD med  incidents  false alarms  FA/week  possible-only FP")?;
        let per_service_weeks = f64::from(self.weeks - self.warmup_weeks) * self.seeds.len() as f64;
        for s in &self.by_service {
            writeln!(
                f,
                "{:<10}  {:>8}  {:>7}  {:>6.3}  {:>5}  {:>11.3}  {:>7}  {:>9}  {:>12}  {:>7.2}  {:>16}",
                s.name,
                s.base_rate,
                s.detection.outages,
                s.detection.recall(),
                s.detection_5x.outages,
                s.detection_5x.recall_within_5(),
                fmt_opt(s.detection_5x.ttd_median),
                s.incidents,
                s.false_alarms,
                s.false_alarms as f64 / per_service_weeks,
                s.false_possible
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "incidents {}  true {}  false alarms {} ({} inside normal surges, {} surges simulated)",
            self.incidents, self.true_incidents, self.false_alarms, self.false_alarms_in_surges, self.surges
        )?;
        writeln!(
            f,
            "precision {:.3}  false alarms per service-week {:.3}  possible-problems false entries per service-week {:.3}",
            self.precision(),
            self.false_alarms_per_service_week(),
            self.false_possible as f64 / self.service_weeks.max(1.0)
        )?;
        writeln!(
            f,
            "worst single service: {:.3} false alarms per week; 5x recall@5min for services >= 2/min: {:.3}, >= 5/min: {:.3}",
            self.worst_service_false_alarms_per_week(),
            self.recall_5x_within_5_for_rates_at_least(2.0),
            self.recall_5x_within_5_for_rates_at_least(5.0)
        )?;
        let five = self.magnitude(5.0);
        writeln!(
            f,
            "goal (5x: recall@5min >= 0.9; <= 1 false alarm per service-week, every service): {} (5x recall@5min {:.3}, FA/service-week {:.3}, worst service {:.3})",
            if self.meets_goal() { "MET" } else { "NOT MET" },
            five.map_or(0.0, DetectionStats::recall_within_5),
            self.false_alarms_per_service_week(),
            self.worst_service_false_alarms_per_week()
        )
    }
}

pub(crate) struct Schedule {
    pub(crate) outages: Vec<Outage>,
    pub(crate) surges: Vec<Surge>,
}

fn schedule(cfg: &EvalConfig, rng: &mut Rng, total: u64) -> Schedule {
    let mut outages = Vec::new();
    let mut surges = Vec::new();
    let events_per_week = cfg.outages_per_week + cfg.surges_per_week;
    if events_per_week <= 0.0 {
        return Schedule { outages, surges };
    }
    let p_outage = cfg.outages_per_week / events_per_week;
    let min_gap = u64::from(cfg.min_gap_minutes);
    let mean_extra = (WEEK as f64 / events_per_week - min_gap as f64 - 60.0).max(60.0);
    let mut deck: Vec<f64> = Vec::new();
    let mut t: u64 = 24 * 60;
    loop {
        t += min_gap + rng.exponential(mean_extra) as u64;
        if t + 24 * 60 >= total {
            break;
        }
        if rng.uniform() < p_outage && !cfg.magnitudes.is_empty() {
            if deck.is_empty() {
                deck = cfg.magnitudes.clone();
                // Fisher–Yates, so every magnitude appears equally often.
                for i in (1..deck.len()).rev() {
                    let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                    deck.swap(i, j);
                }
            }
            let magnitude = deck.pop().unwrap_or(5.0);
            let (lo, hi) = (f64::from(cfg.min_outage_minutes.max(1)), f64::from(cfg.max_outage_minutes.max(1)));
            let len = rng.range(lo.ln(), hi.ln()).exp().round().max(1.0) as u64;
            outages.push(Outage { start: t, end: t + len, magnitude });
            t += len;
        } else {
            let s = Surge {
                start: t,
                up: rng.range(60.0, 180.0) as u64,
                plateau: rng.range(30.0, 180.0) as u64,
                down: rng.range(60.0, 180.0) as u64,
                peak: rng.range(1.4, 2.0),
            };
            t = s.end();
            surges.push(s);
        }
    }
    Schedule { outages, surges }
}

/// Rate multiplier of the daily and weekly cycle at relative minute `t` (t = 0 is Monday 00:00
/// local), linearly interpolated between hour centres.
fn cycle(t: u64) -> f64 {
    let minute_of_day = (t % 1440) as f64 + 0.5;
    let h = minute_of_day / 60.0 - 0.5;
    let h0 = h.floor();
    let w = h - h0;
    let i0 = (h0 as i64).rem_euclid(24) as usize;
    let i1 = (i0 + 1) % 24;
    let day = (1.0 - w) * DAY_PROFILE[i0] + w * DAY_PROFILE[i1];
    let weekday = ((t / 1440) % 7) as usize;
    day * WEEK_PROFILE[weekday]
}

struct Recorded {
    /// Minutes (relative) at which the state entered ProblemsDetected.
    pd_entries: Vec<u64>,
    /// Minutes at which the state left Ok.
    alert_entries: Vec<u64>,
    /// Minutes at which an incident opened.
    incidents: Vec<u64>,
    /// Ok → PossibleProblems entries.
    pp_entries: Vec<u64>,
    /// State at each outage start (index-aligned with the outages).
    state_at_start: Vec<State>,
}

/// One generated minute of a service's series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesMinute {
    /// Rate without the outage and without the per-minute Gamma factor: the exact "normal" an
    /// oracle with a perfect baseline would know (cycle, growth, day and hour noise, surge).
    pub normal: f64,
    /// Index of the outage starting this minute, if one does.
    pub outage_start: Option<usize>,
    pub count: u64,
}

/// The minute-by-minute generator of one service's series. The RNG draws happen in a fixed
/// order (day noise, hour noise, Gamma, Poisson), so a seed gives the same series to the
/// evaluation and to the oracle bound ([`crate::oracle`]).
pub(crate) struct Series<'a> {
    spec: &'a ServiceSpec,
    sched: &'a Schedule,
    rng: Rng,
    hs: f64,
    ds: f64,
    hour_x: f64,
    day_factor: f64,
    hour_factor: f64,
    next_outage: usize,
    next_surge: usize,
}

impl<'a> Series<'a> {
    pub(crate) fn new(cfg: &EvalConfig, spec: &'a ServiceSpec, sched: &'a Schedule, rng: Rng) -> Series<'a> {
        Series {
            spec,
            sched,
            rng,
            hs: cfg.hour_noise_sigma,
            ds: cfg.day_noise_sigma,
            hour_x: 0.0,
            day_factor: 1.0,
            hour_factor: 1.0,
            next_outage: 0,
            next_surge: 0,
        }
    }

    /// Minute `t`; call with t = 0, 1, 2, … in order.
    pub(crate) fn minute(&mut self, t: u64) -> SeriesMinute {
        const RHO: f64 = 0.7;
        let (hs, ds) = (self.hs, self.ds);
        if t.is_multiple_of(1440) {
            self.day_factor = (ds * self.rng.normal() - ds * ds / 2.0).exp();
        }
        if t.is_multiple_of(60) {
            self.hour_x = RHO * self.hour_x + (1.0 - RHO * RHO).sqrt() * hs * self.rng.normal();
            self.hour_factor = (self.hour_x - hs * hs / 2.0).exp();
        }
        let sched = self.sched;
        while self.next_outage < sched.outages.len() && sched.outages[self.next_outage].end <= t {
            self.next_outage += 1;
        }
        while self.next_surge < sched.surges.len() && sched.surges[self.next_surge].end() <= t {
            self.next_surge += 1;
        }
        let spec = self.spec;
        let mut normal = spec.base_rate
            * cycle(t)
            * (1.0 + spec.weekly_growth).powf(t as f64 / WEEK as f64)
            * self.day_factor
            * self.hour_factor;
        if let Some(s) = sched.surges.get(self.next_surge) {
            normal *= s.factor(t);
        }
        let (mut outage, mut outage_start) = (1.0, None);
        if let Some(o) = sched.outages.get(self.next_outage) {
            if t == o.start {
                outage_start = Some(self.next_outage);
            }
            if t >= o.start && t < o.end {
                outage = o.magnitude;
            }
        }
        let mut lambda = normal * outage;
        if spec.dispersion > 0.0 {
            lambda *= self.rng.gamma(spec.dispersion) / spec.dispersion;
        }
        SeriesMinute { normal, outage_start, count: self.rng.poisson(lambda) }
    }
}

/// The schedule and the noise RNG of service `idx` for `cfg.seed`.
pub(crate) fn service_streams(cfg: &EvalConfig, idx: usize, total: u64) -> (Schedule, Rng) {
    let stream = cfg.seed ^ (idx as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
    let mut sched_rng = Rng::new(stream);
    let noise_rng = Rng::new(stream.rotate_left(32) ^ 0xE703_7ED1_A0B4_28DB);
    (schedule(cfg, &mut sched_rng, total), noise_rng)
}

fn simulate(cfg: &EvalConfig, spec: &ServiceSpec, sched: &Schedule, rng: Rng, total: u64) -> Recorded {
    let start = EVAL_START_MINUTE;
    let mut mon = ServiceMonitor::new(&spec.name, cfg.monitor.clone(), start * 60);
    let mut rec = Recorded {
        pd_entries: Vec::new(),
        alert_entries: Vec::new(),
        incidents: Vec::new(),
        pp_entries: Vec::new(),
        state_at_start: vec![State::Ok; sched.outages.len()],
    };
    let mut series = Series::new(cfg, spec, sched, rng);
    for t in 0..total {
        // The state before this minute is judged: what the outage found when it started.
        let state_before = mon.state();
        let SeriesMinute { outage_start, count, .. } = series.minute(t);
        if let Some(i) = outage_start {
            rec.state_at_start[i] = state_before;
        }
        let minute = start + t;
        mon.record_counted(minute * 60, count);
        for ev in mon.advance((minute + 1) * 60) {
            match ev {
                Event::StateChanged(e) => {
                    let rel = e.minute - start;
                    if e.to == State::ProblemsDetected {
                        rec.pd_entries.push(rel);
                    }
                    if e.from == State::Ok && e.to > State::Ok {
                        rec.alert_entries.push(rel);
                    }
                    if e.from == State::Ok && e.to == State::PossibleProblems {
                        rec.pp_entries.push(rel);
                    }
                }
                Event::IncidentOpened { minute, .. } => rec.incidents.push(minute - start),
                Event::IncidentResolved { .. } => {}
            }
        }
    }
    rec
}

/// Run the standard evaluation for `seed`.
pub fn run_evaluation(seed: u64) -> EvalReport {
    run_evaluation_with(&EvalConfig::standard(seed))
}

/// Run `cfg` once per seed (the configuration's own seed is ignored) and aggregate.
pub fn run_evaluation_seeds(cfg: &EvalConfig, seeds: &[u64]) -> Option<EvalReport> {
    let mut out: Option<EvalReport> = None;
    for &seed in seeds {
        let mut c = cfg.clone();
        c.seed = seed;
        let rep = run_evaluation_with(&c);
        match out.as_mut() {
            Some(agg) => agg.merge(&rep),
            None => out = Some(rep),
        }
    }
    out
}

/// Run an evaluation with a custom configuration.
pub fn run_evaluation_with(cfg: &EvalConfig) -> EvalReport {
    let total = u64::from(cfg.weeks) * WEEK;
    let scored_from = u64::from(cfg.warmup_weeks.min(cfg.weeks)) * WEEK;
    let grace = u64::from(cfg.grace_minutes);
    let mut mags: Vec<f64> = cfg.magnitudes.clone();
    mags.sort_by(f64::total_cmp);
    mags.dedup();
    let mut report = EvalReport {
        seeds: vec![cfg.seed],
        weeks: cfg.weeks,
        warmup_weeks: cfg.warmup_weeks.min(cfg.weeks),
        service_weeks: cfg.services.len() as f64 * f64::from(cfg.weeks - cfg.warmup_weeks.min(cfg.weeks)),
        overall: DetectionStats::default(),
        by_magnitude: mags.iter().map(|m| (*m, DetectionStats::default())).collect(),
        by_service: Vec::new(),
        surges: 0,
        incidents: 0,
        true_incidents: 0,
        false_alarms: 0,
        false_alarms_in_surges: 0,
        false_possible: 0,
        missed_5x: Vec::new(),
    };

    for (idx, spec) in cfg.services.iter().enumerate() {
        let (sched, noise_rng) = service_streams(cfg, idx, total);
        let rec = simulate(cfg, spec, &sched, noise_rng, total);

        let mut svc = ServiceResult {
            name: spec.name.clone(),
            base_rate: spec.base_rate,
            detection: DetectionStats::default(),
            detection_5x: DetectionStats::default(),
            incidents: 0,
            false_alarms: 0,
            false_possible: 0,
        };
        for (i, o) in sched.outages.iter().enumerate() {
            if o.start < scored_from || o.end + grace > total {
                continue;
            }
            let window = |m: &u64| *m >= o.start && *m < o.end + grace;
            let ttd = if rec.state_at_start[i] == State::ProblemsDetected {
                Some(0)
            } else {
                rec.pd_entries.iter().find(|m| window(m)).map(|m| m + 1 - o.start)
            };
            let alerted = rec.state_at_start[i] > State::Ok || rec.alert_entries.iter().any(window);
            svc.detection.add(ttd, alerted);
            report.overall.add(ttd, alerted);
            if let Some((_, s)) = report.by_magnitude.iter_mut().find(|(m, _)| *m == o.magnitude) {
                s.add(ttd, alerted);
            }
            if o.magnitude == 5.0 {
                svc.detection_5x.add(ttd, alerted);
                if ttd.is_none_or(|t| t > 5) {
                    report.missed_5x.push(MissedOutage {
                        seed: cfg.seed,
                        service: spec.name.clone(),
                        local_hour: ((o.start % 1440) / 60) as u32,
                        minutes: o.end - o.start,
                        normal_rate: spec.base_rate
                            * cycle(o.start)
                            * (1.0 + spec.weekly_growth).powf(o.start as f64 / WEEK as f64),
                        ttd,
                    });
                }
            }
        }
        let in_outage = |m: u64| sched.outages.iter().any(|o| m >= o.start && m < o.end + grace);
        let in_surge = |m: u64| sched.surges.iter().any(|s| m >= s.start && m < s.end() + grace);
        for &m in rec.incidents.iter().filter(|m| **m >= scored_from) {
            svc.incidents += 1;
            if !in_outage(m) {
                svc.false_alarms += 1;
                if in_surge(m) {
                    report.false_alarms_in_surges += 1;
                }
            }
        }
        svc.false_possible = rec.pp_entries.iter().filter(|m| **m >= scored_from && !in_outage(**m)).count();
        report.surges += sched.surges.iter().filter(|s| s.start >= scored_from).count();
        report.incidents += svc.incidents;
        report.true_incidents += svc.incidents - svc.false_alarms;
        report.false_alarms += svc.false_alarms;
        report.false_possible += svc.false_possible;
        svc.detection.finish();
        svc.detection_5x.finish();
        report.by_service.push(svc);
    }
    report.overall.finish();
    for (_, s) in &mut report.by_magnitude {
        s.finish();
    }
    report
}
