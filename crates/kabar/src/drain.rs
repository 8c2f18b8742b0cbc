//! Draining a node before it stops: `kabar drain`, `POST /admin/api/v1/drain`, and SIGTERM
//! (docs/CLUSTER.md, "Rolling restart").
//!
//! A draining node refuses every new stream (RFC 6120 §4.9.3.19 `<see-other-host/>` naming a live
//! peer, or `<system-shutdown/>` when there is none), `/readyz` answers 503, and each session is
//! asked to leave the same way, paced by `[drain] sessions_per_sec`. A session that ends reroutes
//! what its client never acknowledged (XEP-0198 unacked, queued, hibernated) through the core: to
//! the user's session on another node, or to offline storage; so the node waits for the session
//! tasks themselves (not just the directory) and for the other nodes to confirm what it sent them,
//! flushes the archive, lingers `linger_secs` if asked, then exits. Nothing acknowledged is lost;
//! what the client had received but not yet acknowledged may arrive twice (at least once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jid::FullJid;
use kabar_cluster::drain::Redirects;
use kabar_cluster::ClusterDirectory;
use kabar_core::config::DrainConfig;
use kabar_core::sessions::{Outbound, SendError};
use kabar_core::Server;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::c2s::{C2s, Conn, Round};
use crate::http::admin::ApiError;
use crate::http::{HttpState, Obj};

/// A session asked to leave that is still there after this is asked again (its queue was full,
/// or it bound while the first request was on its way).
const ASK_AGAIN: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(50);
const SHUTDOWN_TEXT: &str = "This server is restarting; please reconnect";

pub struct Drain {
    config: DrainConfig,
    redirects: Option<Arc<Redirects>>,
    cluster: Option<Arc<ClusterDirectory>>,
    draining: AtomicBool,
    started: Mutex<Option<Instant>>,
    timeout_secs: AtomicU64,
    linger_secs: AtomicU64,
    requested: Notify,
    /// Session tasks running (bound sessions until their end-of-session rerouting is done).
    session_tasks: AtomicU64,
    redirected: AtomicU64,
    shut_down: AtomicU64,
    refused_streams: AtomicU64,
}

/// Counts one running session task while alive.
pub struct SessionTask(Arc<Drain>);

impl Drop for SessionTask {
    fn drop(&mut self) {
        self.0.session_tasks.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    pub fn new(config: &DrainConfig, cluster: Option<Arc<ClusterDirectory>>, redirects: Option<Arc<Redirects>>) -> Arc<Drain> {
        Arc::new(Drain {
            config: config.clone(),
            redirects,
            cluster,
            draining: AtomicBool::new(false),
            started: Mutex::new(None),
            timeout_secs: AtomicU64::new(config.timeout_secs),
            linger_secs: AtomicU64::new(config.linger_secs),
            requested: Notify::new(),
            session_tasks: AtomicU64::new(0),
            redirected: AtomicU64::new(0),
            shut_down: AtomicU64::new(0),
            refused_streams: AtomicU64::new(0),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn session_task(self: &Arc<Self>) -> SessionTask {
        self.session_tasks.fetch_add(1, Ordering::AcqRel);
        SessionTask(self.clone())
    }

    /// Starts draining (once; later calls keep the first call's timings). True if this call started it.
    pub fn begin(&self, timeout_secs: Option<u64>, linger_secs: Option<u64>) -> bool {
        if self.draining.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(t) = timeout_secs {
            self.timeout_secs.store(t, Ordering::Release);
        }
        if let Some(l) = linger_secs {
            self.linger_secs.store(l, Ordering::Release);
        }
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.requested.notify_one();
        true
    }

    /// What a client of this node is told: go to this peer, or come back later.
    fn close_item(&self) -> (&'static str, String) {
        match self.redirects.as_ref().and_then(|r| r.pick()) {
            Some(host) => {
                self.redirected.fetch_add(1, Ordering::Relaxed);
                ("see-other-host", host)
            }
            None => {
                self.shut_down.fetch_add(1, Ordering::Relaxed);
                ("system-shutdown", SHUTDOWN_TEXT.to_string())
            }
        }
    }

    /// Waits for SIGTERM/Ctrl-C or a drain request, drains (unless `[drain] on_sigterm = false`
    /// and it was a signal), and returns when the node may stop. A second signal cuts the drain short.
    pub async fn until_stopped(self: &Arc<Self>, server: &Arc<Server>) {
        tokio::select! {
            _ = crate::shutdown_signal() => {
                if !self.config.on_sigterm {
                    info!("stop signal: stopping without a drain ([drain] on_sigterm = false)");
                    return;
                }
                self.begin(None, None);
            }
            _ = self.requested.notified() => {}
        }
        tokio::select! {
            _ = self.run(server) => {}
            _ = crate::shutdown_signal() => warn!("drain: another stop signal; stopping now"),
        }
    }

    async fn run(&self, server: &Arc<Server>) {
        let timeout = Duration::from_secs(self.timeout_secs.load(Ordering::Acquire));
        let deadline = Instant::now() + timeout;
        if let Some(r) = &self.redirects {
            r.set_draining().await;
        }
        info!(
            sessions = server.sessions.count(),
            timeout_secs = timeout.as_secs(),
            targets = ?self.redirects.as_ref().map(|r| r.targets()).unwrap_or_default(),
            "drain: started; new streams are refused and clients are asked to move"
        );
        let per_tick = match self.config.sessions_per_sec {
            0 => usize::MAX,
            n => usize::try_from((n / 20).max(1)).unwrap_or(usize::MAX),
        };
        let mut asked: HashMap<FullJid, Instant> = HashMap::new();
        loop {
            let left = server.sessions.all();
            if left.is_empty() && self.session_tasks.load(Ordering::Acquire) == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(sessions = left.len(), "drain: timeout reached with sessions still open; stopping anyway");
                break;
            }
            let mut this_tick = 0usize;
            for jid in left {
                if this_tick >= per_tick {
                    break;
                }
                if asked.get(&jid).is_some_and(|at| at.elapsed() < ASK_AGAIN) {
                    continue;
                }
                let (condition, text) = self.close_item();
                match server.sessions.send(&jid, Outbound::Close { condition, text: Some(text) }) {
                    Ok(()) | Err(SendError::NoSession) => {
                        asked.insert(jid, Instant::now());
                        this_tick += 1;
                    }
                    Err(SendError::QueueFull) => {}
                }
            }
            tokio::time::sleep(TICK).await;
        }
        // What the ending sessions rerouted to other nodes must be confirmed while this node still
        // runs: an unconfirmed stanza is rerouted again (to offline storage) by this node.
        if let Some(dir) = &self.cluster {
            let bound = Instant::now() + Duration::from_millis(server.config.cluster.delivery_timeout_ms) + Duration::from_secs(1);
            while dir.pending_deliveries() > 0 && Instant::now() < bound {
                tokio::time::sleep(TICK).await;
            }
        }
        if let Err(e) = server.store.archive_flush().await {
            warn!(error = %e, "drain: flushing the archive failed");
        }
        let linger = self.linger_secs.load(Ordering::Acquire);
        info!(
            sessions_left = server.sessions.count(),
            redirected = self.redirected.load(Ordering::Relaxed),
            shut_down = self.shut_down.load(Ordering::Relaxed),
            linger_secs = linger,
            "drain: done"
        );
        if linger > 0 {
            tokio::time::sleep(Duration::from_secs(linger)).await;
        }
    }

    pub fn status(&self, server: &Server) -> Value {
        let elapsed_ms = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        json!({
            "draining": self.is_draining(),
            "sessions": server.sessions.count(),
            "redirected": self.redirected.load(Ordering::Relaxed),
            "shut_down": self.shut_down.load(Ordering::Relaxed),
            "refused_streams": self.refused_streams.load(Ordering::Relaxed),
            "elapsed_ms": elapsed_ms,
            "timeout_secs": self.timeout_secs.load(Ordering::Acquire),
            "linger_secs": self.linger_secs.load(Ordering::Acquire),
            "targets": self.redirects.as_ref().map(|r| r.targets()).unwrap_or_default(),
        })
    }
}

impl C2s {
    /// A new stream on a draining node: sent to another node, or told the server is going down.
    pub(crate) async fn refuse_draining<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Round {
        self.drain.refused_streams.fetch_add(1, Ordering::Relaxed);
        let (condition, text) = self.drain.close_item();
        self.fail_stream(conn, io, condition, Some(&text)).await
    }
}

// --- admin API -------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, deserialize_with = "present_u64")]
    timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "present_u64")]
    linger_secs: Option<u64>,
}

/// Absent is the default; `null` is refused like any other non-integer (docs/openapi.yaml).
fn present_u64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

const MAX_SECS: u64 = 86_400;

/// `GET /drain`: whether the node drains, and how far it got.
pub async fn api_status(State(state): State<HttpState>) -> Json<Value> {
    Json(state.c2s.drain.status(&state.c2s.server))
}

/// `POST /drain`: starts draining (idempotent: a node already draining keeps its first timings).
pub async fn api_start(
    State(state): State<HttpState>,
    body: std::result::Result<Json<Obj<DrainRequest>>, JsonRejection>,
) -> std::result::Result<Response, ApiError> {
    let Json(Obj(req)) = body?;
    for (name, v) in [("timeout_secs", req.timeout_secs), ("linger_secs", req.linger_secs)] {
        if v.is_some_and(|v| v > MAX_SECS) {
            return Err(ApiError::bad_request("invalid_body", format!("{name} must be at most {MAX_SECS}")));
        }
    }
    if req.timeout_secs == Some(0) {
        return Err(ApiError::bad_request("invalid_body", "timeout_secs must be at least 1"));
    }
    let drain = &state.c2s.drain;
    if drain.begin(req.timeout_secs, req.linger_secs) {
        info!("admin API: drain requested");
    }
    Ok((StatusCode::ACCEPTED, Json(drain.status(&state.c2s.server))).into_response())
}

// --- `kabar drain` ---------------------------------------------------------------------------------

/// Asks the running server of `config` to drain, then follows it until it has exited.
pub async fn cli(config: &kabar_core::Config, timeout_secs: Option<u64>, linger_secs: Option<u64>, wait: bool) -> Result<()> {
    let Some(api) = crate::admin_client::AdminClient::for_running_server(config).await? else {
        bail!("no server is running for this configuration (nothing answers its admin API on [http] listen); nothing to drain");
    };
    let mut body = json!({});
    if let Some(t) = timeout_secs {
        body["timeout_secs"] = json!(t);
    }
    if let Some(l) = linger_secs {
        body["linger_secs"] = json!(l);
    }
    let first = api.expect_ok("POST", "/drain", Some(&body)).await?;
    let targets: Vec<&str> = first["targets"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!(
        "draining: {} sessions, timeout {} s; clients go to {}",
        first["sessions"],
        first["timeout_secs"],
        if targets.is_empty() { "no other node (they get <system-shutdown/>)".to_string() } else { targets.join(", ") }
    );
    if !wait {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let limit = Duration::from_secs(first["timeout_secs"].as_u64().unwrap_or(30) + first["linger_secs"].as_u64().unwrap_or(0) + 60);
    let mut last = String::new();
    let mut failures = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match api.call("GET", "/drain", None).await {
            Ok((200, s)) => {
                failures = 0;
                let line = format!("sessions left {}, redirected {}, shut down {}", s["sessions"], s["redirected"], s["shut_down"]);
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
            Ok((status, _)) => bail!("the admin API answered HTTP {status} while draining"),
            // The listener is gone (twice in a row, not one slow answer): the node has exited.
            Err(_) if failures >= 1 => {
                println!("the node has stopped after {:.1} s", started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(_) => failures += 1,
        }
        if started.elapsed() > limit {
            bail!("the node is still running {} s after the drain began", limit.as_secs());
        }
    }
}
