//! The evaluation is reproducible, and the tuned detector reaches the figures recorded in
//! docs/MONITOR.md.

use kabar_monitor::eval::{run_evaluation_seeds, run_evaluation_with, EvalConfig, Rng};

#[test]
fn evaluation_is_deterministic_for_a_seed() {
    let a = run_evaluation_with(&EvalConfig::small(7));
    let b = run_evaluation_with(&EvalConfig::small(7));
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    assert!(a.overall.outages > 0, "the small run must inject scored outages");
    let c = run_evaluation_with(&EvalConfig::small(8));
    assert_ne!(a.to_string(), c.to_string(), "another seed gives another series");
}

#[test]
fn poisson_and_gamma_samplers_have_the_right_moments() {
    let mut rng = Rng::new(42);
    for lambda in [0.3, 4.0, 45.0, 900.0] {
        let n = 40_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.poisson(lambda) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - lambda).abs() < 0.03 * lambda + 0.02, "lambda {lambda}: mean {mean}");
        assert!((var - lambda).abs() < 0.06 * lambda + 0.03, "lambda {lambda}: variance {var}");
    }
    let k = 8.0;
    let n = 40_000;
    let mean = (0..n).map(|_| rng.gamma(k)).sum::<f64>() / n as f64;
    assert!((mean - k).abs() < 0.1, "gamma mean {mean}");
}

/// The brief's goal is "5× outages detected within 5 minutes with recall ≥ 0.9 and ≤ 1 false alarm
/// per service-week". Over seeds 1..=6 of the standard evaluation the tuned detector does NOT meet
/// it overall (measured: 5× recall@5min 0.874; 0.352 false alarms per service-week, worst single
/// service 0.833; held-out seeds 101..=112 in docs/MONITOR.md): the 0.5 and 1 report/minute services cannot produce enough reports within 5
/// minutes at night without a handful of reports triggering. This test asserts the WEAKER figures actually measured
/// (rounded down), so a regression shows up, and the goal on the services where it is met.
#[test]
fn evaluation_reaches_the_recorded_figures_goal_met_only_from_2_reports_per_minute() {
    let report = run_evaluation_seeds(&EvalConfig::standard(1), &[1, 2, 3, 4, 5, 6]).expect("seeds");
    println!("{report}");
    let five = report.magnitude(5.0).expect("5x bucket");
    // WEAKER than the goal (measured 0.874): all services, all hours.
    assert!(five.recall_within_5() >= 0.85, "5x recall@5min {}", five.recall_within_5());
    assert!(five.recall() >= 0.95, "5x recall {}", five.recall());
    // The goal's false-alarm half holds on average and for every single service.
    assert!(report.false_alarms_per_service_week() <= 1.0);
    assert!(report.worst_service_false_alarms_per_week() <= 1.0);
    // The goal's recall half holds for services with at least 2 reports/minute (measured 0.980).
    assert!(report.recall_5x_within_5_for_rates_at_least(2.0) >= 0.9);
    // Bigger outages are caught fast.
    let ten = report.magnitude(10.0).expect("10x bucket");
    assert!(ten.recall_within_5() >= 0.95, "10x recall@5min {}", ten.recall_within_5());
    assert!(report.magnitude(100.0).expect("100x").recall() >= 0.99);
    assert!(report.precision() >= 0.85, "precision {}", report.precision());
}

/// The oracle bound (src/oracle.rs) on the small configuration: a probability, growing with the
/// false-alarm budget, 1 for a service with 20 reports/minute, and the realisable oracle detector
/// stays within its false-alarm budget.
#[test]
fn oracle_bound_is_a_recall_that_grows_with_the_false_alarm_budget() {
    let cfg = EvalConfig::small(1);
    let report = kabar_monitor::oracle::oracle_bound(&cfg, &[1], 5.0, 5, &[0.5, 1.0]);
    assert_eq!(report.bands.len(), 2);
    for band in &report.bands {
        let (b_half, b_one) = (band.bound[0].1, band.bound[1].1);
        assert!((0.0..=1.0).contains(&b_half) && b_half <= b_one + 1e-12, "{}: {b_half} {b_one}", band.name);
        for &(f, recall, fa) in &band.oracle {
            assert!(fa <= f && (0.0..=1.0).contains(&recall), "{}: F {f} recall {recall} FA {fa}", band.name);
        }
    }
    let big = report.bands.iter().find(|b| b.base_rate == 20.0).expect("rate-20");
    assert!(big.bound[1].1 > 0.999, "{}", big.bound[1].1);
    let small = report.bands.iter().find(|b| b.base_rate == 2.0).expect("rate-2");
    assert!(small.bound[1].1 < 0.999, "a 2/minute service cannot reach certainty: {}", small.bound[1].1);
}
