//! `kabar-load`: a server-neutral XMPP c2s load generator. One scenario per run, one JSON line of
//! results on stdout (field names as in shared/bench/load/xmppload.py where it has them).
//!
//! Scenarios: `login` (connect+auth+bind+presence storm), `idle` (hold C sessions; server RSS per
//! connection), `chat` (P pairs, fixed rate or flat out), `signup` (XEP-0077 registrations while
//! pairs chat at a fixed rate), `reconnect` (N sessions drop at once and come back; optionally with
//! XEP-0484 FAST tokens), `register` (provisioning accounts by in-band registration), `muc`
//! (XEP-0045 fan-out) and `chatsweep` (the highest chat rate held at p99 under a limit).
//!
//! Only loopback targets are accepted, and every run ends within `--max-seconds`.
//! See docs/BENCHMARKS.md.

mod chat;
mod conn;
mod metrics;
mod scan;
mod scenarios;
mod sweep;
mod muc;
mod scram;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};

use crate::conn::{Ctx, Mech};
use crate::scram::ScramCache;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Login,
    Idle,
    Chat,
    Signup,
    Reconnect,
    Register,
    /// XEP-0045 fan-out: one poster, N readers in a room (see muc.rs).
    Muc,
    /// Highest total chat rate held at p99 < --p99-limit-ms with no loss (see sweep.rs).
    Chatsweep,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Idle => "idle",
            Scenario::Chat => "chat",
            Scenario::Signup => "signup",
            Scenario::Reconnect => "reconnect",
            Scenario::Register => "register",
            Scenario::Muc => "muc",
            Scenario::Chatsweep => "chatsweep",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kabar-load",
    version,
    about = "Server-neutral XMPP c2s load generator (loopback targets only)"
)]
pub struct Args {
    /// login | idle | chat | signup | reconnect | register (provisioning by in-band registration) |
    /// muc | chatsweep
    #[arg(value_enum)]
    pub scenario: Scenario,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 5222)]
    pub port: u16,
    /// Spread accounts over several ports of --host (cluster nodes): account i connects to the
    /// (i mod count)-th. Chat pairs are formed as logins finish, so with k nodes about (k-1)/k of
    /// the pairs talk across nodes. --server-pid still measures one process.
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u16>,
    #[arg(long, default_value = "bench.local")]
    pub domain: String,
    /// Accounts are PREFIX<i>@DOMAIN for i in [FIRST, FIRST+N).
    #[arg(long, default_value = "u")]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub first: u64,
    #[arg(long, default_value = "benchpass")]
    pub password: String,
    /// SASL mechanism; PLAIN is used when SCRAM-SHA-1 is not offered.
    #[arg(long, value_enum, default_value = "SCRAM-SHA-1")]
    pub mech: Mech,
    /// Resource to bind (Bind2 tag with --fast).
    #[arg(long, default_value = "r")]
    pub resource: String,
    /// N (login, reconnect, register), C (idle).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: u64,
    /// P (chat, signup).
    #[arg(long, default_value_t = 100)]
    pub pairs: u64,
    /// Logins in flight (login, idle, chat, reconnect); registration workers (signup, register).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// T seconds: chat send time, signup surge, idle hold.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// signup: seconds of chat before the surge.
    #[arg(long, default_value_t = 10.0)]
    pub baseline: f64,
    /// chat: seconds of unrecorded warm-up before the measured run.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Most seconds to wait for in-flight deliveries after sending stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Messages/s per sender (0 = flat out with --window).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages/s in total, spread evenly over the 2P senders (overrides --rate).
    #[arg(long, default_value_t = 0.0)]
    pub total_rate: f64,
    /// Flat out: most undelivered messages per sender.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Padding bytes in each message body.
    #[arg(long, default_value_t = 32)]
    pub body_bytes: usize,
    /// muc: the room's configuration. `channel`: kabar's channel preset (readers are visitors whose
    /// presence goes to moderators only; other servers ignore or refuse the field). `room`: a plain
    /// open room with the standard fields only, every reader a participant seen by all (what
    /// ejabberd and Prosody run).
    #[arg(long, default_value = "channel")]
    pub muc_preset: String,
    /// chatsweep: first total rate (msg/s); doubles while held, then bisects.
    #[arg(long, default_value_t = 250.0)]
    pub sweep_start: f64,
    /// chatsweep: highest total rate tried.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub sweep_max: f64,
    /// chatsweep: stop bisecting when (lowest failed − highest held) ≤ this × highest held.
    #[arg(long, default_value_t = 0.1)]
    pub sweep_precision: f64,
    /// chatsweep: most steps.
    #[arg(long, default_value_t = 16)]
    pub sweep_max_steps: u32,
    /// chatsweep: a step holds when its p99 is below this (and nothing is lost, and at least 95 %
    /// of the target rate is delivered).
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Add the XEP-0334 <no-store/> hint to chat messages (servers that archive may skip them).
    #[arg(long)]
    pub no_store: bool,
    /// signup: total registrations/s (0 = flat out with --concurrency workers).
    #[arg(long, default_value_t = 0.0)]
    pub reg_rate: f64,
    #[arg(long, default_value_t = 200_000)]
    pub max_registrations: u64,
    /// signup: prefix of the accounts it creates.
    #[arg(long, default_value = "s")]
    pub reg_prefix: String,
    /// STARTTLS (any certificate is accepted: loopback test servers only).
    #[arg(long)]
    pub tls: bool,
    /// reconnect: SASL2 + Bind2, and XEP-0484 FAST tokens for the reconnect (needs --tls).
    #[arg(long)]
    pub fast: bool,
    /// reconnect: drop connections with TCP RST instead of FIN.
    #[arg(long)]
    pub rst: bool,
    /// Timeout of each protocol step, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub op_timeout: f64,
    /// Server PID: its CPU and RSS are read from /proc.
    #[arg(long = "server-pid", alias = "pid", default_value_t = 0)]
    pub server_pid: u32,
    #[arg(long, default_value = "?")]
    pub server_name: String,
    /// Hard wall-clock cap for the whole run (the process exits).
    #[arg(long, default_value_t = 900.0)]
    pub max_seconds: f64,
    /// Also append the JSON line to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File caching SCRAM SaltedPassword per (iterations, salt, password) across runs, like a
    /// client storing its SCRAM keys; "" disables.
    #[arg(long, default_value_t = default_cache())]
    pub scram_cache: String,
    /// Runtime threads (1 = single-threaded runtime; pin the process with taskset).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn default_cache() -> String {
    let base = std::env::var("BENCH_RUN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("kabar-bench"));
    base.join("kabar-load-scram-cache.txt")
        .display()
        .to_string()
}

impl Args {
    pub fn pid(&self) -> Option<u32> {
        (self.server_pid != 0).then_some(self.server_pid)
    }
}

fn resolve_loopback(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to nothing"));
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("refusing non-loopback target {host} ({})", a.ip()));
    }
    Ok(addrs[0])
}

fn emit(args: &Args, res: &Map<String, Value>) {
    let line = Value::Object(res.clone()).to_string();
    println!("{line}");
    if let Some(p) = &args.out {
        use std::io::Write;
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{line}");
            }
            Err(e) => eprintln!("warning: cannot append to {}: {e}", p.display()),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    metrics::init_clock();
    let addr = match resolve_loopback(&args.host, args.port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.fast && !args.tls {
        eprintln!("error: --fast needs --tls (FAST tokens are offered on encrypted streams)");
        return std::process::ExitCode::from(2);
    }
    let tls = if args.tls {
        match conn::tls_connector() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let mut spread = Vec::new();
    for p in &args.ports {
        match resolve_loopback(&args.host, *p) {
            Ok(a) => spread.push(a),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let cache =
        ScramCache::new((!args.scram_cache.is_empty()).then(|| PathBuf::from(&args.scram_cache)));
    let cached_at_start = cache.loaded();
    let ctx = Arc::new(Ctx {
        addr,
        domain: args.domain.clone(),
        prefix: args.prefix.clone(),
        password: args.password.clone(),
        mech: args.mech,
        tls,
        op_timeout: Duration::from_secs_f64(args.op_timeout),
        cache,
        resource: args.resource.clone(),
        spread,
    });
    // Watchdog: even a wedged runtime cannot outlive the hard cap by more than a few seconds.
    let cap = Duration::from_secs_f64(args.max_seconds);
    let scenario = args.scenario;
    let server_name = args.server_name.clone();
    std::thread::spawn(move || {
        std::thread::sleep(cap + Duration::from_secs(15));
        println!(
            "{}",
            json!({"scenario": scenario.name(), "server": server_name, "error": "watchdog: run exceeded --max-seconds"})
        );
        std::process::exit(3);
    });
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let outcome = runtime.block_on(async {
        let ctx2 = ctx.clone();
        let fut = async {
            match args.scenario {
                Scenario::Login => scenarios::login(&args, ctx2).await,
                Scenario::Idle => scenarios::idle(&args, ctx2).await,
                Scenario::Chat => scenarios::chat(&args, ctx2).await,
                Scenario::Signup => scenarios::signup(&args, ctx2).await,
                Scenario::Reconnect => scenarios::reconnect(&args, ctx2).await,
                Scenario::Register => scenarios::register(&args, ctx2).await,
                Scenario::Muc => muc::muc(&args, ctx2).await,
                Scenario::Chatsweep => sweep::chatsweep(&args, ctx2).await,
            }
        };
        tokio::time::timeout(cap, fut).await
    });
    let (mut res, code) = match outcome {
        Ok(res) => (res, 0),
        Err(_) => {
            let mut m = scenarios::base(&args, args.scenario.name());
            m.insert(
                "error".into(),
                json!(format!("hard timeout after {} s", args.max_seconds)),
            );
            (m, 3)
        }
    };
    ctx.cache.save();
    res.insert(
        "generator".into(),
        json!(concat!("kabar-load ", env!("CARGO_PKG_VERSION"))),
    );
    res.insert("runtime_threads".into(), json!(args.threads.max(1)));
    res.insert("scram_keys_cached_at_start".into(), json!(cached_at_start));
    res.insert(
        "gen_affinity".into(),
        json!(metrics::affinity(std::process::id())),
    );
    if let Some(pid) = args.pid() {
        res.insert("server_affinity".into(), json!(metrics::affinity(pid)));
    }
    res.insert("started_unix".into(), json!(started_unix));
    emit(&args, &res);
    // Do not wait for stragglers (connections still closing): the result is out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(resolve_loopback("127.0.0.1", 5222).is_ok());
        assert!(resolve_loopback("::1", 5222).is_ok());
        assert!(resolve_loopback("10.1.2.3", 5222).is_err());
        assert!(resolve_loopback("8.8.8.8", 5222).is_err());
    }
}
