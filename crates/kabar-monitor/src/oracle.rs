//! How much recall could *any* detector get on the evaluation's series? An upper bound, and a
//! realisable oracle detector, per service (volume band), for "an outage of magnitude m detected
//! within D minutes at ≤ F false alarms per service-week".
//!
//! **The bound** (`bound`). Let an outage start at minute s. Detecting it within D minutes means a
//! ProblemsDetected entry at some minute t ∈ [s, s+D−1], a decision made from the counts up to t.
//! Call that event N_s. Under the outage, the counts before s are as normal and, given the rates,
//! independent of the counts from s on; so however the detector uses the past, `P_outage(N_s)` is
//! at most the power of the Neyman–Pearson test of "normal" against "m× normal" on the D counts
//! of [s, s+D−1] at level `β_s = P_normal(N_s)`. Each false entry at minute t lies in the D blocks
//! starting at t−D+1 … t, so Σ_s β_s ≤ D · (false entries). The oracle knows the exact normal rate
//! of every minute (the simulation's cycle, growth, day and hour noise and surges — far more than a
//! real baseline can know); the per-minute count is negative binomial (Poisson with the Gamma
//! factor of shape k), and the block sum is treated as NB(Σλ, D·k), which is exact when the D rates
//! are equal (they differ by a few per cent inside a block; for Poisson counts the sum is exactly
//! sufficient). With outage starts spread uniformly over the scored minutes, maximising mean power
//! subject to mean β ≤ budget is bounded by the Lagrangian dual, for every μ ≥ 0:
//!
//! `recall ≤ mean_s Σ_x (p1_s(x) − μ·p0_s(x))⁺ + μ · budget`,  `budget = D·F·weeks / null minutes`,
//!
//! minimised over a grid of μ. Nothing in it is tuned or sampled: it is an exact computation on
//! the rates of the series. It ignores the scoring's "already in ProblemsDetected when the outage
//! started" case (under normal load the detector spends ~0.1 % of minutes there) and assumes every
//! false entry counts (the evaluation counts incidents; re-entries inside one incident are rare).
//!
//! **The oracle detector** (`oracle_recall`): realisable, with the same exact rates: at every
//! minute the smallest negative-binomial upper-tail p-value of the sums of the last 1 … D minutes;
//! it alarms when that is ≤ α, a new alarm being a false alarm outside outages when none was raised
//! in the 30 minutes before (one incident); α is the largest on a grid whose false alarms on these
//! very series stay ≤ F per week (calibrated in-sample: an oracle). Its recall@D on the real
//! outages lies below the bound; the shipped detector, which must learn its baseline, below both.

use std::fmt;

use crate::eval::{service_streams, EvalConfig, Outage, Series};
use crate::tail::{ln_gamma, nb_upper_tail};

const WEEK: u64 = 7 * 24 * 60;
/// An alarm within this many minutes of the previous one belongs to the same incident.
const INCIDENT_HOLD_MINUTES: usize = 30;

/// The bound and the oracle detector for one service, over all seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct BandBound {
    pub name: String,
    pub base_rate: f64,
    /// Scored outages of the studied magnitude.
    pub outages: usize,
    /// Per false-alarm budget F: (F, upper bound on expected recall within D minutes for a start
    /// uniform over the scored minutes, the mean power at the actual outage starts of the test
    /// that attains the bound).
    pub bound: Vec<(f64, f64, f64)>,
    /// Per F: (F, oracle detector's recall@D on the actual outages, its false alarms per week).
    pub oracle: Vec<(f64, f64, f64)>,
}

/// The whole computation.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleReport {
    pub seeds: Vec<u64>,
    pub magnitude: f64,
    pub deadline: u32,
    pub budgets: Vec<f64>,
    pub bands: Vec<BandBound>,
}

/// Lagrange multipliers tried: 10^0 … 10^8 in steps of 0.05 decades.
fn mu_grid() -> Vec<f64> {
    (0..=160).map(|j| 10f64.powf(f64::from(j) / 20.0)).collect()
}

/// Per-test levels tried by the oracle detector: 10^-2 … 10^-10 in steps of 0.05 decades.
fn alpha_grid() -> Vec<f64> {
    (40..=200).map(|j| 10f64.powf(-f64::from(j) / 20.0)).collect()
}

/// `ln P(X = x)` for X negative binomial with mean `mean` and shape `r` (Poisson when r is
/// infinite).
fn ln_pmf(x: f64, mean: f64, r: f64) -> f64 {
    if r.is_finite() {
        ln_gamma(x + r) - ln_gamma(r) - ln_gamma(x + 1.0) + r * (r / (r + mean)).ln() + x * (mean / (r + mean)).ln()
    } else {
        x * mean.ln() - mean - ln_gamma(x + 1.0)
    }
}

/// The likelihood ratio of NB(m·lam, r) against NB(lam, r) as a line in x:
/// `ln LR(x) = x·slope + icept` (Poisson when r is infinite).
fn lr_line(lam: f64, m: f64, r: f64) -> (f64, f64) {
    let (m0, m1) = (lam, m * lam);
    if r.is_finite() {
        ((m1 * (r + m0) / (m0 * (r + m1))).ln(), r * ((r + m0) / (r + m1)).ln())
    } else {
        (m.ln(), -(m1 - m0))
    }
}

/// `Σ_x (p1(x) − μ·p0(x))⁺` for every μ of `mus`, added into `acc`: the best "power − μ·level"
/// of a test of NB(lam, r) against NB(m·lam, r) on one count. The likelihood ratio grows with x,
/// so each μ's best region is {x ≥ x*(μ)}.
fn add_np_gains(lam: f64, m: f64, r: f64, mus: &[f64], acc: &mut [f64]) {
    if lam <= 0.0 {
        return;
    }
    let (m0, m1) = (lam, m * lam);
    let (slope, icept) = lr_line(lam, m, r);
    let var1 = if r.is_finite() { m1 + m1 * m1 / r } else { m1 };
    let x_lo = ((0.0 - icept) / slope).ceil().max(0.0) as u64;
    let x_hi = (m1 + 14.0 * var1.sqrt() + 40.0).ceil() as u64;
    if x_hi <= x_lo {
        return;
    }
    let n = (x_hi - x_lo + 1) as usize;
    let (mut p0, mut p1) = (vec![0.0; n], vec![0.0; n]);
    for (i, x) in (x_lo..=x_hi).enumerate() {
        let xf = x as f64;
        p0[i] = ln_pmf(xf, m0, r).exp();
        p1[i] = ln_pmf(xf, m1, r).exp();
    }
    // Suffix sums: T(x) = P(X ≥ x).
    for i in (0..n - 1).rev() {
        p0[i] += p0[i + 1];
        p1[i] += p1[i + 1];
    }
    for (mu, a) in mus.iter().zip(acc.iter_mut()) {
        let x_star = ((mu.ln() - icept) / slope).ceil().max(x_lo as f64) as u64;
        if x_star > x_hi {
            continue;
        }
        let i = (x_star - x_lo) as usize;
        *a += (p1[i] - mu * p0[i]).max(0.0);
    }
}

/// Power of the region {x ≥ x*(μ)} under the outage, for each μ (the oracle's test at a start).
fn add_powers(lam: f64, m: f64, r: f64, mus: &[f64], acc: &mut [f64]) {
    if lam <= 0.0 {
        return;
    }
    let m1 = m * lam;
    let (slope, icept) = lr_line(lam, m, r);
    let s = if r.is_finite() { 1.0 / r.sqrt() } else { 0.0 };
    for (mu, a) in mus.iter().zip(acc.iter_mut()) {
        let x_star = ((mu.ln() - icept) / slope).ceil().max(0.0) as u64;
        *a += if x_star == 0 || (x_star as f64) <= m1 {
            // At or below the mean the tail helper answers 1 by design; sum the lower part instead.
            1.0 - (0..x_star).map(|x| ln_pmf(x as f64, m1, r).exp()).sum::<f64>()
        } else {
            nb_upper_tail(x_star, m1, s)
        };
    }
}

/// One service's generated series: normal rates, counts, outages.
struct Generated {
    normal: Vec<f64>,
    counts: Vec<u64>,
    outages: Vec<Outage>,
}

fn generate(cfg: &EvalConfig, idx: usize, total: u64) -> Generated {
    let spec = &cfg.services[idx];
    let (sched, rng) = service_streams(cfg, idx, total);
    let mut series = Series::new(cfg, spec, &sched, rng);
    let (mut normal, mut counts) = (Vec::with_capacity(total as usize), Vec::with_capacity(total as usize));
    for t in 0..total {
        let m = series.minute(t);
        normal.push(m.normal);
        counts.push(m.count);
    }
    Generated { normal, counts, outages: sched.outages.clone() }
}

/// Compute the bound and the oracle detector for `cfg`'s services over `seeds`, for outages of
/// `magnitude`, detection within `deadline` minutes, and each false-alarm budget in `budgets`
/// (false alarms per service-week).
pub fn oracle_bound(cfg: &EvalConfig, seeds: &[u64], magnitude: f64, deadline: u32, budgets: &[f64]) -> OracleReport {
    let d = deadline.max(1) as usize;
    let mus = mu_grid();
    let alphas = alpha_grid();
    let total = u64::from(cfg.weeks) * WEEK;
    let scored_from = u64::from(cfg.warmup_weeks.min(cfg.weeks)) * WEEK;
    let grace = u64::from(cfg.grace_minutes);
    let mut bands = Vec::new();
    for (idx, spec) in cfg.services.iter().enumerate() {
        let r = if spec.dispersion > 0.0 { spec.dispersion * d as f64 } else { f64::INFINITY };
        // Large services: every 7th minute (coprime to hours and days) keeps the mean unbiased
        // and the run short; their bound is 1 to three decimals anyway.
        let stride = if spec.base_rate <= 5.0 { 1 } else { 7 };
        let (mut gains, mut null_minutes, mut sampled, mut weeks) = (vec![0.0; mus.len()], 0u64, 0u64, 0.0);
        let (mut powers, mut outages) = (vec![0.0; mus.len()], 0usize);
        let (mut fa, mut hits) = (vec![0u64; alphas.len()], vec![0u64; alphas.len()]);
        for &seed in seeds {
            let mut c = cfg.clone();
            c.seed = seed;
            let g = generate(&c, idx, total);
            weeks += (total - scored_from) as f64 / WEEK as f64;
            let in_outage = mark_outages(&g.outages, total, grace);
            // Bound: blocks [s, s+d) wholly outside outages.
            let mut s = scored_from as usize;
            while s + d <= total as usize {
                if !in_outage[s..s + d].iter().any(|&b| b) {
                    let lam: f64 = g.normal[s..s + d].iter().sum();
                    add_np_gains(lam, magnitude, r, &mus, &mut gains);
                    null_minutes += stride as u64;
                    sampled += 1;
                }
                s += stride;
            }
            let scored: Vec<&Outage> = g
                .outages
                .iter()
                .filter(|o| o.magnitude == magnitude && o.start >= scored_from && o.end + grace <= total)
                .collect();
            for o in &scored {
                let s = o.start as usize;
                let lam: f64 = g.normal[s..s + d].iter().sum();
                add_powers(lam, magnitude, r, &mus, &mut powers);
            }
            outages += scored.len();
            // Oracle detector.
            let minp = min_window_p(&g, d, spec.dispersion);
            for (j, &alpha) in alphas.iter().enumerate() {
                let mut last_alarm: Option<usize> = None;
                for t in scored_from as usize..total as usize {
                    if minp[t] > alpha {
                        continue;
                    }
                    let new = last_alarm.is_none_or(|l| t - l > INCIDENT_HOLD_MINUTES);
                    last_alarm = Some(t);
                    if new && !in_outage[t] {
                        fa[j] += 1;
                    }
                }
                hits[j] += scored
                    .iter()
                    .filter(|o| (o.start as usize..o.start as usize + d).any(|t| minp[t] <= alpha))
                    .count() as u64;
            }
        }
        let mut bound = Vec::new();
        let mut oracle = Vec::new();
        for &f in budgets {
            let budget = d as f64 * f * weeks / null_minutes.max(1) as f64;
            let (j, b) = mus
                .iter()
                .zip(&gains)
                .map(|(mu, g)| g / sampled.max(1) as f64 + mu * budget)
                .enumerate()
                .fold((0, f64::INFINITY), |best, (j, b)| if b < best.1 { (j, b) } else { best });
            bound.push((f, b.min(1.0), powers[j] / outages.max(1) as f64));
            let best = (0..alphas.len())
                .filter(|&j| fa[j] as f64 / weeks <= f)
                .max_by(|&a, &b| hits[a].cmp(&hits[b]).then(alphas[a].total_cmp(&alphas[b])));
            oracle.push(match best {
                Some(j) => (f, hits[j] as f64 / outages.max(1) as f64, fa[j] as f64 / weeks),
                None => (f, 0.0, 0.0),
            });
        }
        bands.push(BandBound { name: spec.name.clone(), base_rate: spec.base_rate, outages, bound, oracle });
    }
    OracleReport { seeds: seeds.to_vec(), magnitude, deadline, budgets: budgets.to_vec(), bands }
}

/// Minutes inside an outage or its grace period.
fn mark_outages(outages: &[Outage], total: u64, grace: u64) -> Vec<bool> {
    let mut v = vec![false; total as usize];
    for o in outages {
        for t in o.start..(o.end + grace).min(total) {
            v[t as usize] = true;
        }
    }
    v
}

/// Per minute, the smallest NB upper-tail p-value of the sums of the last 1 … d minutes against
/// the exact normal rates (sum of w NB(λ, k) minutes as NB(Σλ, w·k)).
fn min_window_p(g: &Generated, d: usize, k: f64) -> Vec<f64> {
    let mut out = vec![1.0f64; g.counts.len()];
    for (t, p) in out.iter_mut().enumerate() {
        let (mut x, mut lam) = (0u64, 0.0);
        for w in 1..=d.min(t + 1) {
            x += g.counts[t + 1 - w];
            lam += g.normal[t + 1 - w];
            let s = if k > 0.0 { 1.0 / (k * w as f64).sqrt() } else { 0.0 };
            *p = p.min(nb_upper_tail(x, lam, s));
        }
    }
    out
}

impl OracleReport {
    /// Outage-weighted mean over the bands of a per-band figure.
    fn pooled(&self, f: impl Fn(&BandBound) -> f64) -> f64 {
        let n: usize = self.bands.iter().map(|b| b.outages).sum();
        self.bands.iter().map(|b| f(b) * b.outages as f64).sum::<f64>() / n.max(1) as f64
    }
}

impl fmt::Display for OracleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::fmt::Write as _;
        writeln!(
            f,
            "oracle bound: {}x outages detected within {} minutes, seeds {}",
            self.magnitude,
            self.deadline,
            self.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        )?;
        // Rows are built whole and trimmed, so the printed table has no trailing blanks.
        let mut rows = vec![String::from("service     rate/min  outages")];
        for b in &self.budgets {
            write!(rows[0], "  bound F={b:<4} (at starts)")?;
        }
        for b in &self.budgets {
            write!(rows[0], "  oracle F={b:<4} (FA/wk)")?;
        }
        for band in &self.bands {
            let mut row = format!("{:<10}  {:>8}  {:>7}", band.name, band.base_rate, band.outages);
            for (_, b, at) in &band.bound {
                write!(row, "  {b:>12.3} ({at:>5.3})  ")?;
            }
            for (_, r, fa) in &band.oracle {
                write!(row, "  {r:>10.3} ({fa:>5.2})   ")?;
            }
            rows.push(row);
        }
        let mut all = format!("{:<10}  {:>8}  {:>7}", "all", "", self.bands.iter().map(|b| b.outages).sum::<usize>());
        for i in 0..self.budgets.len() {
            write!(all, "  {:>12.3} ({:>5.3})  ", self.pooled(|b| b.bound[i].1), self.pooled(|b| b.bound[i].2))?;
        }
        for i in 0..self.budgets.len() {
            write!(all, "  {:>10.3}           ", self.pooled(|b| b.oracle[i].1))?;
        }
        rows.push(all);
        for row in rows {
            writeln!(f, "{}", row.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisson_pmf(x: u64, lam: f64) -> f64 {
        ln_pmf(x as f64, lam, f64::INFINITY).exp()
    }

    #[test]
    fn neyman_pearson_gain_matches_a_direct_sum() {
        // Σ_x (p1 − μ·p0)⁺ by brute force over x, Poisson 2.5 against 12.5 and NB shape 100.
        for &(lam, r) in &[(2.5, f64::INFINITY), (1.0, 100.0)] {
            let mus = [1.0, 7.0, 300.0, 1e5];
            let mut ours = [0.0; 4];
            add_np_gains(lam, 5.0, r, &mus, &mut ours);
            for (mu, got) in mus.iter().zip(ours) {
                let direct: f64 = (0..400u64)
                    .map(|x| (ln_pmf(x as f64, 5.0 * lam, r).exp() - mu * ln_pmf(x as f64, lam, r).exp()).max(0.0))
                    .sum();
                assert!((got - direct).abs() < 1e-9, "lam {lam} r {r} mu {mu}: {got} vs {direct}");
            }
        }
    }

    #[test]
    fn dual_bound_of_one_test_is_the_neyman_pearson_power_at_the_level() {
        // One block with a constant rate: min over μ of gain(μ) + μ·β is the (randomised) NP
        // power at level β, between the powers of the two neighbouring count thresholds.
        let (lam, beta) = (2.5, 5e-4);
        let mus = mu_grid();
        let mut gains = vec![0.0; mus.len()];
        add_np_gains(lam, 5.0, f64::INFINITY, &mus, &mut gains);
        let bound = mus.iter().zip(&gains).map(|(mu, g)| g + mu * beta).fold(f64::INFINITY, f64::min);
        let tail = |c: u64, l: f64| 1.0 - (0..c).map(|x| poisson_pmf(x, l)).sum::<f64>();
        let c = (0..100u64).find(|&c| tail(c, lam) <= beta).expect("threshold");
        // P(Poisson(2.5) ≥ 10) = 2.2e-4 ≤ 5e-4 < P(≥ 9) = 1.1e-3.
        assert_eq!(c, 10);
        let (lo, hi) = (tail(c, 5.0 * lam), tail(c - 1, 5.0 * lam));
        assert!(bound >= lo - 1e-9 && bound <= hi + 1e-3, "{lo} ≤ {bound} ≤ {hi}");
    }

    #[test]
    fn power_at_a_start_is_the_outage_tail_above_the_threshold() {
        let mus = [1.0, 1e3];
        let mut p = [0.0; 2];
        add_powers(2.5, 5.0, f64::INFINITY, &mus, &mut p);
        // μ = 1: x* = ⌈10/ln 5⌉ = 7 (ln LR = x·ln 5 − 10); μ = 1000: x* = ⌈(ln 1000 + 10)/ln 5⌉ = 11.
        let tail = |c: u64| 1.0 - (0..c).map(|x| poisson_pmf(x, 12.5)).sum::<f64>();
        assert!((p[0] - tail(7)).abs() < 1e-9, "{} vs {}", p[0], tail(7));
        assert!((p[1] - tail(11)).abs() < 1e-9, "{} vs {}", p[1], tail(11));
    }
}
