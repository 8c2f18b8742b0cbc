//! `kabar-monitor-eval [--seed N | --seeds N [--first-seed F]] [--weeks W] [--misses] [--windows-only] [--no-tail] [--oracle]`: run the
//! detector evaluation on synthetic labelled series and print the report. `--seeds N` aggregates
//! seeds F..F+N (F = 1 unless given: a held-out set is e.g. `--seeds 12 --first-seed 101`);
//! `--misses` lists the 5× outages not detected within 5 minutes; `--windows-only` turns the
//! CUSUM, the onset gate and the tail test off (the detector before them); `--no-tail` only the
//! exact short-window tail test; `--oracle` prints the upper bound on 5× recall@5min per service
//! (and an oracle detector knowing the exact rates) instead of evaluating the detector.

use std::process::ExitCode;

use kabar_monitor::eval::{run_evaluation_seeds, EvalConfig};
use kabar_monitor::oracle::oracle_bound;

fn main() -> ExitCode {
    let mut cfg = EvalConfig::standard(1);
    let mut seeds = vec![1u64];
    let mut count: Option<u64> = None;
    let mut first = 1u64;
    let mut misses = false;
    let mut oracle = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--misses" {
            misses = true;
            continue;
        }
        // The upper bound on 5× recall@5min per service and the oracle detector (src/oracle.rs)
        // instead of the detector's evaluation.
        if arg == "--oracle" {
            oracle = true;
            continue;
        }
        // The detector as it was before the CUSUM and the onset gate, for before/after figures.
        if arg == "--windows-only" {
            cfg.monitor.detector.cusum = None;
            cfg.monitor.detector.onset = None;
            cfg.monitor.detector.tail = None;
            continue;
        }
        // The detector before the exact tail test (CUSUM and onset gate kept), for before/after.
        if arg == "--no-tail" {
            cfg.monitor.detector.tail = None;
            continue;
        }
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--seed", Some(v)) => seeds = vec![v],
            ("--seeds", Some(n)) if (1..=1000).contains(&n) => count = Some(n),
            ("--first-seed", Some(f)) if f < u64::MAX / 2 => first = f,
            ("--weeks", Some(w)) if w > u64::from(cfg.warmup_weeks) && w <= 520 => cfg.weeks = w as u32,
            ("-h" | "--help", _) => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => {
                usage();
                return ExitCode::from(2);
            }
        }
    }
    if let Some(n) = count {
        seeds = (first..first + n).collect();
    }
    if oracle {
        print!("{}", oracle_bound(&cfg, &seeds, 5.0, 5, &[1.0, 0.5]));
        return ExitCode::SUCCESS;
    }
    match run_evaluation_seeds(&cfg, &seeds) {
        Some(report) => {
            print!("{report}");
            if misses {
                println!("\n5x outages not detected within 5 minutes (seed service local-hour minutes normal-rate/min TTD):");
                for m in &report.missed_5x {
                    let ttd = m.ttd.map_or_else(|| "missed".to_owned(), |t| t.to_string());
                    println!("{:>5} {:<9} {:>2}h {:>4} {:>7.3} {}", m.seed, m.service, m.local_hour, m.minutes, m.normal_rate, ttd);
                }
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

fn usage() {
    eprintln!("usage: kabar-monitor-eval [--seed N | --seeds N [--first-seed F]] [--weeks W] [--misses] [--windows-only] [--no-tail] [--oracle]   (W > 3 warm-up weeks)");
}
