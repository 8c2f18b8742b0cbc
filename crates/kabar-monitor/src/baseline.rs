//! Minute buckets and the seasonal baseline: "how many counted reports per minute are normal for
//! this service at this time of the week?"
//!
//! ## Model
//!
//! `expected(t) = max(S(t) · g, floor)` reports per minute, where
//!
//! * **S(t), the seasonal level**, comes from one *hourly observation* per hour: the mean count of
//!   that hour's *clean* minutes (minutes outside an open incident; at least
//!   [`BaselineConfig::min_clean_minutes`] of them, else the hour is not learned). Each observation
//!   is pushed into three rings and S is read from the first that has enough data:
//!   1. **Weekly**: per hour-of-week slot (168 slots, Monday 00:00 local = slot 0), the last
//!      [`BaselineConfig::weeks_kept`] weeks; level = **median** once the slot has
//!      [`BaselineConfig::min_weeks`] weeks. The median of recent weeks is the robust choice: one
//!      polluted week among three or more cannot move it.
//!   2. **Daily** (cold start): per hour-of-day, the last [`BaselineConfig::days_kept`] days;
//!      median once [`BaselineConfig::min_days`] days exist.
//!   3. **Recent** (colder start): a service-wide upper quantile
//!      ([`BaselineConfig::recent_quantile`], 0.9) of the last [`BaselineConfig::recent_hours_kept`]
//!      hourly observations. Deliberately not the median: with a strong daily cycle the median of
//!      the first hours is the night level, every morning ramp then looks like an outage, and the
//!      resulting incidents keep those very hours from ever being learned.
//!   4. Nothing learned yet: only the floor.
//!
//!   S is linearly interpolated between the centres of adjacent hours, so an evening ramp does not
//!   make a step every hour.
//! * **g, the level factor**, is a slowly adapting multiplicative correction for trends (a growing
//!   user base, a busy week): an exponentially weighted ratio Σ observed / Σ S over clean hours with
//!   time constant [`BaselineConfig::level_factor_tau_hours`] (three days), shrunk toward 1 by a prior
//!   of [`BaselineConfig::level_factor_prior_mass`] reports and clamped to
//!   [[`BaselineConfig::level_factor_min`], [`BaselineConfig::level_factor_max`]].
//! * **floor** keeps a handful of reports from ever looking like a large ratio:
//!   [`BaselineConfig::floor_per_minute`] once S is seasonal (weekly/daily), and the higher
//!   [`BaselineConfig::cold_floor_per_minute`] while the service is cold (recent median or nothing).
//!
//! ## Keeping outages out ("outages do not become normal")
//!
//! * Minutes inside an open incident are **excluded**; when an incident opens, the monitor marks
//!   the preceding minutes (its detection lookback) unclean too. Hours are committed
//!   [`BaselineConfig::commit_delay_minutes`] after they end so that retroactive marking still
//!   reaches them.
//! * What is left is **clipped**: an hourly observation is capped at
//!   [`BaselineConfig::clip_multiple`] × the expectation that was in force for it (only once the
//!   expectation is seasonal; during cold start clipping would stop the baseline from ever learning
//!   a service that is simply busier than the floor). This bounds an undetected anomaly's effect.
//! * The weekly/daily levels are medians, so a week in which an anomaly slipped through is outvoted.
//!
//! ## Spread
//!
//! Per ring, a MAD-based relative spread: `sqrt(max(0, (1.4826·MAD)² − level/60)) / level`, i.e.
//! the week-to-week variation of the hourly level *beyond* the Poisson noise of a 60-minute mean.
//! With few observations this is noisy, so the slot spread is averaged half-and-half with the
//! service-wide median of slot spreads, then clamped to [`BaselineConfig::spread_min`],
//! [`BaselineConfig::spread_max`]; cold sources use [`BaselineConfig::cold_spread`]. The detector
//! uses it as the negative-binomial overdispersion of a window count.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Hour-of-week slots.
pub const SLOTS_PER_WEEK: usize = 168;

/// Local hour index (hours since the epoch, in local time).
pub fn local_hour(minute: u64, utc_offset_minutes: i32) -> i64 {
    (minute as i64 + i64::from(utc_offset_minutes)).div_euclid(60)
}

/// Hour-of-week slot of a local hour index: Monday 00:00–00:59 local is 0, Sunday 23:00 is 167.
/// (1970-01-01 was a Thursday, 72 hours after a Monday 00:00.)
pub fn slot_of_hour(local_hour: i64) -> usize {
    (local_hour + 72).rem_euclid(SLOTS_PER_WEEK as i64) as usize
}

/// Hour-of-week slot of a unix minute.
pub fn hour_of_week(minute: u64, utc_offset_minutes: i32) -> usize {
    slot_of_hour(local_hour(minute, utc_offset_minutes))
}

/// Baseline parameters. Defaults in brackets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BaselineConfig {
    /// Fixed offset of the service's local time from UTC, in minutes [420 = WIB, UTC+7; Indonesia
    /// has no daylight saving time].
    pub utc_offset_minutes: i32,
    /// Weekly observations kept per hour-of-week slot [6].
    pub weeks_kept: usize,
    /// Weekly observations a slot needs before its median is used [3].
    pub min_weeks: usize,
    /// Daily observations kept per hour-of-day (cold start) [7].
    pub days_kept: usize,
    /// Daily observations an hour-of-day needs before its median is used [3].
    pub min_days: usize,
    /// Hourly observations kept for the service-wide recent median [24].
    pub recent_hours_kept: usize,
    /// Hourly observations needed before the recent level is used [1].
    pub min_recent_hours: usize,
    /// The recent (cold-start) level is this quantile of the recent hourly observations [0.9].
    /// Not the median: during the first day the median sits at the night level and every morning
    /// ramp and evening peak would look like an outage.
    pub recent_quantile: f64,
    /// Clean minutes an hour needs to be learned at all [30].
    pub min_clean_minutes: u32,
    /// An hourly observation is capped at this multiple of its expectation [3.0; 0 disables].
    pub clip_multiple: f64,
    /// Floor of the expectation once seasonal, reports/minute [0.05].
    pub floor_per_minute: f64,
    /// Floor of the expectation while cold, reports/minute [0.5].
    pub cold_floor_per_minute: f64,
    /// Time constant of the level factor g, hours [72].
    pub level_factor_tau_hours: f64,
    /// Prior mass (in expected reports) pulling g toward 1 [30].
    pub level_factor_prior_mass: f64,
    /// Clamp of g [0.5, 3.0].
    pub level_factor_min: f64,
    pub level_factor_max: f64,
    /// Clamp of the relative spread [0.10, 1.0].
    pub spread_min: f64,
    pub spread_max: f64,
    /// Relative spread while cold [0.30].
    pub cold_spread: f64,
    /// An hour is learned this many minutes after it ends [30]; must cover the incident lookback.
    pub commit_delay_minutes: u32,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            utc_offset_minutes: 7 * 60,
            weeks_kept: 6,
            min_weeks: 3,
            days_kept: 7,
            min_days: 3,
            recent_hours_kept: 24,
            min_recent_hours: 1,
            recent_quantile: 0.9,
            min_clean_minutes: 30,
            clip_multiple: 3.0,
            floor_per_minute: 0.05,
            cold_floor_per_minute: 0.5,
            level_factor_tau_hours: 72.0,
            level_factor_prior_mass: 30.0,
            level_factor_min: 0.5,
            level_factor_max: 3.0,
            spread_min: 0.10,
            spread_max: 1.0,
            cold_spread: 0.30,
            commit_delay_minutes: 30,
        }
    }
}

/// Where an expectation's seasonal level came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelSource {
    Weekly,
    Daily,
    Recent,
    Floor,
}

impl LevelSource {
    /// Still cold-starting (no hour-of-week or hour-of-day profile yet).
    pub fn is_cold(self) -> bool {
        matches!(self, LevelSource::Recent | LevelSource::Floor)
    }
}

/// The baseline's answer for one minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    /// Expected counted reports in this minute (floored, with the level factor).
    pub per_minute: f64,
    /// The seasonal level S before level factor and floor.
    pub seasonal_per_minute: f64,
    /// Relative spread of the level (negative-binomial overdispersion for the detector).
    pub spread: f64,
    pub source: LevelSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct MinuteEntry {
    minute: u64,
    count: u64,
    expected: f64,
    seasonal: f64,
    cold: bool,
    clean: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Level {
    level: f64,
    spread: f64,
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Nearest-rank quantile (`q` in 0..=1).
fn quantile(values: impl Iterator<Item = f64>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Median level and relative excess spread of a ring of hourly observations (per-minute rates).
fn level_of(ring: &VecDeque<f64>) -> Option<Level> {
    let level = median(ring.iter().copied())?;
    let mad = median(ring.iter().map(|x| (x - level).abs())).unwrap_or(0.0);
    let sd = 1.4826 * mad;
    let excess = (sd * sd - level / 60.0).max(0.0).sqrt();
    let spread = if level > 0.0 { excess / level } else { f64::INFINITY };
    Some(Level { level, spread })
}

fn push_capped(ring: &mut VecDeque<f64>, value: f64, cap: usize) {
    ring.push_back(value);
    while ring.len() > cap.max(1) {
        ring.pop_front();
    }
}

/// The per-service seasonal baseline. Feed it every finished minute, in order, with
/// [`Baseline::observe`]; ask it with [`Baseline::expect`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    cfg: BaselineConfig,
    weekly: Vec<VecDeque<f64>>,
    weekly_level: Vec<Option<Level>>,
    daily: Vec<VecDeque<f64>>,
    daily_level: Vec<Option<Level>>,
    recent: VecDeque<f64>,
    recent_level: Option<f64>,
    service_spread: Option<f64>,
    g_num: f64,
    g_den: f64,
    g_hour: Option<i64>,
    /// Per-minute overdispersion φ (see [`Baseline::minute_dispersion`]): exponentially weighted
    /// Σ (S − (n−1)·m) and Σ (n−1)·m² over clean hours (absent in older saved state).
    #[serde(default)]
    phi_num: f64,
    #[serde(default)]
    phi_den: f64,
    #[serde(default)]
    phi_hour: Option<i64>,
    /// Minutes not yet committed into hourly observations, oldest first.
    pending: VecDeque<MinuteEntry>,
    last_minute: Option<u64>,
}

impl Baseline {
    pub fn new(cfg: BaselineConfig) -> Baseline {
        Baseline {
            weekly: vec![VecDeque::new(); SLOTS_PER_WEEK],
            weekly_level: vec![None; SLOTS_PER_WEEK],
            daily: vec![VecDeque::new(); 24],
            daily_level: vec![None; 24],
            recent: VecDeque::new(),
            recent_level: None,
            service_spread: None,
            g_num: 0.0,
            g_den: 0.0,
            g_hour: None,
            phi_num: 0.0,
            phi_den: 0.0,
            phi_hour: None,
            pending: VecDeque::new(),
            last_minute: None,
            cfg,
        }
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.cfg
    }

    /// Weekly observations held for an hour-of-week slot.
    pub fn weeks_of_data(&self, slot: usize) -> usize {
        self.weekly.get(slot).map_or(0, VecDeque::len)
    }

    /// The weekly median level of a slot (reports/minute), once it has `min_weeks` of data.
    pub fn weekly_level(&self, slot: usize) -> Option<f64> {
        if self.weeks_of_data(slot) < self.cfg.min_weeks {
            return None;
        }
        self.weekly_level.get(slot).copied().flatten().map(|l| l.level)
    }

    /// Per-minute overdispersion φ: a minute's count has variance `m + φ·m²` around its hour's
    /// mean `m` (0 = Poisson). The level spread describes how hourly *levels* vary from week to
    /// week; φ describes how single minutes scatter around a level (bursty reporting: one news
    /// item, one chat group). A w-minute window sum averages it down to `φ/w`, so it matters for
    /// the 1- and 2-minute windows of the tail test. Estimated by the method of moments from the
    /// within-hour scatter of clean minutes (`E[S] = (n−1)(m + φm²)` for S the sum of squared
    /// deviations), pooled over hours with a one-week time constant; a trend inside an hour
    /// inflates it slightly, which errs on the safe side. Capped at 1.
    pub fn minute_dispersion(&self) -> f64 {
        if self.phi_den <= 0.0 {
            return 0.0;
        }
        (self.phi_num / self.phi_den).clamp(0.0, 1.0)
    }

    /// The current level factor g.
    pub fn level_factor(&self) -> f64 {
        let m = self.cfg.level_factor_prior_mass.max(0.0);
        let den = self.g_den + m;
        if den <= 0.0 {
            return 1.0;
        }
        ((self.g_num + m) / den).clamp(self.cfg.level_factor_min, self.cfg.level_factor_max)
    }

    fn seasonal_at(&self, hour: i64) -> Option<(Level, LevelSource)> {
        let slot = slot_of_hour(hour);
        if self.weekly[slot].len() >= self.cfg.min_weeks.max(1) {
            if let Some(l) = self.weekly_level[slot] {
                return Some((l, LevelSource::Weekly));
            }
        }
        let hod = hour.rem_euclid(24) as usize;
        if self.daily[hod].len() >= self.cfg.min_days.max(1) {
            if let Some(l) = self.daily_level[hod] {
                return Some((l, LevelSource::Daily));
            }
        }
        None
    }

    fn shrunk_spread(&self, slot_spread: f64) -> f64 {
        match self.service_spread {
            Some(s) if slot_spread.is_finite() => 0.5 * slot_spread + 0.5 * s,
            Some(s) => s,
            None => self.cfg.cold_spread,
        }
    }

    /// What is normal for `minute` (unix minutes), given everything learned so far.
    pub fn expect(&self, minute: u64) -> Expectation {
        let local = minute as i64 + i64::from(self.cfg.utc_offset_minutes);
        let hour = local.div_euclid(60);
        let mih = local.rem_euclid(60) as f64 + 0.5;
        let (h0, h1, w1) = if mih < 30.0 {
            (hour - 1, hour, (mih + 30.0) / 60.0)
        } else {
            (hour, hour + 1, (mih - 30.0) / 60.0)
        };
        let (seasonal, spread, source) = match (self.seasonal_at(h0), self.seasonal_at(h1)) {
            (Some((a, sa)), Some((b, sb))) => {
                let level = (1.0 - w1) * a.level + w1 * b.level;
                let spread = (1.0 - w1) * self.shrunk_spread(a.spread) + w1 * self.shrunk_spread(b.spread);
                (level, spread, sa.max(sb))
            }
            (Some((a, s)), None) | (None, Some((a, s))) => (a.level, self.shrunk_spread(a.spread), s),
            (None, None) => match self.recent_level {
                Some(level) if self.recent.len() >= self.cfg.min_recent_hours.max(1) => {
                    (level, self.cfg.cold_spread, LevelSource::Recent)
                }
                _ => (0.0, self.cfg.cold_spread, LevelSource::Floor),
            },
        };
        let spread = if source.is_cold() { spread.max(self.cfg.cold_spread) } else { spread };
        let floor = if source.is_cold() { self.cfg.cold_floor_per_minute } else { self.cfg.floor_per_minute };
        let per_minute = (seasonal * self.level_factor()).max(floor).max(f64::MIN_POSITIVE);
        Expectation {
            per_minute,
            seasonal_per_minute: seasonal,
            spread: spread.clamp(self.cfg.spread_min, self.cfg.spread_max),
            source,
        }
    }

    /// Record a finished minute with `count` counted reports. `clean` is false when the minute is
    /// inside an open incident. Returns the expectation that applied to the minute (computed before
    /// the minute is learned). Minutes must come in increasing order; a minute at or before the
    /// last one is ignored (its expectation is still returned). Minutes never observed (server
    /// down) are simply skipped: they are not learned as zeros.
    pub fn observe(&mut self, minute: u64, count: u64, clean: bool) -> Expectation {
        let exp = self.expect(minute);
        if self.last_minute.is_some_and(|last| minute <= last) {
            return exp;
        }
        self.last_minute = Some(minute);
        self.pending.push_back(MinuteEntry {
            minute,
            count,
            expected: exp.per_minute,
            seasonal: exp.seasonal_per_minute,
            cold: exp.source.is_cold(),
            clean,
        });
        self.commit_due(minute);
        exp
    }

    /// Mark already observed, not yet learned minutes in `from..=to` as unclean (an incident opened
    /// and its detection lookback should not be learned). Returns how many minutes were marked.
    pub fn mark_unclean(&mut self, from: u64, to: u64) -> usize {
        let mut n = 0;
        for e in self.pending.iter_mut().filter(|e| e.minute >= from && e.minute <= to) {
            if e.clean {
                e.clean = false;
                n += 1;
            }
        }
        n
    }

    fn commit_due(&mut self, minute: u64) {
        let local = minute as i64 + i64::from(self.cfg.utc_offset_minutes);
        let due_before = (local - i64::from(self.cfg.commit_delay_minutes)).div_euclid(60);
        while let Some(front) = self.pending.front() {
            let h = local_hour(front.minute, self.cfg.utc_offset_minutes);
            if h >= due_before {
                break;
            }
            self.commit_hour(h);
        }
    }

    fn commit_hour(&mut self, hour: i64) {
        let off = self.cfg.utc_offset_minutes;
        let (mut n, mut sum, mut exp, mut seasonal, mut cold) = (0u32, 0u64, 0.0, 0.0, false);
        let mut sum_sq = 0.0f64;
        while let Some(e) = self.pending.front().copied() {
            if local_hour(e.minute, off) != hour {
                break;
            }
            self.pending.pop_front();
            if e.clean {
                n += 1;
                sum += e.count;
                sum_sq += (e.count as f64) * (e.count as f64);
                exp += e.expected;
                seasonal += e.seasonal;
                cold |= e.cold;
            }
        }
        if n < self.cfg.min_clean_minutes.max(1) {
            return;
        }
        let nf = f64::from(n);
        let mut rate = sum as f64 / nf;
        self.learn_dispersion(hour, nf, sum as f64, sum_sq);
        if !cold && self.cfg.clip_multiple > 0.0 {
            rate = rate.min(self.cfg.clip_multiple * exp / nf);
        }

        let slot = slot_of_hour(hour);
        push_capped(&mut self.weekly[slot], rate, self.cfg.weeks_kept);
        self.weekly_level[slot] = level_of(&self.weekly[slot]);
        let hod = hour.rem_euclid(24) as usize;
        push_capped(&mut self.daily[hod], rate, self.cfg.days_kept);
        self.daily_level[hod] = level_of(&self.daily[hod]);
        push_capped(&mut self.recent, rate, self.cfg.recent_hours_kept);
        self.recent_level = quantile(self.recent.iter().copied(), self.cfg.recent_quantile);
        let min_weeks = self.cfg.min_weeks.max(1);
        self.service_spread = median(
            self.weekly
                .iter()
                .zip(&self.weekly_level)
                .filter(|(ring, _)| ring.len() >= min_weeks)
                .filter_map(|(_, l)| l.map(|l| l.spread))
                .filter(|s| s.is_finite()),
        );

        // Level factor: decay by the hours elapsed since the last update, then add this hour.
        if seasonal > 0.0 {
            let tau = self.cfg.level_factor_tau_hours.max(1e-9);
            let elapsed = self.g_hour.map_or(1, |h| (hour - h).max(1));
            let decay = (-(elapsed as f64) / tau).exp();
            self.g_num = self.g_num * decay + rate * nf;
            self.g_den = self.g_den * decay + seasonal;
            self.g_hour = Some(hour);
        }
    }
}

impl Baseline {
    /// One hour's contribution to φ (`n` clean minutes, their sum and sum of squares).
    fn learn_dispersion(&mut self, hour: i64, n: f64, sum: f64, sum_sq: f64) {
        if n < 2.0 || sum <= 0.0 {
            return;
        }
        let m = sum / n;
        let scatter = (sum_sq - sum * m).max(0.0);
        // One week: long enough that a quiet service's few reports pool into a usable estimate.
        const TAU_HOURS: f64 = 168.0;
        let elapsed = self.phi_hour.map_or(1, |h| (hour - h).max(1));
        let decay = (-(elapsed as f64) / TAU_HOURS).exp();
        self.phi_num = self.phi_num * decay + (scatter - (n - 1.0) * m);
        self.phi_den = self.phi_den * decay + (n - 1.0) * m * m;
        self.phi_hour = Some(hour);
    }
}

/// One finished minute of a service: counted reports and what the baseline expected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MinuteBucket {
    pub minute: u64,
    pub count: u64,
    pub expected: f64,
}

/// Sum over a rolling window of minute buckets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowSum {
    /// Window length asked for, in minutes.
    pub minutes: u32,
    pub observed: u64,
    pub expected: f64,
}

/// The last `capacity` finished minutes of a service (1-minute buckets of counted reports).
/// Minutes that were never observed (server down) are absent and contribute nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteBuckets {
    capacity: usize,
    buckets: VecDeque<MinuteBucket>,
}

impl MinuteBuckets {
    pub fn new(capacity: usize) -> MinuteBuckets {
        MinuteBuckets { capacity: capacity.max(1), buckets: VecDeque::new() }
    }

    /// Grow (never shrink) the number of minutes kept.
    pub fn ensure_capacity(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// Append a finished minute (ignored unless later than the last one).
    pub fn push(&mut self, bucket: MinuteBucket) {
        if self.buckets.back().is_some_and(|b| b.minute >= bucket.minute) {
            return;
        }
        self.buckets.push_back(bucket);
        while self.buckets.len() > self.capacity {
            self.buckets.pop_front();
        }
    }

    pub fn last(&self) -> Option<&MinuteBucket> {
        self.buckets.back()
    }

    /// Sum of the `minutes` minutes ending at (and including) `end_minute`.
    pub fn window(&self, end_minute: u64, minutes: u32) -> WindowSum {
        let start = end_minute.saturating_sub(u64::from(minutes.max(1)) - 1);
        let (mut observed, mut expected) = (0u64, 0.0);
        for b in self.buckets.iter().rev() {
            if b.minute < start {
                break;
            }
            if b.minute <= end_minute {
                observed += b.count;
                expected += b.expected;
            }
        }
        WindowSum { minutes, observed, expected }
    }

    pub fn iter(&self) -> impl Iterator<Item = &MinuteBucket> {
        self.buckets.iter()
    }
}
