//! kabar's outage monitor core, sans-IO: Downdetector-style "no problems / possible problems /
//! problems detected" per service from crowd problem reports and probes.
//!
//! * [`reports`]: which reports are counted (30-minute dedupe per reporter and service, per-IP
//!   and per-account token buckets, bounded memory).
//! * [`baseline`]: 1-minute buckets and the seasonal hour-of-week baseline with cold start.
//! * [`detector`]: rolling windows against the baseline, probes, hysteresis, incidents.
//! * [`monitor`]: a [`ServiceMonitor`] per service and the [`Monitor`] holding them with the gate.
//! * [`eval`]: reproducible evaluation on labelled synthetic series ([`run_evaluation`]).
//! * [`oracle`]: the best recall any detector could reach on those series (an upper bound) and an
//!   oracle detector that knows the exact rates.
//!
//! Time is always passed in (unix seconds for events, unix minutes inside); nothing here does
//! I/O, spawns, or reads a clock. See docs/MONITOR.md.

pub mod baseline;
pub mod detector;
pub mod eval;
pub mod monitor;
pub mod oracle;
pub mod reports;
pub mod tail;

pub use baseline::{Baseline, BaselineConfig, Expectation, LevelSource, MinuteBucket, MinuteBuckets, WindowSum};
pub use detector::{
    AnnotateError, Annotation, Cause, Detector, DetectorConfig, Event, Incident, ProbeLevel, ProbeTracker, Resolution,
    State, Thresholds, TimelineEntry, WindowRule, WindowSignal,
};
pub use eval::{run_evaluation, run_evaluation_seeds, run_evaluation_with, EvalConfig, EvalReport};
pub use monitor::{Monitor, MonitorConfig, MonitorError, ServiceMonitor, ServiceStatus};
pub use tail::{TailRule, TailSignal};
pub use reports::{
    BucketConfig, GateConfig, GateStats, NotCounted, ProblemType, Region, Report, ReportError, ReportGate, Verdict,
};
