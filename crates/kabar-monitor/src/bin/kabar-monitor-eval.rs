//! `kabar-monitor-eval [--seed N | --seeds N] [--weeks W]`: run the detector evaluation on
//! synthetic labelled series and print the report. `--seeds N` aggregates seeds 1..=N.

use std::process::ExitCode;

use kabar_monitor::eval::{run_evaluation_seeds, EvalConfig};

fn main() -> ExitCode {
    let mut cfg = EvalConfig::standard(1);
    let mut seeds = vec![1u64];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--seed", Some(v)) => seeds = vec![v],
            ("--seeds", Some(n)) if (1..=1000).contains(&n) => seeds = (1..=n).collect(),
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
    match run_evaluation_seeds(&cfg, &seeds) {
        Some(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    }
}

fn usage() {
    eprintln!("usage: kabar-monitor-eval [--seed N | --seeds N] [--weeks W]   (W > 3 warm-up weeks)");
}
