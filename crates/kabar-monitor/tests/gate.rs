//! Report counting rules: 30-minute dedupe, limits acknowledged-not-counted, bounded memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kabar_monitor::{BucketConfig, GateConfig, NotCounted, ProblemType, Region, Report, ReportError, ReportGate, Verdict};

const T0: u64 = 1_750_000_000;

fn report(service: &str, reporter: &str, ip: IpAddr, account: Option<&str>, at: u64) -> Report {
    Report {
        service: service.into(),
        reporter: reporter.into(),
        ip,
        account: account.map(Into::into),
        problem: ProblemType::CantSend,
        region: None,
        at_secs: at,
    }
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

fn roomy() -> GateConfig {
    GateConfig {
        ip_limit: BucketConfig { burst: 1000.0, per_hour: 1000.0 },
        account_limit: BucketConfig { burst: 1000.0, per_hour: 1000.0 },
        ..GateConfig::default()
    }
}

#[test]
fn same_reporter_and_service_counts_once_per_30_minutes() {
    let mut gate = ReportGate::new(roomy());
    let ip = v4(1);
    assert_eq!(gate.submit(&report("chat", "alice", ip, None, T0)).unwrap(), Verdict::Counted);
    for dt in [1, 60, 29 * 60, 30 * 60 - 1] {
        assert_eq!(
            gate.submit(&report("chat", "alice", ip, None, T0 + dt)).unwrap(),
            Verdict::Acknowledged(NotCounted::Duplicate),
            "{dt} s after the counted report"
        );
    }
    // The window runs from the counted report, not from the duplicates.
    assert_eq!(gate.submit(&report("chat", "alice", ip, None, T0 + 30 * 60)).unwrap(), Verdict::Counted);
    assert_eq!(gate.stats().counted, 2);
    assert_eq!(gate.stats().duplicate, 4);
}

#[test]
fn dedupe_is_per_service_and_per_reporter() {
    let mut gate = ReportGate::new(roomy());
    let ip = v4(1);
    assert!(gate.submit(&report("chat", "alice", ip, None, T0)).unwrap().is_counted());
    assert!(gate.submit(&report("push", "alice", ip, None, T0 + 1)).unwrap().is_counted());
    assert!(gate.submit(&report("chat", "bob", ip, None, T0 + 2)).unwrap().is_counted());
}

#[test]
fn ip_limit_acknowledges_but_does_not_count_until_refilled() {
    let cfg = GateConfig {
        ip_limit: BucketConfig { burst: 3.0, per_hour: 6.0 },
        ..GateConfig::default()
    };
    let mut gate = ReportGate::new(cfg);
    let ip = v4(7);
    for i in 0..3 {
        assert_eq!(gate.submit(&report("chat", &format!("dev{i}"), ip, None, T0)).unwrap(), Verdict::Counted);
    }
    assert_eq!(
        gate.submit(&report("chat", "dev3", ip, None, T0)).unwrap(),
        Verdict::Acknowledged(NotCounted::IpLimited)
    );
    // Another IP is unaffected.
    assert!(gate.submit(&report("chat", "dev3", v4(8), None, T0)).unwrap().is_counted());
    // 6 per hour: one token after 10 minutes, and the limited reporter was not remembered as a
    // duplicate, so its report counts now.
    assert_eq!(
        gate.submit(&report("chat", "dev4", ip, None, T0 + 9 * 60)).unwrap(),
        Verdict::Acknowledged(NotCounted::IpLimited)
    );
    assert_eq!(gate.submit(&report("chat", "dev4", ip, None, T0 + 10 * 60)).unwrap(), Verdict::Counted);
    assert_eq!(gate.stats().ip_limited, 2);
}

#[test]
fn account_limit_applies_across_ips_and_services() {
    let cfg = GateConfig {
        account_limit: BucketConfig { burst: 2.0, per_hour: 1.0 },
        ..GateConfig::default()
    };
    let mut gate = ReportGate::new(cfg);
    let acc = Some("alice@example.id");
    assert!(gate.submit(&report("chat", "alice@example.id", v4(1), acc, T0)).unwrap().is_counted());
    assert!(gate.submit(&report("push", "alice@example.id", v4(2), acc, T0)).unwrap().is_counted());
    assert_eq!(
        gate.submit(&report("web", "alice@example.id", v4(3), acc, T0)).unwrap(),
        Verdict::Acknowledged(NotCounted::AccountLimited)
    );
    // Anonymous reports from the same IP are not affected by the account's bucket.
    assert!(gate.submit(&report("web", "cookie-1", v4(3), None, T0)).unwrap().is_counted());
}

#[test]
fn ipv6_addresses_in_one_64_share_a_bucket() {
    let cfg = GateConfig {
        ip_limit: BucketConfig { burst: 2.0, per_hour: 1.0 },
        ..GateConfig::default()
    };
    let mut gate = ReportGate::new(cfg);
    let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
    let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
    assert!(gate.submit(&report("chat", "d1", a, None, T0)).unwrap().is_counted());
    assert!(gate.submit(&report("chat", "d2", b, None, T0)).unwrap().is_counted());
    assert_eq!(gate.submit(&report("chat", "d3", a, None, T0)).unwrap(), Verdict::Acknowledged(NotCounted::IpLimited));
    assert!(gate.submit(&report("chat", "d4", c, None, T0)).unwrap().is_counted());
    // IPv4-mapped IPv6 is the IPv4 address.
    let mapped: IpAddr = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().into();
    assert!(gate.submit(&report("chat", "d5", v4(1), None, T0)).unwrap().is_counted());
    assert!(gate.submit(&report("chat", "d6", mapped, None, T0)).unwrap().is_counted());
    assert_eq!(gate.submit(&report("chat", "d7", mapped, None, T0)).unwrap(), Verdict::Acknowledged(NotCounted::IpLimited));
}

#[test]
fn dedupe_memory_expires_after_the_window_and_never_exceeds_the_cap() {
    let cfg = GateConfig { max_dedupe_entries: 100, ..roomy() };
    let mut gate = ReportGate::new(cfg);
    for i in 0..1000u32 {
        assert!(gate.submit(&report("chat", &format!("dev{i}"), v4(i), None, T0 + u64::from(i))).unwrap().is_counted());
        assert!(gate.dedupe_entries() <= 100);
    }
    // At the cap the oldest entry is forgotten first (fail open): dev0 counts again, dev999 not.
    assert!(gate.submit(&report("chat", "dev0", v4(0), None, T0 + 1000)).unwrap().is_counted());
    assert_eq!(
        gate.submit(&report("chat", "dev999", v4(999), None, T0 + 1000)).unwrap(),
        Verdict::Acknowledged(NotCounted::Duplicate)
    );
    // After the window everything is gone.
    gate.submit(&report("chat", "late", v4(5000), None, T0 + 1000 + 1801)).unwrap();
    assert_eq!(gate.dedupe_entries(), 1);
}

#[test]
fn limiter_tables_are_bounded_and_refilled_buckets_are_swept() {
    let cfg = GateConfig {
        max_ip_buckets: 50,
        ip_limit: BucketConfig { burst: 2.0, per_hour: 60.0 },
        ..GateConfig::default()
    };
    let mut gate = ReportGate::new(cfg);
    for i in 0..50u32 {
        assert!(gate.submit(&report("chat", &format!("d{i}"), v4(i), None, T0)).unwrap().is_counted());
    }
    assert_eq!(gate.ip_buckets(), 50);
    // Table full of live buckets: a new source is acknowledged, not counted, not stored.
    assert_eq!(
        gate.submit(&report("chat", "new", v4(999), None, T0 + 1)).unwrap(),
        Verdict::Acknowledged(NotCounted::Saturated)
    );
    assert_eq!(gate.ip_buckets(), 50);
    // One token per minute: two minutes later every bucket is full again and is swept.
    assert!(gate.submit(&report("chat", "new", v4(999), None, T0 + 121)).unwrap().is_counted());
    assert_eq!(gate.ip_buckets(), 1);
}

#[test]
fn malformed_reports_are_rejected_before_anything_is_recorded() {
    let mut gate = ReportGate::new(GateConfig::default());
    assert_eq!(gate.submit(&report("", "a", v4(1), None, T0)), Err(ReportError::EmptyService));
    assert_eq!(gate.submit(&report("chat", "", v4(1), None, T0)), Err(ReportError::EmptyReporter));
    let long = "x".repeat(257);
    assert_eq!(gate.submit(&report("chat", &long, v4(1), None, T0)), Err(ReportError::KeyTooLong));
    assert_eq!(gate.submit(&report("chat", "a", v4(1), Some(&long), T0)), Err(ReportError::KeyTooLong));
    assert_eq!(gate.dedupe_entries(), 0);
    assert_eq!(gate.ip_buckets(), 0);
}

#[test]
fn regions_are_trimmed_and_bounded() {
    assert_eq!(Region::new("  Jakarta Selatan ").unwrap().as_str(), "Jakarta Selatan");
    assert_eq!(Region::new("   "), Err(ReportError::EmptyRegion));
    assert_eq!(Region::new(&"a".repeat(65)), Err(ReportError::RegionTooLong));
    assert!(Region::new(&"é".repeat(32)).is_ok());
    assert_eq!(Region::new("Bali\nx"), Err(ReportError::RegionInvalid));
}

#[test]
fn problem_types_have_stable_names() {
    let names: Vec<&str> = ProblemType::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(names, ["cant_send", "cant_log_in", "app_wont_load", "messages_delayed", "other"]);
    for p in ProblemType::ALL {
        assert_eq!(ProblemType::parse(p.as_str()), Ok(p));
    }
    assert_eq!(ProblemType::parse("meh"), Err(ReportError::UnknownProblemType));
}
