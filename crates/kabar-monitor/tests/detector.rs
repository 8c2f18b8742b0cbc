//! Detector state transitions with hysteresis, probes, and incidents.

use kabar_monitor::{
    AnnotateError, Cause, Detector, DetectorConfig, Event, ProbeLevel, ProbeTracker, Resolution, State, WindowSignal,
    WindowSum,
};
use kabar_monitor::detector::nb_deviance_z;

const M0: u64 = 29_000_000;

/// A 5-minute window at `ratio` times an expectation of 50 reports (large enough that z is
/// never the limiting test): the default thresholds are entry 2.0 / 3.0, hold 1.5 / 2.0.
fn five(ratio: f64) -> Vec<WindowSignal> {
    let expected = 50.0;
    vec![WindowSignal::from_sum(WindowSum { minutes: 5, observed: (ratio * expected).round() as u64, expected }, 0.1)]
}

fn no_probes() -> ProbeLevel {
    ProbeLevel::default()
}

/// Step the detector through `minutes` minutes at `ratio`, returning all events.
fn run(d: &mut Detector, from: u64, minutes: u64, ratio: f64, probes: ProbeLevel) -> Vec<Event> {
    (from..from + minutes).flat_map(|m| d.step(M0 + m, &five(ratio), probes, false)).collect()
}

fn states(events: &[Event]) -> Vec<(u64, State, State)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged(t) => Some((t.minute - M0, t.from, t.to)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_single_minute_spike_changes_nothing() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    assert!(run(&mut d, 0, 1, 4.0, no_probes()).is_empty());
    assert!(run(&mut d, 1, 20, 1.0, no_probes()).is_empty());
    assert_eq!(d.state(), State::Ok);
}

#[test]
fn problems_detected_after_two_elevated_minutes_and_opens_an_incident() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    assert!(run(&mut d, 0, 1, 4.0, no_probes()).is_empty(), "one minute is not enough");
    let ev = run(&mut d, 1, 1, 4.0, no_probes());
    assert_eq!(states(&ev), [(1, State::Ok, State::ProblemsDetected)]);
    assert!(ev.contains(&Event::IncidentOpened { id: format!("chat@{}", M0 + 1), minute: M0 + 1 }));
    // A minute of "possible" followed by a "detected" minute is enough too.
    let mut d = Detector::new("chat", DetectorConfig::default());
    run(&mut d, 0, 1, 2.5, no_probes());
    assert_eq!(states(&run(&mut d, 1, 1, 4.0, no_probes())), [(1, State::Ok, State::ProblemsDetected)]);
}

#[test]
fn possible_problems_needs_two_minutes_and_stays_below_detected() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    let ev = run(&mut d, 0, 30, 2.5, no_probes());
    assert_eq!(states(&ev), [(1, State::Ok, State::PossibleProblems)]);
    assert!(d.open_incident().is_none(), "possible problems open no incident");
}

#[test]
fn hysteresis_holds_the_state_between_hold_and_enter_thresholds_and_steps_down_one_level_at_a_time() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    run(&mut d, 0, 2, 4.0, no_probes());
    assert_eq!(d.state(), State::ProblemsDetected);
    // 2.2x: below the 3.0 entry, above the 2.0 hold → stays.
    assert!(states(&run(&mut d, 2, 60, 2.2, no_probes())).is_empty());
    // 1.7x: below the detected hold, above the possible hold → PossibleProblems after 10 minutes.
    let ev = run(&mut d, 62, 30, 1.7, no_probes());
    assert_eq!(states(&ev), [(71, State::ProblemsDetected, State::PossibleProblems)]);
    // Normal again → Ok after another 10 minutes.
    let ev = run(&mut d, 92, 30, 1.0, no_probes());
    assert_eq!(states(&ev), [(101, State::PossibleProblems, State::Ok)]);
    // From ProblemsDetected straight back to normal: one exit period, straight to Ok.
    run(&mut d, 200, 2, 4.0, no_probes());
    assert_eq!(states(&run(&mut d, 202, 30, 1.0, no_probes())), [(211, State::ProblemsDetected, State::Ok)]);
}

#[test]
fn a_dip_shorter_than_the_exit_time_does_not_end_problems() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    run(&mut d, 0, 2, 4.0, no_probes());
    let mut ev = run(&mut d, 2, 9, 1.0, no_probes());
    ev.extend(run(&mut d, 11, 5, 4.0, no_probes()));
    assert!(states(&ev).is_empty(), "{ev:?}");
    assert_eq!(d.state(), State::ProblemsDetected);
}

fn probes(tracker: &ProbeTracker, minute: u64) -> ProbeLevel {
    tracker.level(M0 + minute, &DetectorConfig::default())
}

#[test]
fn a_probe_failure_streak_alone_is_possible_problems() {
    let cfg = DetectorConfig::default();
    let mut tracker = ProbeTracker::new();
    let mut d = Detector::new("chat", cfg.clone());
    let mut ev = Vec::new();
    for m in 0..30 {
        tracker.record("probe-jkt", false, M0 + m, &cfg);
        tracker.record("probe-sby", true, M0 + m, &cfg);
        ev.extend(d.step(M0 + m, &five(1.0), probes(&tracker, m), false));
    }
    // Failing for 3 minutes at minute 2, for 2 consecutive minutes at minute 3.
    assert_eq!(states(&ev), [(3, State::Ok, State::PossibleProblems)]);
    let Event::StateChanged(entry) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(entry.cause, Cause::Probes);
    assert!(d.open_incident().is_none());
}

#[test]
fn probe_failures_with_elevated_reports_are_problems_detected() {
    let cfg = DetectorConfig::default();
    let mut tracker = ProbeTracker::new();
    let mut d = Detector::new("chat", cfg.clone());
    let mut ev = Vec::new();
    for m in 0..10 {
        tracker.record("probe-jkt", false, M0 + m, &cfg);
        tracker.record("probe-sby", true, M0 + m, &cfg);
        // 2.5x alone is only "possible".
        ev.extend(d.step(M0 + m, &five(2.5), probes(&tracker, m), false));
    }
    assert_eq!(states(&ev), [(1, State::Ok, State::PossibleProblems), (2, State::PossibleProblems, State::ProblemsDetected)]);
    let Event::StateChanged(entry) = ev.iter().filter(|e| matches!(e, Event::StateChanged(_))).nth(1).unwrap() else {
        unreachable!()
    };
    assert_eq!(entry.cause, Cause::ReportsAndProbes);
    assert!(d.open_incident().is_some());
}

#[test]
fn all_probes_failing_for_five_minutes_is_problems_detected() {
    let cfg = DetectorConfig::default();
    let mut tracker = ProbeTracker::new();
    let mut d = Detector::new("chat", cfg.clone());
    let mut ev = Vec::new();
    for m in 0..10 {
        tracker.record("probe-jkt", false, M0 + m, &cfg);
        tracker.record("probe-sby", false, M0 + m, &cfg);
        ev.extend(d.step(M0 + m, &five(1.0), probes(&tracker, m), false));
    }
    assert_eq!(states(&ev), [(3, State::Ok, State::PossibleProblems), (4, State::PossibleProblems, State::ProblemsDetected)]);
    assert!(ev.iter().any(|e| matches!(e, Event::StateChanged(t) if t.cause == Cause::Probes && t.to == State::ProblemsDetected)));
}

#[test]
fn one_failing_probe_is_not_all_probes_and_silent_probes_are_ignored() {
    let cfg = DetectorConfig::default();
    let mut tracker = ProbeTracker::new();
    for m in 0..20 {
        tracker.record("only", false, M0 + m, &cfg);
    }
    let level = probes(&tracker, 19);
    assert!(level.any_failing && !level.all_failing, "one probe cannot declare an outage: {level:?}");
    // Silent for more than `probe_stale_minutes`: inactive.
    assert_eq!(probes(&tracker, 19 + 11), ProbeLevel { active: 0, any_failing: false, all_failing: false });
    // A success clears the streak.
    tracker.record("only", true, M0 + 40, &cfg);
    assert!(!probes(&tracker, 40).any_failing);
}

#[test]
fn incident_resolves_after_m_ok_minutes_with_end_peak_and_timeline() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    let mut ev = run(&mut d, 0, 2, 4.0, no_probes());
    ev.extend(run(&mut d, 2, 5, 6.0, no_probes()));
    ev.extend(run(&mut d, 7, 10, 1.7, no_probes()));
    ev.extend(run(&mut d, 17, 100, 1.0, no_probes()));
    // PD at 1; 1.7x is under the detected hold from 7 → PP at 16; normal from 17 → Ok at 26;
    // resolved 30 minutes later.
    assert_eq!(
        states(&ev),
        [(1, State::Ok, State::ProblemsDetected), (16, State::ProblemsDetected, State::PossibleProblems), (26, State::PossibleProblems, State::Ok)]
    );
    let id = format!("chat@{}", M0 + 1);
    assert!(ev.contains(&Event::IncidentResolved { id: id.clone(), minute: M0 + 56, resolution: Resolution::Auto }));
    assert!(d.open_incident().is_none());
    let inc = d.resolved_incidents().next().unwrap();
    assert_eq!(inc.id, id);
    assert_eq!(inc.service, "chat");
    assert_eq!(inc.start_minute, M0 + 1);
    assert_eq!(inc.end_minute, Some(M0 + 26));
    assert_eq!(inc.resolved_minute, Some(M0 + 56));
    assert!((inc.peak_ratio - 6.0).abs() < 1e-9, "peak {}", inc.peak_ratio);
    let tl: Vec<(State, State)> = inc.timeline.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(tl, [(State::Ok, State::ProblemsDetected), (State::ProblemsDetected, State::PossibleProblems), (State::PossibleProblems, State::Ok)]);
}

#[test]
fn problems_returning_before_resolution_continue_the_same_incident() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    run(&mut d, 0, 2, 4.0, no_probes());
    run(&mut d, 2, 35, 1.0, no_probes()); // Ok at 11, resolution would be at 41
    assert_eq!(d.state(), State::Ok);
    let ev = run(&mut d, 37, 2, 4.0, no_probes());
    assert!(!ev.iter().any(|e| matches!(e, Event::IncidentOpened { .. })));
    let inc = d.open_incident().expect("still open");
    assert_eq!(inc.start_minute, M0 + 1);
    assert_eq!(inc.timeline.len(), 3);
    assert_eq!(d.resolved_incidents().count(), 0);
}

#[test]
fn admins_annotate_incidents_within_bounds() {
    let mut d = Detector::new("chat", DetectorConfig { max_annotations: 2, max_annotation_bytes: 20, ..DetectorConfig::default() });
    run(&mut d, 0, 2, 4.0, no_probes());
    let id = d.open_incident().unwrap().id.clone();
    let inc = d.incident_mut(&id).unwrap();
    inc.annotate("  investigating  ", 1_740_000_000).unwrap();
    assert_eq!(inc.annotate("   ", 1_740_000_001), Err(AnnotateError::Empty));
    assert_eq!(inc.annotate(&"x".repeat(21), 1_740_000_001), Err(AnnotateError::TooLong));
    inc.annotate("db restarted", 1_740_000_600).unwrap();
    assert_eq!(inc.annotate("third", 1_740_000_700), Err(AnnotateError::TooMany));
    let notes: Vec<(&str, u64)> = inc.annotations.iter().map(|a| (a.text.as_str(), a.at_secs)).collect();
    assert_eq!(notes, [("investigating", 1_740_000_000), ("db restarted", 1_740_000_600)]);
    // Still reachable after resolution.
    run(&mut d, 2, 60, 1.0, no_probes());
    assert!(d.open_incident().is_none());
    assert_eq!(d.incident_mut(&id).unwrap().annotations.len(), 2);
    assert!(d.incident_mut("chat@1").is_none());
}

#[test]
fn admin_resolve_closes_the_incident_at_once() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    run(&mut d, 0, 2, 4.0, no_probes());
    let ev = d.admin_resolve(M0 + 5);
    assert_eq!(states(&ev), [(5, State::ProblemsDetected, State::Ok)]);
    let inc = d.resolved_incidents().next().unwrap();
    assert_eq!(inc.resolution, Some(Resolution::Admin));
    assert_eq!(inc.end_minute, Some(M0 + 5));
}

#[test]
fn capped_reports_reach_possible_problems_at_most() {
    let mut d = Detector::new("chat", DetectorConfig::default());
    let ev: Vec<Event> = (0..10).flat_map(|m| d.step(M0 + m, &five(10.0), no_probes(), true)).collect();
    assert_eq!(states(&ev), [(1, State::Ok, State::PossibleProblems)]);
}

#[test]
fn deviance_z_is_signed_and_respects_small_count_tails() {
    assert!(nb_deviance_z(2.5, 2.5, 0.1).abs() < 1e-9);
    assert!(nb_deviance_z(0.0, 2.5, 0.1) < 0.0);
    // P(Poisson(2.5) >= 9) ≈ 0.0011 → z ≈ 3.1; the normal approximation would say 4.1.
    let z = nb_deviance_z(9.0, 2.5, 0.0);
    assert!((2.9..3.4).contains(&z), "z {z}");
    // Overdispersion lowers z for big counts.
    assert!(nb_deviance_z(1300.0, 1000.0, 0.2) < nb_deviance_z(1300.0, 1000.0, 0.0));
}

/// A 5-minute window with `observed` reports where `expected` were expected.
/// The CUSUM is off by default since the tail test; these tests turn its tuned rule on.
fn with_cusum() -> DetectorConfig {
    DetectorConfig { cusum: Some(kabar_monitor::detector::DEFAULT_CUSUM), ..DetectorConfig::default() }
}

fn window(observed: u64, expected: f64) -> Vec<WindowSignal> {
    vec![WindowSignal::from_sum(WindowSum { minutes: 5, observed, expected }, 0.1)]
}

#[test]
fn cusum_accumulates_a_sustained_low_volume_rise_into_possible_problems_and_drains_at_normal_rates() {
    // 3 reports a minute where 0.5 were expected; the window (8 of 3 expected, z ≈ 2.3) passes no
    // window threshold, so only the CUSUM can raise the state.
    let mut d = Detector::new("chat", with_cusum());
    let mut events = Vec::new();
    for m in 0..4u64 {
        d.observe_minute(3, 0.5);
        events.extend(d.step(M0 + m, &window(8, 3.0), no_probes(), false));
    }
    assert!(d.cusum() > 4.0, "cusum {}", d.cusum());
    assert_eq!(d.state(), State::PossibleProblems, "{events:?}");
    // Back to normal: S falls by (shift − 1)·μ = 1 per silent minute, to 0.
    for _ in 0..20 {
        d.observe_minute(0, 0.5);
    }
    assert_eq!(d.cusum(), 0.0);
}

#[test]
fn cusum_needs_the_minimum_count_so_a_handful_on_a_silent_service_does_not_trigger() {
    let mut d = Detector::new("chat", with_cusum());
    // Five reports in one minute against the 0.05 floor: a large CUSUM step, but only five.
    d.observe_minute(5, 0.05);
    assert!(d.cusum() >= 4.0);
    for m in 0..3 {
        assert!(d.step(M0 + m, &window(5, 0.25), no_probes(), false).is_empty());
    }
    assert_eq!(d.state(), State::Ok);
}

#[test]
fn onset_gate_keeps_a_slow_surge_out_of_problems_detected_but_not_an_abrupt_outage() {
    // The 5-minute window is 4× the seasonal expectation in both cases. Before it, the service
    // was already at 3.5× for 30 minutes (a surge building up) or at its normal level (an outage).
    let cfg = DetectorConfig { cusum: None, ..DetectorConfig::default() };
    let sig = five(4.0);
    let mut surge = Detector::new("chat", cfg.clone());
    let mut outage = Detector::new("chat", cfg);
    for m in 0..5 {
        surge.observe_onset(&sig[0], WindowSum { minutes: 30, observed: 1050, expected: 300.0 });
        surge.step(M0 + m, &sig, no_probes(), false);
        outage.observe_onset(&sig[0], WindowSum { minutes: 30, observed: 300, expected: 300.0 });
        outage.step(M0 + m, &sig, no_probes(), false);
    }
    assert_eq!(surge.state(), State::PossibleProblems);
    assert_eq!(outage.state(), State::ProblemsDetected);
}

/// The short windows the tail test reads, ending at the judged minute.
fn tail_sums(per_minute: &[u64], expected_per_minute: f64) -> Vec<WindowSum> {
    [1u32, 2, 3, 5]
        .iter()
        .map(|&w| {
            let observed = per_minute.iter().rev().take(w as usize).sum();
            WindowSum { minutes: w, observed, expected: expected_per_minute * f64::from(w) }
        })
        .collect()
}

#[test]
fn tail_test_detects_a_low_volume_5x_outage_from_a_multi_minute_window_without_the_streak() {
    // 0.5 reports/minute normal, then 13 in 5 minutes: p ≈ 1.5e-6, below the Bonferroni level
    // for one false alarm a week (≈ 2.5e-5). The 5-minute window's own z-test is not passed
    // (z ≈ 3.9 < 4), so only the tail test can detect it, and at once: the window already spans
    // five minutes of evidence.
    let mut d = Detector::new("chat", DetectorConfig::default());
    let counts = [2u64, 3, 3, 2, 3];
    d.observe_tail(&tail_sums(&counts, 0.5), 0.1, 0.0);
    let ev = d.step(M0, &window(13, 2.5), no_probes(), false);
    assert_eq!(d.state(), State::ProblemsDetected, "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, Event::IncidentOpened { .. })));
}

#[test]
fn tail_test_one_burst_minute_does_not_skip_the_two_minute_streak() {
    // Eight reports in one minute where 0.5 are normal: improbable, but one minute is no outage by
    // itself, so it only starts the streak (the same counts spread over the window would detect
    // at once, see above).
    let mut d = Detector::new("chat", DetectorConfig::default());
    d.observe_tail(&tail_sums(&[0, 0, 0, 0, 8], 0.5), 0.1, 0.0);
    let ev = d.step(M0, &window(8, 2.5), no_probes(), false);
    assert_eq!(d.state(), State::Ok, "{ev:?}");
    // Inside a 2-minute window the burst is still one minute's evidence: no immediate entry.
    let mut d = Detector::new("chat", DetectorConfig::default());
    d.observe_tail(&tail_sums(&[0, 0, 0, 8, 0], 0.5), 0.1, 0.0);
    let ev = d.step(M0, &window(8, 2.5), no_probes(), false);
    assert_eq!(d.state(), State::Ok, "{ev:?}");
}

#[test]
fn tail_test_respects_the_onset_gate_and_the_reports_cap() {
    // The same strong 5-minute window, but the half hour before was already as busy: a surge,
    // not an abrupt outage, so at most "possible".
    let mut d = Detector::new("chat", DetectorConfig::default());
    let short = WindowSignal::from_sum(WindowSum { minutes: 5, observed: 13, expected: 2.5 }, 0.1);
    for m in 0..3 {
        d.observe_onset(&short, WindowSum { minutes: 30, observed: 70, expected: 15.0 });
        d.observe_tail(&tail_sums(&[2, 3, 3, 2, 3], 0.5), 0.1, 0.0);
        d.step(M0 + m, &window(13, 2.5), no_probes(), false);
    }
    assert_eq!(d.state(), State::PossibleProblems);
    // During warm-up (reports capped) the tail test cannot detect either.
    let mut d = Detector::new("chat", DetectorConfig::default());
    for m in 0..3 {
        d.observe_tail(&tail_sums(&[2, 3, 3, 2, 3], 0.5), 0.1, 0.0);
        d.step(M0 + m, &window(13, 2.5), no_probes(), true);
    }
    assert_eq!(d.state(), State::PossibleProblems);
}
