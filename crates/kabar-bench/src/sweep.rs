//! The `chatsweep` scenario: the highest total 1:1 message rate a server holds with p99 under a
//! limit (default 50 ms), no message lost and the delivered rate within 5 % of the target.
//!
//! P pairs log in once; each step runs the `chat` scenario's fixed-rate load (chat.rs) at one total
//! rate for `--warmup` + `--duration` seconds, waits up to `--drain` s for what is in flight, then
//! lets the connections and the server settle before the next step. The rate doubles from
//! `--sweep-start` while steps hold, then bisects between the highest held and the lowest failed
//! rate until they are within `--sweep-precision` (relative) of each other (or `--sweep-max-steps`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::chat::{self, ns_at, Plan};
use crate::conn::{Conn, Ctx};
use crate::metrics::{lat_summary, proc_cpu_s, round1, round3, CpuMeter};
use crate::scenarios::{self, base, close_all, error_summary, run_pairs};
use crate::Args;

/// Rates tried by the sweep: doubling, then bisection. Pure, so the schedule is unit-tested.
#[derive(Clone, Debug)]
pub struct Search {
    start: f64,
    max: f64,
    min: f64,
    precision: f64,
    max_steps: u32,
    steps: u32,
    held: Option<f64>,
    failed: Option<f64>,
}

impl Search {
    pub fn new(start: f64, max: f64, precision: f64, max_steps: u32) -> Search {
        Search {
            start: start.max(1.0),
            max: max.max(start),
            // Below this a failing start is not worth halving further.
            min: (start / 64.0).max(1.0),
            precision: precision.max(0.001),
            max_steps,
            steps: 0,
            held: None,
            failed: None,
        }
    }

    /// The next total rate to try, or None when the answer is found (or the step budget is spent).
    pub fn next(&self) -> Option<f64> {
        if self.steps >= self.max_steps {
            return None;
        }
        match (self.held, self.failed) {
            (None, None) => Some(self.start),
            (Some(h), None) => (h < self.max).then(|| (h * 2.0).min(self.max)),
            (None, Some(f)) => Some((f / 2.0).round()).filter(|r| *r >= self.min && *r < f),
            (Some(h), Some(f)) => {
                let mid = ((h + f) / 2.0).round();
                (f - h > self.precision * h && mid > h && mid < f).then_some(mid)
            }
        }
    }

    pub fn record(&mut self, rate: f64, held: bool) {
        self.steps += 1;
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
    }

    pub fn held(&self) -> Option<f64> {
        self.held
    }

    pub fn failed(&self) -> Option<f64> {
        self.failed
    }
}

/// What one step measured.
#[derive(Clone, Debug, Default)]
pub struct StepOutcome {
    pub target: f64,
    pub delivered_per_s: f64,
    pub p99_ms: Option<f64>,
    pub lost: i64,
    pub bad: u64,
    pub bounced: u64,
    pub session_errors: u64,
}

/// Why a step did not hold, or None when it held.
pub fn verdict(o: &StepOutcome, p99_limit_ms: f64, max_shortfall: f64) -> Option<String> {
    let Some(p99) = o.p99_ms else {
        return Some("nothing delivered".into());
    };
    if o.session_errors > 0 {
        return Some(format!("{} session errors", o.session_errors));
    }
    if o.lost > 0 {
        return Some(format!("{} lost", o.lost));
    }
    if o.bad > 0 || o.bounced > 0 {
        return Some(format!("{} bad, {} bounced", o.bad, o.bounced));
    }
    if p99 >= p99_limit_ms {
        return Some(format!("p99 {p99} ms ≥ {p99_limit_ms} ms"));
    }
    if o.delivered_per_s < o.target * (1.0 - max_shortfall) {
        return Some(format!(
            "delivered {:.1}/s < {:.0} % of the target",
            o.delivered_per_s,
            100.0 * (1.0 - max_shortfall)
        ));
    }
    None
}

/// Consecutive connections back into pairs (run_pairs returns each pair's two in order).
fn repair(conns: Vec<Conn>) -> Vec<(Conn, Conn)> {
    let mut out = Vec::new();
    let mut it = conns.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    out
}

/// Reads every pair until quiet, then waits (bounded) for the server's CPU to drop: a step starts
/// on a server that has finished the previous one's backlog.
async fn settle(
    pairs: Vec<(Conn, Conn)>,
    pid: Option<u32>,
    until: Instant,
) -> (Vec<(Conn, Conn)>, u64, u64) {
    let mut set = JoinSet::new();
    for (mut a, mut b) in pairs {
        set.spawn(async move {
            let r = chat::settle_pair(&mut a, &mut b, Duration::from_millis(500), until).await;
            (a, b, r)
        });
    }
    let (mut out, mut read, mut failed) = (Vec::new(), 0u64, 0u64);
    while let Some(r) = set.join_next().await {
        match r {
            Ok((a, b, Ok(n))) => {
                read += n;
                out.push((a, b));
            }
            Ok((a, b, Err(_))) => {
                failed += 1;
                out.push((a, b));
            }
            Err(_) => failed += 1,
        }
    }
    if let Some(pid) = pid {
        // Server below a fifth of a core over 0.5 s: its queues (archive writes too) are empty.
        while Instant::now() < until {
            let (c0, t0) = (proc_cpu_s(pid), Instant::now());
            sleep(Duration::from_millis(500)).await;
            match (c0, proc_cpu_s(pid)) {
                (Some(a), Some(b)) if (b - a) / t0.elapsed().as_secs_f64() < 0.2 => break,
                (Some(_), Some(_)) => {}
                _ => break,
            }
        }
    }
    (out, read, failed)
}

pub async fn chatsweep(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let n = 2 * args.pairs;
    let conns = match scenarios::login_pairs(args, &ctx, "chatsweep").await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let pid = args.pid();
    let mut pairs = scenarios::pair_up(conns);
    let mut search = Search::new(
        args.sweep_start,
        args.sweep_max,
        args.sweep_precision,
        args.sweep_max_steps,
    );
    let mut res = base(args, "chatsweep");
    let mut steps = Vec::new();
    let mut held_row = None::<Map<String, Value>>;
    let (mut max_gen, mut max_other, mut max_server) = (0.0f64, 0.0f64, 0.0f64);
    let t_sweep = Instant::now();
    while let Some(total) = search.next() {
        let now = Instant::now();
        let t0 = now + Duration::from_secs_f64(args.warmup);
        let stop = t0 + Duration::from_secs_f64(args.duration);
        let plan = Plan {
            rate: total / n as f64,
            window: 0,
            record_from_ns: ns_at(t0),
            stale_before_ns: ns_at(now),
            stop_sending: stop,
            drain_until: stop + Duration::from_secs_f64(args.drain),
            segments: Vec::new(),
            pad: "x".repeat(args.body_bytes).into(),
            no_store: args.no_store,
        };
        let cpu_task = tokio::spawn(async move {
            sleep_until(t0).await;
            let m = CpuMeter::start(pid);
            sleep_until(stop).await;
            m.read()
        });
        let (stats, conns) = run_pairs(pairs, &plan).await;
        let cpu = cpu_task.await.unwrap_or_default();
        let span = args
            .duration
            .max((stats.last_recv_ns as f64 - ns_at(t0) as f64) / 1e9);
        let mut row = Map::new();
        row.insert("rate".into(), json!(total));
        let delivered_per_s = round1(stats.recv as f64 / span);
        row.insert("delivered_per_s".into(), json!(delivered_per_s));
        let lost = stats.sent as i64 - stats.recv as i64;
        row.insert("sent".into(), json!(stats.sent));
        row.insert("lost".into(), json!(lost));
        row.insert("bad".into(), json!(stats.bad));
        row.insert("bounced".into(), json!(stats.bounced));
        row.insert("stale".into(), json!(stats.stale));
        let session_errors = stats.errors.len() as u64;
        if session_errors > 0 {
            row.insert("session_errors".into(), error_summary(&stats));
        }
        let mut lat = stats.lat;
        lat_summary(&mut row, lat.pop().unwrap_or_default(), "");
        let cpu_of = |k: &str| cpu.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        max_gen = max_gen.max(cpu_of("gen_cpu_pct"));
        max_other = max_other.max(cpu_of("other_cpu_pct"));
        max_server = max_server.max(cpu_of("server_cpu_pct"));
        row.extend(cpu);
        let outcome = StepOutcome {
            target: total,
            delivered_per_s,
            p99_ms: row.get("p99_ms").and_then(Value::as_f64),
            lost,
            bad: stats.bad,
            bounced: stats.bounced,
            session_errors,
        };
        let why = verdict(&outcome, args.p99_limit_ms, 0.05);
        row.insert("held".into(), json!(why.is_none()));
        if let Some(w) = &why {
            row.insert("reason".into(), json!(w));
        }
        search.record(total, why.is_none());
        let complete = conns.len() as u64 == n;
        // A step's drain ends at a deadline, so a failed one can leave a backlog: read it and let
        // the server finish before the next step (bounded).
        let t_settle = Instant::now();
        let (p, read, settle_failed) =
            settle(repair(conns), pid, t_settle + Duration::from_secs(20)).await;
        row.insert(
            "settle_s".into(),
            json!(round3(t_settle.elapsed().as_secs_f64())),
        );
        row.insert("settle_read".into(), json!(read));
        if why.is_none() && search.held() == Some(total) {
            held_row = Some(row.clone());
        }
        steps.push(Value::Object(row));
        pairs = p;
        if !complete || settle_failed > 0 {
            res.insert(
                "error".into(),
                json!("a pair's session failed; sweep stopped"),
            );
            break;
        }
    }
    res.insert("pairs".into(), json!(args.pairs));
    res.insert("step_s".into(), json!(args.duration));
    res.insert("warmup_s".into(), json!(args.warmup));
    res.insert("p99_limit_ms".into(), json!(args.p99_limit_ms));
    res.insert("precision".into(), json!(args.sweep_precision));
    res.insert("body_bytes".into(), json!(args.body_bytes));
    res.insert("no_store_hint".into(), json!(args.no_store));
    res.insert("max_rate_held".into(), json!(search.held()));
    res.insert("first_failed_rate".into(), json!(search.failed()));
    if let Some(h) = &held_row {
        for (k, out) in [
            ("delivered_per_s", "held_delivered_per_s"),
            ("p50_ms", "held_p50_ms"),
            ("p99_ms", "held_p99_ms"),
            ("server_cpu_pct", "held_server_cpu_pct"),
        ] {
            res.insert(out.into(), h.get(k).cloned().unwrap_or(Value::Null));
        }
    }
    // Row-level CPU flags (ratios.py): the worst step, since any step can be the one that decides.
    res.insert("gen_cpu_pct".into(), json!(max_gen));
    res.insert("other_cpu_pct".into(), json!(max_other));
    if pid.is_some() {
        res.insert("server_cpu_pct".into(), json!(max_server));
    }
    res.insert(
        "sweep_s".into(),
        json!(round3(t_sweep.elapsed().as_secs_f64())),
    );
    res.insert("steps".into(), Value::Array(steps));
    close_all(pairs.into_iter().flat_map(|(a, b)| [a, b]).collect()).await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut s: Search, capacity: f64) -> (Vec<f64>, Option<f64>) {
        let mut tried = Vec::new();
        while let Some(r) = s.next() {
            tried.push(r);
            s.record(r, r <= capacity);
        }
        (tried, s.held())
    }

    #[test]
    fn search_doubles_then_bisects_to_within_the_precision() {
        let (tried, held) = run(Search::new(250.0, 1e6, 0.1, 20), 3300.0);
        assert_eq!(&tried[..6], &[250.0, 500.0, 1000.0, 2000.0, 4000.0, 3000.0]);
        let held = held.expect("held something");
        assert!(held <= 3300.0 && held >= 3300.0 / 1.1, "held {held}");
        assert!(tried.len() <= 10, "{tried:?}");
    }

    #[test]
    fn search_halves_when_the_start_fails_and_stops_at_the_floor() {
        let (tried, held) = run(Search::new(1000.0, 1e6, 0.1, 20), 300.0);
        assert_eq!(&tried[..3], &[1000.0, 500.0, 250.0]);
        assert!(
            held.is_some_and(|h| (273.0..=300.0).contains(&h)),
            "{tried:?}"
        );
        let (tried, held) = run(Search::new(64.0, 1e6, 0.1, 20), 0.0);
        assert_eq!(held, None);
        assert_eq!(tried.last(), Some(&1.0));
    }

    #[test]
    fn search_stops_at_the_maximum_and_at_the_step_budget() {
        let (tried, held) = run(Search::new(1000.0, 3000.0, 0.1, 20), 1e9);
        assert_eq!(tried, vec![1000.0, 2000.0, 3000.0]);
        assert_eq!(held, Some(3000.0));
        let (tried, _) = run(Search::new(1.0, 1e9, 0.1, 4), 1e9);
        assert_eq!(tried.len(), 4);
    }

    #[test]
    fn verdict_fails_on_p99_loss_shortfall_and_errors() {
        let ok = StepOutcome {
            target: 1000.0,
            delivered_per_s: 990.0,
            p99_ms: Some(12.0),
            ..StepOutcome::default()
        };
        assert_eq!(verdict(&ok, 50.0, 0.05), None);
        let slow = StepOutcome {
            p99_ms: Some(50.0),
            ..ok.clone()
        };
        assert!(verdict(&slow, 50.0, 0.05).is_some_and(|r| r.contains("p99")));
        let lossy = StepOutcome {
            lost: 1,
            ..ok.clone()
        };
        assert!(verdict(&lossy, 50.0, 0.05).is_some_and(|r| r.contains("lost")));
        let short = StepOutcome {
            delivered_per_s: 940.0,
            ..ok.clone()
        };
        assert!(verdict(&short, 50.0, 0.05).is_some_and(|r| r.contains("target")));
        let broken = StepOutcome {
            session_errors: 2,
            ..ok.clone()
        };
        assert!(verdict(&broken, 50.0, 0.05).is_some());
        let none = StepOutcome { p99_ms: None, ..ok };
        assert!(verdict(&none, 50.0, 0.05).is_some());
    }
}
