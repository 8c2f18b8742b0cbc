//! The assembled monitor: gate → minute buckets → baseline → detector, driven by the caller's clock.

use std::net::{IpAddr, Ipv4Addr};

use kabar_monitor::eval::EVAL_START_MINUTE;
use kabar_monitor::{
    Event, GateConfig, LevelSource, Monitor, MonitorConfig, MonitorError, ProblemType, Report, ReportError,
    ServiceMonitor, State,
};

const MON: u64 = EVAL_START_MINUTE;
const WEEK: u64 = 7 * 24 * 60;

fn report(service: &str, reporter: &str, ip: u32, problem: ProblemType, at: u64) -> Report {
    Report {
        service: service.into(),
        reporter: reporter.into(),
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        account: None,
        problem,
        region: None,
        at_secs: at,
    }
}

/// Run `mon` minute by minute over `minutes`, `count(m)` reports in minute m; returns events.
fn drive(mon: &mut ServiceMonitor, from: u64, minutes: u64, count: impl Fn(u64) -> u64) -> Vec<(u64, Event)> {
    let mut out = Vec::new();
    for m in from..from + minutes {
        mon.record_counted(m * 60 + 30, count(m));
        out.extend(mon.advance((m + 1) * 60).into_iter().map(|e| (m, e)));
    }
    out
}

#[test]
fn only_counted_reports_reach_the_service_and_its_problem_breakdown() {
    let t = MON * 60;
    let mut monitor = Monitor::new(MonitorConfig::default(), GateConfig::default());
    monitor.add_service("chat", t).unwrap();
    assert_eq!(monitor.add_service("chat", t), Err(MonitorError::DuplicateService));
    assert_eq!(monitor.add_service("", t), Err(MonitorError::InvalidService));
    for (reporter, problem) in [("a", ProblemType::CantLogIn), ("a", ProblemType::CantLogIn), ("b", ProblemType::CantSend), ("c", ProblemType::CantLogIn)] {
        monitor.submit_report(&report("chat", reporter, 1, problem, t + 10)).unwrap();
    }
    assert_eq!(
        monitor.submit_report(&report("mail", "a", 1, ProblemType::Other, t + 10)),
        Err(ReportError::UnknownService)
    );
    assert!(monitor.advance(t + 60).is_empty());
    let status = monitor.service("chat").unwrap().status();
    assert_eq!(status.windows[0].observed, 3, "the duplicate was acknowledged, not counted");
    assert_eq!(status.problems_last_hour, [1, 2, 0, 0, 0]);
    assert_eq!(monitor.gate().stats().duplicate, 1);
}

#[test]
fn a_5x_outage_on_a_steady_service_is_detected_within_5_minutes_and_resolves() {
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    let start = MON + 3 * WEEK + 14 * 60;
    let events = drive(&mut mon, MON, 3 * WEEK + 16 * 60, |m| if (start..start + 30).contains(&m) { 50 } else { 10 });
    let opened: Vec<u64> = events.iter().filter(|(_, e)| matches!(e, Event::IncidentOpened { .. })).map(|(m, _)| *m).collect();
    assert_eq!(opened.len(), 1, "{events:?}");
    let ttd = opened[0] + 1 - start;
    assert!(ttd <= 5, "time to detect {ttd} minutes");
    let inc = mon.resolved_incidents().next().expect("resolved after the outage");
    assert!(inc.peak_ratio > 4.0, "peak {}", inc.peak_ratio);
    let end = inc.end_minute.unwrap();
    assert!(end > start + 30 && end < start + 30 + 30, "end {} minutes after the outage", end - start - 30);
}

#[test]
fn a_downtime_gap_is_skipped_not_learned_as_zero_reports() {
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    drive(&mut mon, MON, 4 * 1440, |_| 5);
    assert_eq!(mon.baseline().expect(MON + 4 * 1440).source, LevelSource::Daily);
    // The server is down for two days; the next call comes 2 days later.
    let back = MON + 6 * 1440;
    assert!(mon.advance(back * 60).is_empty());
    let events = drive(&mut mon, back, 180, |_| 5);
    assert!(events.is_empty(), "{events:?}");
    let e = mon.baseline().expect(back + 180);
    assert!((e.per_minute - 5.0).abs() < 0.3, "{e:?}");
}

#[test]
fn a_late_report_counts_in_the_current_minute() {
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    mon.advance((MON + 5) * 60);
    mon.record_counted((MON + 1) * 60, 4); // minute MON+1 is already judged
    mon.advance((MON + 6) * 60);
    assert_eq!(mon.status().windows[0].observed, 4);
    assert_eq!(mon.status().minute, Some(MON + 5));
}

#[test]
fn warm_up_caps_a_new_service_at_possible_problems() {
    // A service that is simply busy (40/min) from the first minute must not open an incident
    // that would keep the baseline from ever learning it.
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    let events = drive(&mut mon, MON, 2 * 1440, |_| 40);
    assert!(!events.iter().any(|(_, e)| matches!(e, Event::IncidentOpened { .. })), "{events:?}");
    assert_eq!(mon.state(), State::Ok);
}

#[test]
fn admin_resolve_closes_the_incident_and_lets_the_baseline_learn_a_new_level() {
    let mut mon = ServiceMonitor::new("chat", MonitorConfig::default(), MON * 60);
    drive(&mut mon, MON, 2 * WEEK, |_| 10);
    // The level quadruples for good.
    let shift = MON + 2 * WEEK;
    drive(&mut mon, shift, 60, |_| 40);
    let id = mon.open_incident().expect("incident").id.clone();
    let events = mon.admin_resolve((shift + 60) * 60, Some("new client release, expected")).unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::IncidentResolved { .. })));
    let events = drive(&mut mon, shift + 60, 1440, |_| 40);
    assert!(!events.iter().any(|(_, e)| matches!(e, Event::IncidentOpened { .. })), "quiet period");
    assert!(mon.baseline().level_factor() > 1.5, "g {}", mon.baseline().level_factor());
    // After the quiet period the learned level keeps the new normal from re-opening an incident.
    let events = drive(&mut mon, shift + 60 + 1440, 3 * 1440, |_| 40);
    assert!(!events.iter().any(|(_, e)| matches!(e, Event::IncidentOpened { .. })), "{events:?}");
    let inc = mon.resolved_incidents().find(|i| i.id == id).unwrap();
    assert_eq!(inc.annotations[0].text, "new client release, expected");
    assert_eq!(mon.admin_resolve((shift + 5 * 1440) * 60, None).unwrap_err(), kabar_monitor::AnnotateError::UnknownIncident);
}
