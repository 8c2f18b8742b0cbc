//! The HTTPS listener (default port 5443, the XMPP certificate): XMPP over WebSocket (RFC 7395),
//! BOSH (XEP-0206), XEP-0156 host-meta discovery, health checks, and the web client at `/`
//! (Converse.js, [`web`]). WebSocket and BOSH clients run through the same c2s state machine as TCP
//! clients: a bridge turns their messages into a byte pipe ([`crate::stream::Io::Pipe`]) and back.
//!
//! By default the listener runs on its own small runtime whose threads have a lower OS priority
//! (`[http] listener_threads`, `listener_nice`, `listener_sched`; docs/OVERLOAD.md "HTTPS listener
//! isolation"): a
//! flood of HTTP requests such as status-page reports then neither queues ahead of XMPP sessions
//! on the main runtime's workers nor keeps the kernel from running them. The XMPP sessions behind
//! WebSocket and BOSH are spawned back onto the main runtime ([`HttpState::spawn_session`]).

pub mod admin;
pub(crate) use json_object::Obj;
mod bosh;
pub mod invite;
mod json_object;
mod metrics;
pub mod status;
pub mod upload;
mod web;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kabar_core::config::ListenerSched;
use kabar_sasl::ChannelBindings;
use kabar_xml::{elem, element_to_bytes, ElementExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::c2s::C2s;
use crate::tls::Tls;

const NS_XRD: &str = "http://docs.oasis-open.org/ns/xri/xrd-1.0";
const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
const REL_BOSH: &str = "urn:xmpp:alt-connections:xbosh";

#[derive(Clone)]
pub struct HttpState {
    pub c2s: Arc<C2s>,
    pub bosh: Arc<bosh::BoshSessions>,
    /// `https://host:port` clients use to reach us. Shared: axum clones the state for every request.
    pub public_url: Arc<str>,
    /// The admin API's token; `None`: the API is off (see [`admin`]).
    pub admin: Option<Arc<admin::AdminAuth>>,
    /// The main runtime, where XMPP sessions run.
    sessions: tokio::runtime::Handle,
    /// The listener's own runtime; `None`: connections are served on the main runtime.
    listener: Option<Arc<ListenerRuntime>>,
}

/// Owns the listener runtime; dropping it must not block (it may happen inside async code).
struct ListenerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ListenerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn listener_runtime(threads: usize, nice: i32, sched: ListenerSched) -> Option<Arc<ListenerRuntime>> {
    if threads == 0 {
        return None;
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("kabar-https")
        // Also runs for the blocking pool, so blocking work started by HTTP handlers (uploads to
        // disk) stays at the listener's priority.
        .on_thread_start(move || match sched {
            ListenerSched::Nice => lower_thread_priority(nice),
            ListenerSched::Idle => idle_thread_policy(),
        })
        .enable_all()
        .build();
    match built {
        Ok(rt) => Some(Arc::new(ListenerRuntime(Some(rt)))),
        Err(e) => {
            warn!(error = %e, "cannot start the HTTPS listener runtime; serving HTTPS on the main runtime");
            None
        }
    }
}

/// Lowers the calling thread's priority by `nice` steps. On Linux a thread id given to
/// setpriority(PRIO_PROCESS) names that one thread, so the main runtime keeps its priority.
#[cfg(target_os = "linux")]
fn lower_thread_priority(nice: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    let nice = nice.clamp(0, 19);
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    // Relative to the process's own nice value, so `nice kabar serve` keeps the same gap.
    let base = getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = setpriority_process(Some(tid), (base + nice).min(19)) {
        warn!(error = %e, "cannot lower the HTTPS listener threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(nice: i32) {
    if nice != 0 {
        warn!("[http] listener_nice is only applied on Linux");
    }
}

/// Puts the calling thread under SCHED_IDLE: a woken normal thread (an XMPP session worker)
/// preempts it at once instead of waiting for the end of its slice, which a nice value alone
/// does not give under EEVDF. Unprivileged: lowering one's own policy needs no capability.
#[cfg(target_os = "linux")]
fn idle_thread_policy() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The crate also resets the nice value, which fails without CAP_SYS_NICE under a niced
    // process although the policy did change; the policy is what counts.
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        if thread_schedule_policy().ok() != Some(idle) {
            warn!(error = ?e, "cannot put the HTTPS listener threads under SCHED_IDLE");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_thread_policy() {
    warn!("[http] listener_sched = \"idle\" is only applied on Linux");
}

/// Per-connection facts handlers need.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Shared: the connection's facts are copied into every request's extensions.
    pub cb: Arc<ChannelBindings>,
}

impl HttpState {
    pub fn new(c2s: Arc<C2s>) -> HttpState {
        let config = &c2s.server.config;
        let public_url = config.http.public_url.clone().unwrap_or_else(|| {
            let port = config.http.listen.first().map(|a| a.port()).unwrap_or(5443);
            format!("https://{}:{port}", config.domain)
        });
        let bosh = Arc::new(bosh::BoshSessions::new(c2s.clone()));
        tokio::spawn(bosh.clone().reap(Duration::from_secs(config.http.bosh_inactivity_secs.max(5))));
        let listener = listener_runtime(config.http.listener_threads, config.http.listener_nice, config.http.listener_sched);
        HttpState {
            c2s,
            bosh,
            public_url: Arc::from(public_url.trim_end_matches('/')),
            admin: None,
            sessions: tokio::runtime::Handle::current(),
            listener,
        }
    }

    /// Starts the XMPP session behind a WebSocket or BOSH connection on the main runtime, so it
    /// keeps chat priority although its HTTP side runs on the listener runtime.
    pub(crate) fn spawn_session<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.sessions.spawn(session);
    }
}

fn router(state: HttpState) -> Router {
    let mut router = Router::new();
    if state.c2s.server.config.http.web_client {
        router = router.route("/", get(web::index)).route("/web/{id}/{*path}", get(web::asset));
    }
    router
        .route("/xmpp-websocket", get(websocket::upgrade))
        .route("/http-bind", post(bosh::request).options(bosh::preflight))
        .route("/.well-known/host-meta", get(host_meta_xml))
        .route("/.well-known/host-meta.json", get(host_meta_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // XEP-0401 landing page and its registration form (docs/INVITES.md).
        .route("/invite/{token}", get(invite::show).post(invite::submit))
        .route("/metrics", get(metrics::metrics))
        .merge(status::routes())
        .nest(admin::BASE, admin::routes(&state))
        .merge(upload::routes(&state))
        .with_state(state)
}

/// Aborts the accept loop on the listener runtime when [`serve`] is aborted (server shutdown).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts HTTPS connections until the task is aborted.
pub async fn serve(listener: TcpListener, state: HttpState, tls: Arc<Tls>) {
    let Some(rt) = state.listener.clone() else { return accept_loop(listener, state, tls).await };
    let Some(handle) = rt.0.as_ref().map(|r| r.handle().clone()) else { return };
    // Re-registered on the listener runtime's reactor: readiness of HTTP sockets is then handled
    // by its threads too, not by the session workers.
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "cannot move the HTTPS listener to its runtime"),
    };
    let task = handle.spawn(async move {
        match TcpListener::from_std(std_listener) {
            Ok(l) => accept_loop(l, state, tls).await,
            Err(e) => warn!(error = %e, "cannot register the HTTPS listener on its runtime"),
        }
    });
    let _abort = AbortOnDrop(task.abort_handle());
    let _ = task.await;
}

async fn accept_loop(listener: TcpListener, state: HttpState, tls: Arc<Tls>) {
    let app = router(state.clone());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        let handshake_timeout = Duration::from_secs(state.c2s.server.config.limits.unauthenticated_timeout_secs);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "HTTPS handshake failed"),
                Err(_) => return debug!(%peer, "HTTPS handshake timed out"),
            };
            let cb = Arc::new(tls.channel_bindings(stream.get_ref().1));
            let service = TowerToHyperService::new(app.layer(Extension(ConnInfo { peer, cb })));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}

/// Escapes text for HTML element content and quoted attribute values (the server-rendered pages:
/// web client index, invite landing page, status page).
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An answer to a request refused before its body was read. The connection is closed after it, and
/// the answer says so (`Connection: close`): left to itself hyper keeps the connection only when
/// the unread body happened to have arrived already, and otherwise closes it silently, so a client
/// reusing the connection for its next request found it closed under it (about one in three 401s
/// to a POST on a loaded machine; the flake of test_admin_annotates_and_resolves_an_incident).
pub(crate) fn refused_unread(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// Overload (docs/OVERLOAD.md): new work refused over HTTP is 503 with `Retry-After`.
pub(crate) fn busy_response(refusal: &kabar_core::admission::Refusal) -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, refusal.retry_after_secs.to_string())],
        format!("{}\n", refusal.text()),
    )
        .into_response()
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    // A draining node takes no new clients: load balancers should stop sending them.
    if state.c2s.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    // Ready when the store answers.
    match state.c2s.server.store.kv_get("", "readyz", "").await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
    }
}

/// XEP-0156 §3: the XRD document naming the WebSocket and BOSH endpoints.
async fn host_meta_xml(State(state): State<HttpState>) -> impl IntoResponse {
    let xrd = elem("XRD", NS_XRD)
        .with_child(elem("Link", NS_XRD).with_attr("rel", REL_WEBSOCKET).with_attr("href", websocket_url(&state.public_url)))
        .with_child(elem("Link", NS_XRD).with_attr("rel", REL_BOSH).with_attr("href", format!("{}/http-bind", state.public_url)));
    match element_to_bytes(&xrd) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/xrd+xml"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn host_meta_json(State(state): State<HttpState>) -> impl IntoResponse {
    let body = axum::Json(serde_json::json!({
        "links": [
            { "rel": REL_WEBSOCKET, "href": websocket_url(&state.public_url) },
            { "rel": REL_BOSH, "href": format!("{}/http-bind", state.public_url) },
        ]
    }));
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], body)
}

fn websocket_url(public_url: &str) -> String {
    let rest = public_url.strip_prefix("https://").map(|r| format!("wss://{r}")).unwrap_or_else(|| public_url.replacen("http://", "ws://", 1));
    format!("{rest}/xmpp-websocket")
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn html_escape_covers_markup_and_both_quotes() {
        assert_eq!(super::html_escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
