//! The HTTPS listener (default port 5443, the XMPP certificate): XMPP over WebSocket (RFC 7395),
//! BOSH (XEP-0206), XEP-0156 host-meta discovery, health checks, and the web client at `/`
//! (Converse.js, [`web`]). WebSocket and BOSH clients run through the same c2s state machine as TCP
//! clients: a bridge turns their messages into a byte pipe ([`crate::stream::Io::Pipe`]) and back.

pub mod admin;
mod bosh;
pub mod invite;
mod metrics;
pub mod status;
pub mod upload;
mod web;
mod websocket;

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
    /// `https://host:port` clients use to reach us.
    pub public_url: String,
    /// The admin API's token; `None`: the API is off (see [`admin`]).
    pub admin: Option<Arc<admin::AdminAuth>>,
}

/// Per-connection facts handlers need.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub cb: ChannelBindings,
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
        HttpState { c2s, bosh, public_url: public_url.trim_end_matches('/').to_string(), admin: None }
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

/// Accepts HTTPS connections until the task is aborted.
pub async fn serve(listener: TcpListener, state: HttpState, tls: Arc<Tls>) {
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
            let cb = tls.channel_bindings(stream.get_ref().1);
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
