//! The exact tail test on short windows: "how improbable are this many reports in the last 1, 2,
//! 3 or 5 minutes, if nothing is wrong?"
//!
//! The rolling-window z (a deviance approximation) and the CUSUM need several minutes of counts
//! before they say anything about a low-volume service. A 5× outage on a service with 0.5
//! reports/minute brings ~2.5 reports a minute: after two minutes that is 5 reports where 1 was
//! normal, an event with probability ~4·10⁻³ — not yet an alarm at one false alarm a week, but
//! after three minutes 8 where 1.5 were normal is ~4·10⁻⁴ and after five 13 where 2.5 are normal
//! ~10⁻⁵. This test reads those probabilities exactly (negative-binomial upper tail with the
//! baseline's spread, Poisson when the spread is 0) instead of approximating them.
//!
//! **Thresholds are computed, not tuned.** The only parameter is a budget of false entries per
//! week. The test is applied once per minute to each of its `n` windows, so with a budget of `B`
//! false "detected" entries a week the per-test significance level is the Bonferroni bound
//! `α = B / (minutes per week · n)`: even if every one of those tests were independent, false
//! entries would stay below `B` a week *if the baseline were exact*. Overlapping windows make the
//! bound conservative; baseline error and overdispersion the spread does not capture eat into it
//! (that is what the evaluation measures).

use serde::{Deserialize, Serialize};

use crate::baseline::WindowSum;
use crate::detector::State;

/// Detection minutes in a week: the number of times per week each window is tested.
pub const MINUTES_PER_WEEK: f64 = 7.0 * 24.0 * 60.0;

/// The exact short-window tail test (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailRule {
    /// Window lengths in minutes, each ending at the judged minute [1, 2, 3, 5].
    pub windows: Vec<u32>,
    /// Budget of false ProblemsDetected entry signals per week [1.0: the goal itself, one false
    /// alarm per service per week]; the per-test level is
    /// `detected_per_week / (MINUTES_PER_WEEK · windows.len())`.
    pub detected_per_week: f64,
    /// Budget of false PossibleProblems entry signals per week, computed the same way [5.0].
    pub possible_per_week: f64,
    /// A window needs at least this many reports to count at all [6]: on a silent service (where
    /// the expectation is the floor) a handful of reports is always "improbable".
    pub min_count: u64,
    /// ... and at least this multiple of its expectation [2.5], so a large service's significant
    /// but harmless wobble (and baseline error, which the spread does not fully cover) never
    /// triggers.
    pub min_ratio: f64,
    /// A "detected" from a window at least this long, whose reports are not mostly from one
    /// minute, enters ProblemsDetected without the detector's two-minute streak [2]: the window
    /// itself spans several minutes of evidence. A 1-minute window never does, nor one burst
    /// minute inside a longer window.
    pub persistent_minutes: u32,
}

impl Default for TailRule {
    fn default() -> Self {
        TailRule {
            windows: vec![1, 2, 3, 5],
            detected_per_week: 1.0,
            possible_per_week: 5.0,
            min_count: 6,
            min_ratio: 2.5,
            persistent_minutes: 2,
        }
    }
}

impl TailRule {
    /// Per-test significance level for a budget of `per_week` false signals a week.
    pub fn alpha(&self, per_week: f64) -> f64 {
        let tests = MINUTES_PER_WEEK * self.windows.len().max(1) as f64;
        (per_week.max(0.0) / tests).min(1.0)
    }

    /// Longest window of the rule, in minutes.
    pub fn longest(&self) -> u32 {
        self.windows.iter().copied().max().unwrap_or(0)
    }

    /// The level the windows reach: ProblemsDetected when some window's tail probability is at
    /// most the "detected" level, PossibleProblems at the "possible" level, else Ok. `spread` is
    /// the baseline's relative level spread and `phi` its per-minute overdispersion: a w-minute
    /// window is judged as negative-binomial with relative spread `√(spread² + φ/w)`.
    pub fn level(&self, sums: &[WindowSum], spread: f64, phi: f64) -> TailSignal {
        let (a_detected, a_possible) = (self.alpha(self.detected_per_week), self.alpha(self.possible_per_week));
        let mut best = TailSignal { level: State::Ok, p: 1.0, minutes: 0, persistent: false };
        for sum in sums.iter().filter(|s| self.windows.contains(&s.minutes)) {
            if sum.observed < self.min_count
                || sum.expected <= 0.0
                || (sum.observed as f64) < self.min_ratio * sum.expected
            {
                continue;
            }
            let s = (spread.max(0.0).powi(2) + phi.max(0.0) / f64::from(sum.minutes.max(1))).sqrt();
            let p = nb_upper_tail(sum.observed, sum.expected, s);
            if p < best.p {
                best.p = p;
                best.minutes = sum.minutes;
                best.persistent = sum.minutes >= self.persistent_minutes.max(2)
                    && 2 * peak_minute_bound(sums, sum.minutes) <= sum.observed;
            }
        }
        best.level = if best.p <= a_detected {
            State::ProblemsDetected
        } else if best.p <= a_possible {
            State::PossibleProblems
        } else {
            State::Ok
        };
        best
    }
}

/// What the tail test found this minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TailSignal {
    pub level: State,
    /// Smallest tail probability among the qualifying windows (1 when none qualified).
    pub p: f64,
    /// The window that gave it (0 when none).
    pub minutes: u32,
    /// That window is at least `persistent_minutes` long and no single minute of it holds more
    /// than half its reports (as far as the nested windows tell): several minutes of evidence,
    /// not one burst.
    pub persistent: bool,
}

/// Upper bound of the largest single-minute count inside the window of `minutes`, from the nested
/// window sums (all ending at the same minute): the counts of the groups of minutes between
/// consecutive window lengths (exact for groups of one minute). Without the nested windows the
/// whole window is one group, so the bound is its whole count.
fn peak_minute_bound(sums: &[WindowSum], minutes: u32) -> u64 {
    let mut nested: Vec<&WindowSum> = sums.iter().filter(|s| s.minutes <= minutes && s.minutes > 0).collect();
    nested.sort_by_key(|s| s.minutes);
    let (mut peak, mut prev) = (0u64, 0u64);
    for s in nested {
        peak = peak.max(s.observed.saturating_sub(prev));
        prev = prev.max(s.observed);
    }
    peak
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// `P(X ≥ x)` for X negative-binomial with mean `mu` and variance `mu + s²·mu²` (Poisson when
/// `s = 0`). Summed from `x` upward in log space, so it is exact (to ~1e-12 relative) for the
/// small counts that matter and cheap for large ones: past the mode the terms fall geometrically.
/// Counts at or below the mean answer 1 (never significant, and not worth the sum).
pub fn nb_upper_tail(x: u64, mu: f64, s: f64) -> f64 {
    if x == 0 || !(mu.is_finite() && mu > 0.0) {
        return 1.0;
    }
    let xf = x as f64;
    if xf <= mu {
        return 1.0;
    }
    let poisson = !(s.is_finite() && s > 0.0);
    let r = if poisson { 0.0 } else { 1.0 / (s * s) };
    // log pmf(x); later terms by the ratio pmf(k+1)/pmf(k).
    let head = if poisson {
        xf * mu.ln() - mu - ln_gamma(xf + 1.0)
    } else {
        ln_gamma(xf + r) - ln_gamma(r) - ln_gamma(xf + 1.0) + r * (r / (r + mu)).ln() + xf * (mu / (r + mu)).ln()
    };
    let mut sum = 0.0;
    let mut k = xf;
    // Relative to the first term, so the sum neither underflows nor overflows.
    let mut rel = 1.0;
    for _ in 0..100_000 {
        sum += rel;
        let ratio = if poisson { mu / (k + 1.0) } else { (k + r) / (k + 1.0) * (mu / (r + mu)) };
        rel *= ratio;
        k += 1.0;
        if rel < 1e-13 * sum {
            break;
        }
    }
    (head + sum.ln()).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisson_tail_direct(x: u64, mu: f64) -> f64 {
        // 1 − P(X < x) by summing the pmf from 0: fine for the small means of these tests.
        let mut term = (-mu).exp();
        let mut below = 0.0;
        for k in 0..x {
            below += term;
            term *= mu / (k as f64 + 1.0);
        }
        1.0 - below
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1.0f64;
        for n in 1..30u32 {
            f *= f64::from(n);
            assert!((ln_gamma(f64::from(n) + 1.0) - f.ln()).abs() < 1e-10, "n = {n}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn poisson_tail_is_exact_for_small_counts() {
        for &(x, mu) in &[(2u64, 0.5), (5, 1.0), (8, 1.5), (13, 2.5), (30, 10.0)] {
            let (a, b) = (nb_upper_tail(x, mu, 0.0), poisson_tail_direct(x, mu));
            assert!((a - b).abs() <= 1e-9 * b.max(1e-300) + 1e-15, "x={x} mu={mu}: {a} vs {b}");
        }
        // Known value: P(Poisson(2.5) ≥ 9) = 0.00114.
        assert!((nb_upper_tail(9, 2.5, 0.0) - 0.001_140).abs() < 2e-6);
    }

    #[test]
    fn overdispersion_fattens_the_tail_and_counts_below_the_mean_are_never_significant() {
        assert!(nb_upper_tail(20, 5.0, 0.3) > nb_upper_tail(20, 5.0, 0.0) * 5.0);
        assert_eq!(nb_upper_tail(3, 5.0, 0.1), 1.0);
        // A huge count on a big service: no overflow, no endless sum.
        let p = nb_upper_tail(25_000, 250.0, 0.1);
        assert!(p.is_finite() && (0.0..1e-30).contains(&p), "{p}");
    }

    #[test]
    fn negative_binomial_tail_matches_a_direct_sum() {
        // r = 4 (s = 0.5), mu = 2: pmf by the recurrence from k = 0.
        let (r, mu) = (4.0f64, 2.0f64);
        let q = mu / (r + mu);
        let mut term = (r / (r + mu)).powf(r);
        let mut below = 0.0;
        for k in 0..9u32 {
            below += term;
            term *= (f64::from(k) + r) / (f64::from(k) + 1.0) * q;
        }
        let direct = 1.0 - below;
        let ours = nb_upper_tail(9, mu, 0.5);
        assert!((ours - direct).abs() < 1e-10, "{ours} vs {direct}");
    }

    fn sum(minutes: u32, observed: u64, expected: f64) -> WindowSum {
        WindowSum { minutes, observed, expected }
    }

    #[test]
    fn thresholds_follow_the_weekly_budget_by_bonferroni() {
        let rule = TailRule::default();
        let a = rule.alpha(rule.detected_per_week);
        assert!((a - 1.0 / (10_080.0 * 4.0)).abs() < 1e-15);
        // Doubling the budget doubles the level.
        assert!((rule.alpha(2.0) - 2.0 * a).abs() < 1e-15);
    }

    #[test]
    fn a_low_volume_5x_rise_is_detected_from_the_exact_tail_within_minutes() {
        let rule = TailRule::default();
        // 0.5/minute normal: 13 reports in 5 minutes where 2.5 are normal (p ≈ 1.5e-6 < α ≈ 2.5e-5).
        let s = rule.level(&[sum(1, 3, 0.5), sum(2, 6, 1.0), sum(3, 8, 1.5), sum(5, 13, 2.5)], 0.1, 0.0);
        assert_eq!(s.level, State::ProblemsDetected);
        // 5 in 2 minutes where 1 is normal (p ≈ 4e-3): not even "possible" (α ≈ 1.2e-4).
        let s = rule.level(&[sum(1, 2, 0.5), sum(2, 5, 1.0), sum(3, 5, 1.5), sum(5, 5, 2.5)], 0.1, 0.0);
        assert_eq!(s.level, State::Ok);
    }

    #[test]
    fn a_handful_on_a_silent_service_and_a_big_services_wobble_never_trigger() {
        let rule = TailRule::default();
        // 5 reports where 0.25 are expected (p ≈ 6e-6), but below the minimum count.
        assert_eq!(rule.level(&[sum(5, 5, 0.25)], 0.1, 0.0).level, State::Ok);
        // 1.6× on a big service: astronomically improbable under Poisson, but below the ratio.
        assert_eq!(rule.level(&[sum(5, 400, 250.0)], 0.0, 0.0).level, State::Ok);
        // Windows the rule does not list are ignored.
        assert_eq!(rule.level(&[sum(15, 60, 2.0)], 0.1, 0.0).level, State::Ok);
    }

    #[test]
    fn one_burst_minute_is_never_persistent_evidence() {
        let rule = TailRule::default();
        // 8 in the last 2 minutes where 1 is normal, all in one minute: detected, not persistent.
        let burst = rule.level(&[sum(1, 0, 0.5), sum(2, 8, 1.0), sum(3, 8, 1.5), sum(5, 8, 2.5)], 0.1, 0.0);
        assert_eq!(burst.level, State::ProblemsDetected);
        assert!(!burst.persistent);
        // 3 + 3 + 3 + 2 + 2: spread over the window, persistent.
        let spread = rule.level(&[sum(1, 3, 0.5), sum(2, 6, 1.0), sum(3, 9, 1.5), sum(5, 13, 2.5)], 0.1, 0.0);
        assert_eq!(spread.level, State::ProblemsDetected);
        assert!(spread.persistent);
        // The nested windows bound the peak: minutes 4–5 are one group of 4 reports here.
        assert_eq!(peak_minute_bound(&[sum(1, 1, 0.5), sum(2, 2, 1.0), sum(3, 3, 1.5), sum(5, 7, 2.5)], 5), 4);
    }
}
