//! The scenarios. Each returns one JSON object (field names follow xmppload.py where it has them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::chat::{self, ns_at, Plan, Stats};
use crate::conn::{self, Conn, Ctx};
use crate::metrics::{lat_summary, now_ns, proc_rss_kb, round1, round3, CpuMeter};
use crate::Args;

/// Read buffer per connection: small for the many-connection scenarios, larger for chat.
const SMALL_BUF: usize = 4096;
pub(crate) const CHAT_BUF: usize = 64 * 1024;

pub(crate) type Errors = BTreeMap<String, u64>;

fn count_err(errors: &mut Errors, e: &anyhow::Error) {
    let mut k = e.to_string();
    if k.len() > 60 {
        let mut cut = 60;
        while !k.is_char_boundary(cut) {
            cut -= 1;
        }
        k.truncate(cut);
    }
    *errors.entry(k).or_default() += 1;
}

pub(crate) fn errors_json(e: &Errors) -> Value {
    json!(e)
}

pub fn base(args: &Args, scenario: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("server".into(), json!(args.server_name));
    m.insert(
        "target".into(),
        json!(format!("{}:{}", args.host, args.port)),
    );
    m.insert("domain".into(), json!(args.domain));
    m.insert("mech".into(), json!(args.mech.name()));
    m.insert("tls".into(), json!(args.tls));
    m
}

pub(crate) struct Logins {
    pub(crate) conns: Vec<(u64, Conn)>,
    pub(crate) errors: Errors,
    /// Per-login durations (ns) and completion times (generator ns).
    lat: Vec<u64>,
    done_at: Vec<u64>,
}

/// Logs in `idxs` with at most `concurrency` logins in flight. `tokens`: FAST tokens by index
/// (SASL2 path) when `fast` is set.
pub(crate) async fn login_many(
    ctx: &Arc<Ctx>,
    idxs: Vec<u64>,
    concurrency: usize,
    deadline: Option<Instant>,
    fast: bool,
    tokens: &BTreeMap<u64, String>,
    read_buf: usize,
) -> Logins {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for idx in idxs {
        let ctx = ctx.clone();
        let sem = sem.clone();
        let token = tokens.get(&idx).cloned();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            if deadline.is_some_and(|d| Instant::now() > d) {
                return (idx, Err(anyhow::anyhow!("deadline")), 0);
            }
            let t0 = now_ns();
            let r = if fast {
                conn::login_fast(&ctx, idx, token.as_deref(), read_buf).await
            } else {
                conn::login(&ctx, &ctx.user(idx), read_buf).await
            };
            (idx, r, now_ns() - t0)
        });
    }
    let mut out = Logins {
        conns: Vec::new(),
        errors: Errors::new(),
        lat: Vec::new(),
        done_at: Vec::new(),
    };
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((idx, Ok(c), dt)) => {
                out.conns.push((idx, c));
                out.lat.push(dt);
                out.done_at.push(now_ns());
            }
            Ok((_, Err(e), _)) => count_err(&mut out.errors, &e),
            Err(e) => count_err(&mut out.errors, &anyhow::anyhow!("task: {e}")),
        }
    }
    out.conns.sort_by_key(|(i, _)| *i);
    out
}

pub(crate) async fn close_all(conns: Vec<Conn>) {
    let mut set = JoinSet::new();
    for c in conns {
        set.spawn(c.close());
    }
    let _ = timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
}

pub(crate) fn idx_range(args: &Args, n: u64) -> Vec<u64> {
    (args.first..args.first + n).collect()
}

pub async fn login(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let pid = args.pid();
    let rss0 = pid.and_then(proc_rss_kb);
    let cpu = CpuMeter::start(pid);
    let t0 = Instant::now();
    let l = login_many(
        &ctx,
        idx_range(args, args.users),
        args.concurrency,
        None,
        false,
        &BTreeMap::new(),
        SMALL_BUF,
    )
    .await;
    let dt = t0.elapsed().as_secs_f64();
    let mut res = base(args, "login");
    res.insert("users".into(), json!(args.users));
    res.insert("concurrency".into(), json!(args.concurrency));
    res.insert("ok".into(), json!(l.conns.len()));
    res.insert("errors".into(), errors_json(&l.errors));
    res.insert("seconds".into(), json!(round3(dt)));
    res.insert(
        "logins_per_s".into(),
        json!(round1(l.conns.len() as f64 / dt)),
    );
    lat_summary(&mut res, l.lat, "login_");
    res.extend(cpu.read());
    if pid.is_some() {
        res.insert("server_rss_kb_before".into(), json!(rss0));
        res.insert(
            "server_rss_kb_after".into(),
            json!(pid.and_then(proc_rss_kb)),
        );
    }
    close_all(l.conns.into_iter().map(|(_, c)| c).collect()).await;
    sleep(Duration::from_millis(500)).await;
    res
}

pub async fn idle(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let pid = args.pid();
    let rss0 = pid.and_then(proc_rss_kb);
    let cpu = CpuMeter::start(pid);
    let t0 = Instant::now();
    let deadline = Some(t0 + Duration::from_secs_f64(args.duration * 20.0));
    let l = login_many(
        &ctx,
        idx_range(args, args.users),
        args.concurrency,
        deadline,
        false,
        &BTreeMap::new(),
        SMALL_BUF,
    )
    .await;
    let t_login = t0.elapsed().as_secs_f64();
    let login_cpu = cpu.read();
    sleep(Duration::from_secs_f64(args.duration)).await;
    let rss1 = pid.and_then(proc_rss_kb);
    let cpu_idle = CpuMeter::start(pid);
    sleep(Duration::from_secs_f64(args.duration.min(5.0))).await;
    let idle_cpu = cpu_idle.read();
    // liveness: every held connection must still answer a ping
    let sem = Arc::new(Semaphore::new(500));
    let mut set = JoinSet::new();
    for (_, mut c) in l.conns {
        let ctx = ctx.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let domain = ctx.domain.clone();
            let ok = c
                .iq(
                    &ctx,
                    "get",
                    Some(&domain),
                    kabar_xml::elem("ping", conn::NS_PING),
                )
                .await
                .is_ok();
            (ok, c)
        });
    }
    let mut alive = 0u64;
    let mut conns = Vec::new();
    while let Some(Ok((ok, c))) = set.join_next().await {
        alive += u64::from(ok);
        conns.push(c);
    }
    let connected = conns.len();
    let mut res = base(args, "idle");
    res.insert("target_conns".into(), json!(args.users));
    res.insert("connected".into(), json!(connected));
    res.insert("alive_after_hold".into(), json!(alive));
    res.insert("hold_s".into(), json!(args.duration));
    res.insert("connect_s".into(), json!(round3(t_login)));
    res.insert("errors".into(), errors_json(&l.errors));
    res.insert("login_phase_cpu".into(), Value::Object(login_cpu));
    res.insert(
        "idle_phase_server_cpu_pct".into(),
        idle_cpu
            .get("server_cpu_pct")
            .cloned()
            .unwrap_or(Value::Null),
    );
    if pid.is_some() {
        res.insert("server_rss_kb_before".into(), json!(rss0));
        res.insert("server_rss_kb_held".into(), json!(rss1));
        let per = match (rss0, rss1) {
            (Some(a), Some(b)) if connected > 0 => {
                json!(((b as f64 - a as f64) / connected as f64 * 100.0).round() / 100.0)
            }
            _ => Value::Null,
        };
        res.insert("rss_kb_per_conn".into(), per);
    }
    close_all(conns).await;
    sleep(Duration::from_secs(1)).await;
    res
}

pub(crate) fn pair_up(conns: Vec<(u64, Conn)>) -> Vec<(Conn, Conn)> {
    let mut out = Vec::new();
    let mut it = conns.into_iter();
    while let (Some((_, a)), Some((_, b))) = (it.next(), it.next()) {
        out.push((a, b));
    }
    out
}

pub(crate) async fn run_pairs(pairs: Vec<(Conn, Conn)>, plan: &Plan) -> (Stats, Vec<Conn>) {
    let mut set = JoinSet::new();
    for (a, b) in pairs {
        set.spawn(chat::run_pair(a, b, plan.clone()));
    }
    let mut total = Stats {
        lat: vec![Vec::new(); plan.segments.len() + 1],
        ..Stats::default()
    };
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok((s, a, b)) = r {
            total.merge(s);
            conns.push(a);
            conns.push(b);
        }
    }
    (total, conns)
}

fn per_sender_rate(args: &Args, senders: u64) -> f64 {
    if args.total_rate > 0.0 {
        args.total_rate / senders.max(1) as f64
    } else {
        args.rate
    }
}

pub(crate) fn error_summary(stats: &Stats) -> Value {
    let mut e = Errors::new();
    for s in &stats.errors {
        count_err(&mut e, &anyhow::anyhow!("{s}"));
    }
    json!(e)
}

/// Logs in the 2P accounts of `--pairs`; when one fails, the scenario's error row instead.
pub(crate) async fn login_pairs(
    args: &Args,
    ctx: &Arc<Ctx>,
    scenario: &str,
) -> Result<Vec<(u64, Conn)>, Map<String, Value>> {
    let n = 2 * args.pairs;
    let l = login_many(
        ctx,
        idx_range(args, n),
        args.concurrency,
        None,
        false,
        &BTreeMap::new(),
        CHAT_BUF,
    )
    .await;
    if (l.conns.len() as u64) < n {
        let mut res = base(args, scenario);
        res.insert("error".into(), json!("could not log in all users"));
        res.insert("ok".into(), json!(l.conns.len()));
        res.insert("errors".into(), errors_json(&l.errors));
        close_all(l.conns.into_iter().map(|(_, c)| c).collect()).await;
        return Err(res);
    }
    Ok(l.conns)
}

pub async fn chat(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let n = 2 * args.pairs;
    let conns = match login_pairs(args, &ctx, "chat").await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let rate = per_sender_rate(args, n);
    let now = Instant::now();
    let t0 = now + Duration::from_secs_f64(args.warmup);
    let stop = t0 + Duration::from_secs_f64(args.duration);
    let plan = Plan {
        rate,
        window: args.window,
        record_from_ns: ns_at(t0),
        stale_before_ns: 0,
        stop_sending: stop,
        drain_until: stop + Duration::from_secs_f64(args.drain),
        segments: Vec::new(),
        pad: "x".repeat(args.body_bytes).into(),
        no_store: args.no_store,
    };
    let pid = args.pid();
    let cpu_task = tokio::spawn(async move {
        sleep_until(t0).await;
        let m = CpuMeter::start(pid);
        sleep_until(stop).await;
        m.read()
    });
    let (stats, conns) = run_pairs(pair_up(conns), &plan).await;
    let cpu = cpu_task.await.unwrap_or_default();
    let t0ns = ns_at(t0) as f64;
    let send_s = args.duration;
    let span = send_s.max((stats.last_recv_ns as f64 - t0ns) / 1e9);
    let mut res = base(args, "chat");
    res.insert("pairs".into(), json!(args.pairs));
    let mode = if rate > 0.0 {
        format!("rate {}/s/sender", round3(rate))
    } else {
        format!("flat-out window {}", args.window)
    };
    res.insert("mode".into(), json!(mode));
    res.insert(
        "rate_total_target".into(),
        json!(if rate > 0.0 {
            Some(round1(rate * n as f64))
        } else {
            None
        }),
    );
    res.insert("duration_s".into(), json!(round3(send_s)));
    res.insert("sent".into(), json!(stats.sent));
    res.insert("delivered".into(), json!(stats.recv));
    res.insert("lost".into(), json!(stats.sent as i64 - stats.recv as i64));
    res.insert("bad".into(), json!(stats.bad));
    res.insert("bounced".into(), json!(stats.bounced));
    res.insert(
        "delivered_per_s".into(),
        json!(round1(stats.recv as f64 / span)),
    );
    res.insert("body_bytes".into(), json!(args.body_bytes));
    res.insert("no_store_hint".into(), json!(args.no_store));
    res.insert("session_errors".into(), error_summary(&stats));
    let mut lat = stats.lat;
    lat_summary(&mut res, lat.pop().unwrap_or_default(), "");
    res.extend(cpu);
    close_all(conns).await;
    sleep(Duration::from_millis(500)).await;
    res
}

pub async fn signup(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let n = 2 * args.pairs;
    let conns = match login_pairs(args, &ctx, "signup").await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let rate = per_sender_rate(args, n);
    if rate <= 0.0 {
        let mut res = base(args, "signup");
        res.insert(
            "error".into(),
            json!("signup needs --rate or --total-rate > 0 (a fixed, moderate chat rate)"),
        );
        return res;
    }
    let t0 = Instant::now();
    let s0 = t0 + Duration::from_secs_f64(args.baseline);
    let s1 = s0 + Duration::from_secs_f64(args.duration);
    let plan = Plan {
        rate,
        window: 0,
        record_from_ns: 0,
        stale_before_ns: 0,
        stop_sending: s1,
        drain_until: s1 + Duration::from_secs_f64(args.drain),
        segments: vec![ns_at(s0), ns_at(s1)],
        pad: "x".repeat(args.body_bytes).into(),
        no_store: args.no_store,
    };
    let pid = args.pid();
    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64 & 0xff_ffff_ffff)
            .unwrap_or(0)
    );
    let counter = Arc::new(AtomicU64::new(0));
    let workers = args.concurrency.max(1);
    let reg_rate = args.reg_rate;
    let max_reg = args.max_registrations;
    let reg_prefix = args.reg_prefix.clone();
    let ctx2 = ctx.clone();
    let surge = tokio::spawn(async move {
        let cpu_b = CpuMeter::start(pid);
        sleep_until(s0).await;
        let cpu_base = cpu_b.read();
        let cs = CpuMeter::start(pid);
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let ctx = ctx2.clone();
            let counter = counter.clone();
            let tag = format!("{reg_prefix}{run_tag}_");
            set.spawn(async move {
                let (mut ok, mut lat, mut fail) = (0u64, Vec::new(), Errors::new());
                loop {
                    if Instant::now() >= s1 {
                        break;
                    }
                    let k = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    if k > max_reg {
                        break;
                    }
                    if reg_rate > 0.0 {
                        // total rate shared by all workers: registration k is due at s0 + k/rate
                        let due = s0 + Duration::from_secs_f64(k as f64 / reg_rate);
                        if due >= s1 {
                            break;
                        }
                        sleep_until(due).await;
                    }
                    let t = now_ns();
                    let r = async {
                        let mut c = conn::register_conn(&ctx).await?;
                        let created = conn::register_on(&mut c, &ctx, &format!("{tag}{k}")).await?;
                        c.close().await;
                        if !created {
                            anyhow::bail!("conflict");
                        }
                        Ok(())
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            ok += 1;
                            lat.push(now_ns() - t);
                        }
                        Err(e) => count_err(&mut fail, &e),
                    }
                }
                (ok, lat, fail)
            });
        }
        let (mut ok, mut lat, mut fail) = (0u64, Vec::new(), Errors::new());
        while let Some(Ok((o, l, f))) = set.join_next().await {
            ok += o;
            lat.extend(l);
            for (k, v) in f {
                *fail.entry(k).or_default() += v;
            }
        }
        let elapsed = s0.elapsed().as_secs_f64();
        (ok, lat, fail, elapsed, cpu_base, cs.read())
    });
    let (stats, conns) = run_pairs(pair_up(conns), &plan).await;
    let (ok, reg_lat, fail, elapsed, cpu_base, cpu_surge) = match surge.await {
        Ok(v) => v,
        Err(e) => (
            0,
            Vec::new(),
            Errors::from([(format!("task: {e}"), 1)]),
            args.duration,
            Map::new(),
            Map::new(),
        ),
    };
    let mut res = base(args, "signup");
    res.insert("pairs".into(), json!(args.pairs));
    res.insert("chat_rate_per_sender".into(), json!(rate));
    res.insert("baseline_s".into(), json!(args.baseline));
    res.insert("surge_s".into(), json!(args.duration));
    res.insert("reg_workers".into(), json!(workers));
    res.insert(
        "reg_rate_target".into(),
        json!(if reg_rate > 0.0 { Some(reg_rate) } else { None }),
    );
    res.insert("registrations_ok".into(), json!(ok));
    res.insert("registration_failures".into(), json!(fail));
    res.insert(
        "registrations_per_s".into(),
        json!(round1(ok as f64 / elapsed.max(1e-9))),
    );
    res.insert("sent".into(), json!(stats.sent));
    res.insert("delivered".into(), json!(stats.recv));
    res.insert("lost".into(), json!(stats.sent as i64 - stats.recv as i64));
    res.insert("session_errors".into(), error_summary(&stats));
    lat_summary(&mut res, reg_lat, "reg_");
    let mut segs = stats.lat.into_iter();
    lat_summary(&mut res, segs.next().unwrap_or_default(), "chat_before_");
    lat_summary(&mut res, segs.next().unwrap_or_default(), "chat_during_");
    res.insert("cpu_baseline".into(), Value::Object(cpu_base));
    res.insert("cpu_surge".into(), Value::Object(cpu_surge));
    close_all(conns).await;
    sleep(Duration::from_millis(500)).await;
    res
}

pub async fn reconnect(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let pid = args.pid();
    let idxs = idx_range(args, args.users);
    let t_init = Instant::now();
    let first = login_many(
        &ctx,
        idxs.clone(),
        args.concurrency,
        None,
        args.fast,
        &BTreeMap::new(),
        SMALL_BUF,
    )
    .await;
    let init_s = t_init.elapsed().as_secs_f64();
    let connected = first.conns.len();
    let mut tokens = BTreeMap::new();
    let mut online = Vec::new();
    let mut held = Vec::new();
    for (idx, c) in first.conns {
        if let Some(t) = &c.fast_token {
            tokens.insert(idx, t.clone());
        }
        online.push(idx);
        held.push(c);
    }
    sleep(Duration::from_secs(1)).await;
    let cpu = CpuMeter::start(pid);
    // Everyone drops at once...
    let t_drop = now_ns();
    let n_dropped = held.len();
    for c in held {
        c.abort(args.rst);
    }
    // ...and reconnects at once (at most --concurrency logins in flight).
    let again = login_many(
        &ctx,
        online,
        args.concurrency,
        None,
        args.fast,
        &tokens,
        SMALL_BUF,
    )
    .await;
    let back_s = again
        .done_at
        .iter()
        .max()
        .map(|t| (t - t_drop) as f64 / 1e9)
        .unwrap_or(0.0);
    let mut res = base(args, "reconnect");
    res.insert("sessions".into(), json!(args.users));
    res.insert("concurrency".into(), json!(args.concurrency));
    res.insert("fast".into(), json!(args.fast));
    res.insert("fast_tokens".into(), json!(tokens.len()));
    res.insert("drop".into(), json!(if args.rst { "rst" } else { "fin" }));
    res.insert("connected".into(), json!(connected));
    res.insert("initial_errors".into(), errors_json(&first.errors));
    res.insert("initial_login_s".into(), json!(round3(init_s)));
    res.insert("dropped".into(), json!(n_dropped));
    res.insert("back_online".into(), json!(again.conns.len()));
    res.insert("errors".into(), errors_json(&again.errors));
    res.insert("all_back_s".into(), json!(round3(back_s)));
    res.insert(
        "logins_per_s".into(),
        json!(round1(again.conns.len() as f64 / back_s.max(1e-9))),
    );
    lat_summary(
        &mut res,
        again.done_at.iter().map(|t| t - t_drop).collect(),
        "online_",
    );
    lat_summary(&mut res, again.lat, "login_");
    res.extend(cpu.read());
    close_all(again.conns.into_iter().map(|(_, c)| c).collect()).await;
    sleep(Duration::from_millis(500)).await;
    res
}

/// Provisioning: creates PREFIX<first>..PREFIX<first+users-1> by in-band registration over
/// `concurrency` connections (an existing account counts as done).
pub async fn register(args: &Args, ctx: Arc<Ctx>) -> Map<String, Value> {
    let next = Arc::new(AtomicU64::new(args.first));
    let end = args.first + args.users;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let ctx = ctx.clone();
        let next = next.clone();
        set.spawn(async move {
            let (mut created, mut existed, mut fail) = (0u64, 0u64, Errors::new());
            let mut conn: Option<(Conn, u32)> = None;
            loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= end {
                    break;
                }
                let name = ctx.user(idx);
                let mut tries = 0;
                loop {
                    tries += 1;
                    // a fresh stream every 20 registrations: servers time out unauthenticated streams
                    if conn.as_ref().is_some_and(|(_, n)| *n >= 20) {
                        if let Some((c, _)) = conn.take() {
                            c.close().await;
                        }
                    }
                    let r = async {
                        if conn.is_none() {
                            conn = Some((conn::register_conn(&ctx).await?, 0));
                        }
                        let (c, n) = conn
                            .as_mut()
                            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
                        *n += 1;
                        conn::register_on(c, &ctx, &name).await
                    }
                    .await;
                    match r {
                        Ok(true) => created += 1,
                        Ok(false) => existed += 1,
                        Err(e) => {
                            conn = None;
                            if tries < 3 {
                                continue;
                            }
                            count_err(&mut fail, &e);
                        }
                    }
                    break;
                }
            }
            if let Some((c, _)) = conn {
                c.close().await;
            }
            (created, existed, fail)
        });
    }
    let (mut created, mut existed, mut fail) = (0u64, 0u64, Errors::new());
    while let Some(Ok((c, e, f))) = set.join_next().await {
        created += c;
        existed += e;
        for (k, v) in f {
            *fail.entry(k).or_default() += v;
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    let mut res = base(args, "register");
    res.insert("users".into(), json!(args.users));
    res.insert("first".into(), json!(args.first));
    res.insert("created".into(), json!(created));
    res.insert("existed".into(), json!(existed));
    res.insert("errors".into(), json!(fail));
    res.insert("seconds".into(), json!(round3(dt)));
    res.insert(
        "registrations_per_s".into(),
        json!(round1(created as f64 / dt.max(1e-9))),
    );
    res
}
