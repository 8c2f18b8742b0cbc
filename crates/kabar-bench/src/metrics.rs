//! /proc readings (CPU, RSS, affinity), percentiles, and the monotonic clock used for timestamps.

use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Map, Value};

/// Linux exports CPU times in USER_HZ, which is 100 on every architecture Linux supports today.
const CLK_TCK: f64 = 100.0;

static EPOCH: OnceLock<Instant> = OnceLock::new();

pub fn init_clock() {
    let _ = EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the generator started (monotonic). Message bodies carry this value.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn instant_to_ns(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// utime+stime of a whole process (all threads), seconds.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = parts.get(11)?.parse().ok()?;
    let s: f64 = parts.get(12)?.parse().ok()?;
    Some((u + s) / CLK_TCK)
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPUs a process may run on, from `Cpus_allowed_list` ("0-1,3").
pub fn affinity(pid: u32) -> Option<Vec<u32>> {
    let list = status_field(pid, "Cpus_allowed_list:")?;
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Busy CPU seconds of the whole machine (all CPUs), from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy =
        v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some(busy / CLK_TCK)
}

/// CPU% (100 = one core) of the server, of this generator, and of everything else, over a window.
pub struct CpuMeter {
    pid: Option<u32>,
    t0: Instant,
    s0: Option<f64>,
    g0: f64,
    m0: Option<f64>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        CpuMeter {
            pid,
            t0: Instant::now(),
            s0: pid.and_then(proc_cpu_s),
            g0: proc_cpu_s(std::process::id()).unwrap_or(0.0),
            m0: machine_busy_s(),
        }
    }

    pub fn read(&self) -> Map<String, Value> {
        let dt = self.t0.elapsed().as_secs_f64().max(1e-9);
        let g = proc_cpu_s(std::process::id()).unwrap_or(0.0) - self.g0;
        let mut out = Map::new();
        out.insert("gen_cpu_pct".into(), json!(round1(100.0 * g / dt)));
        let mut s = 0.0;
        if let (Some(pid), Some(s0)) = (self.pid, self.s0) {
            if let Some(s1) = proc_cpu_s(pid) {
                s = s1 - s0;
                out.insert("server_cpu_pct".into(), json!(round1(100.0 * s / dt)));
            }
        }
        if let (Some(m0), Some(m1)) = (self.m0, machine_busy_s()) {
            out.insert(
                "other_cpu_pct".into(),
                json!(round1((100.0 * (m1 - m0 - s - g) / dt).max(0.0))),
            );
        }
        out
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Same rank rule as xmppload.py, so both generators report comparable percentiles.
pub fn pct(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as f64;
    // Python's round() rounds half to even.
    let k = ((p / 100.0 * n + 0.5).round_ties_even() as i64 - 1).clamp(0, sorted.len() as i64 - 1)
        as usize;
    Some(sorted[k])
}

/// `{prefix}n, {prefix}p50_ms, p99, p999, max` from latencies in ns.
pub fn lat_summary(out: &mut Map<String, Value>, mut lat: Vec<u64>, prefix: &str) {
    lat.sort_unstable();
    let ms = |v: Option<u64>| v.map(|x| round3(x as f64 / 1e6));
    out.insert(format!("{prefix}n"), json!(lat.len()));
    out.insert(format!("{prefix}p50_ms"), json!(ms(pct(&lat, 50.0))));
    out.insert(format!("{prefix}p99_ms"), json!(ms(pct(&lat, 99.0))));
    out.insert(format!("{prefix}p999_ms"), json!(ms(pct(&lat, 99.9))));
    out.insert(format!("{prefix}max_ms"), json!(ms(lat.last().copied())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_the_python_rule() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(pct(&v, 50.0), Some(500));
        assert_eq!(pct(&v, 99.0), Some(990));
        assert_eq!(pct(&v, 99.9), Some(1000));
        assert_eq!(pct(&[7], 99.9), Some(7));
        assert_eq!(pct(&[], 50.0), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(proc_cpu_s(std::process::id()).is_some());
        assert!(proc_rss_kb(std::process::id()).is_some_and(|kb| kb > 0));
        assert!(affinity(std::process::id()).is_some_and(|a| !a.is_empty()));
    }
}
