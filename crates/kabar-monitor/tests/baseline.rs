//! Seasonal baseline: hour-of-week slots, robustness to outages, cold start.

use kabar_monitor::baseline::{hour_of_week, local_hour, slot_of_hour};
use kabar_monitor::eval::EVAL_START_MINUTE;
use kabar_monitor::{Baseline, BaselineConfig, Event, LevelSource, MonitorConfig, ServiceMonitor, State};

/// Monday 2025-01-06 00:00 WIB.
const MON: u64 = EVAL_START_MINUTE;
const WEEK: u64 = 7 * 24 * 60;

#[test]
fn hour_of_week_slot_zero_is_monday_midnight_local_time() {
    assert_eq!(hour_of_week(MON, 420), 0);
    assert_eq!(hour_of_week(MON + 59, 420), 0);
    assert_eq!(hour_of_week(MON + 60, 420), 1);
    assert_eq!(hour_of_week(MON - 1, 420), 167, "Sunday 23:59");
    // The same instant is Sunday 17:00 in UTC.
    assert_eq!(hour_of_week(MON, 0), 6 * 24 + 17);
    assert_eq!(slot_of_hour(local_hour(MON + WEEK, 420)), 0);
}

fn feed(b: &mut Baseline, from: u64, minutes: u64, count: impl Fn(u64) -> u64, clean: impl Fn(u64) -> bool) {
    for m in from..from + minutes {
        b.observe(m, count(m), clean(m));
    }
}

#[test]
fn weekly_level_is_the_median_of_clean_hours_per_slot() {
    let mut b = Baseline::new(BaselineConfig::default());
    // 2 reports/minute, 4 reports/minute on Wednesdays 20:00–20:59.
    let wed20 = 2 * 24 + 20;
    let count = |m: u64| if hour_of_week(m, 420) == wed20 { 4 } else { 2 };
    feed(&mut b, MON, 3 * WEEK + 120, count, |_| true);
    assert_eq!(b.weeks_of_data(wed20), 3);
    assert_eq!(b.weekly_level(wed20), Some(4.0));
    assert_eq!(b.weekly_level(wed20 + 1), Some(2.0));
    let e = b.expect(MON + 3 * WEEK + wed20 as u64 * 60 + 30);
    assert_eq!(e.source, LevelSource::Weekly);
    assert!((e.per_minute - 4.0).abs() < 0.05, "{e:?}");
    // Interpolated between hour centres: at 21:00 half-way between 4 and 2.
    let e = b.expect(MON + 3 * WEEK + (wed20 as u64 + 1) * 60);
    assert!((e.seasonal_per_minute - 3.0).abs() < 0.05, "{e:?}");
}

#[test]
fn an_outage_inside_an_incident_does_not_pollute_the_baseline() {
    // Three normal weeks at 3/minute, then a 20x outage on Wednesday 10:00–12:59 of week 4,
    // driven through the whole monitor so the incident itself marks the minutes.
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    let outage_start = MON + 3 * WEEK + (2 * 24 + 10) * 60;
    let outage_end = outage_start + 180;
    let mut opened = None;
    for m in MON..MON + 4 * WEEK {
        let n = if (outage_start..outage_end).contains(&m) { 60 } else { 3 };
        mon.record_counted(m * 60, n);
        for ev in mon.advance((m + 1) * 60) {
            if let Event::IncidentOpened { minute, .. } = ev {
                opened.get_or_insert(minute);
            }
        }
    }
    let opened = opened.expect("the outage opened an incident");
    assert!(opened >= outage_start && opened <= outage_start + 3, "detected at {}", opened - outage_start);
    assert_eq!(mon.state(), State::Ok);
    let b = mon.baseline();
    for h in 10..13 {
        let slot = 2 * 24 + h;
        assert_eq!(b.weeks_of_data(slot), 3, "the outage hour {h}:00 was not learned");
        assert_eq!(b.weekly_level(slot), Some(3.0));
    }
    // Next week at the same time normal traffic is expected, not the outage.
    let e = b.expect(outage_start + WEEK + 30);
    assert!((e.per_minute - 3.0).abs() < 0.2, "{e:?}");
    assert!((b.level_factor() - 1.0).abs() < 0.05, "g {}", b.level_factor());
}

#[test]
fn an_undetected_anomaly_is_clipped_and_outvoted_by_the_median() {
    let mut b = Baseline::new(BaselineConfig::default());
    feed(&mut b, MON, 3 * WEEK, |_| 2, |_| true);
    // Week 4, Monday 09:00: 100/minute that nobody flagged (clean).
    let nine = MON + 3 * WEEK + 9 * 60;
    feed(&mut b, MON + 3 * WEEK, WEEK, |m| if (nine..nine + 60).contains(&m) { 100 } else { 2 }, |_| true);
    // The hour entered the ring capped at 3 × 2 = 6, and the median of [2, 2, 2, 6] stays 2.
    assert_eq!(b.weeks_of_data(9), 4);
    assert_eq!(b.weekly_level(9), Some(2.0));
    assert!(b.level_factor() < 1.05, "g {}", b.level_factor());
}

#[test]
fn cold_start_goes_from_floor_to_recent_to_daily_to_weekly() {
    let mut b = Baseline::new(BaselineConfig::default());
    let e = b.observe(MON, 1, true);
    assert_eq!(e.source, LevelSource::Floor);
    assert_eq!(e.per_minute, 0.5, "cold floor");
    feed(&mut b, MON + 1, 119, |_| 1, |_| true);
    let e = b.expect(MON + 120);
    assert_eq!(e.source, LevelSource::Recent);
    assert!((e.per_minute - 1.0).abs() < 0.05);
    feed(&mut b, MON + 120, 3 * 1440, |_| 1, |_| true);
    assert_eq!(b.expect(MON + 3 * 1440 + 180).source, LevelSource::Daily);
    feed(&mut b, MON + 120 + 3 * 1440, 3 * WEEK, |_| 1, |_| true);
    assert_eq!(b.expect(MON + 3 * WEEK + 180).source, LevelSource::Weekly);
}

#[test]
fn cold_recent_level_is_an_upper_quantile_so_the_daily_ramp_is_not_an_outage() {
    let mut b = Baseline::new(BaselineConfig::default());
    // First day: quiet night (0.5/min, 00–06), then 3/min.
    feed(&mut b, MON, 10 * 60, |m| if (m - MON) < 360 { 0 } else { 3 }, |_| true);
    let e = b.expect(MON + 10 * 60);
    assert_eq!(e.source, LevelSource::Recent);
    assert!(e.per_minute >= 2.5, "the recent level follows the busy hours: {e:?}");
}

#[test]
fn a_handful_of_reports_never_triggers_on_a_cold_service() {
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    // Three silent hours (past the warm-up), then 7 reports within one minute.
    let t = MON + 180;
    mon.advance(t * 60);
    for i in 0..7 {
        mon.record_counted(t * 60 + i, 1);
    }
    let mut events = Vec::new();
    for m in t..t + 30 {
        events.extend(mon.advance((m + 1) * 60));
    }
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(mon.state(), State::Ok);
}

#[test]
fn a_handful_of_reports_never_triggers_on_a_silent_learned_service() {
    // Three weeks without a single report: the weekly level is 0 and only the floor remains.
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    let t = MON + 3 * WEEK + 60;
    for m in MON..t {
        assert!(mon.advance((m + 1) * 60).is_empty());
    }
    assert_eq!(mon.baseline().expect(t).source, LevelSource::Weekly);
    for i in 0..5 {
        mon.record_counted(t * 60 + i * 50, 1);
    }
    let mut events = Vec::new();
    for m in t..t + 30 {
        events.extend(mon.advance((m + 1) * 60));
    }
    assert!(events.is_empty(), "{events:?}");
}
