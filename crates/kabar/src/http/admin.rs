//! The admin HTTP API under `/admin/api/v1` (JSON, `Authorization: Bearer <token>`), described in
//! `docs/openapi.yaml` and, with examples, in `docs/ADMIN.md`.
//!
//! The token lives in `[admin] token_file` (default `<data_dir>/admin-token`); a random one is
//! written there (mode 0600) at the first start. Only its SHA-256 is kept in memory, and a
//! presented token is hashed and compared in constant time, so neither its content nor its length
//! shows in response times. Failed attempts count per client IP against
//! `limits.auth_failures_per_ip_per_minute`; over the limit every request from that IP is answered
//! `429` for a while, right token or not.
//!
//! Every error is `{"error": "<code>", "message": "<text>"}` with a 4xx status, except a store
//! failure (`503 store_unavailable`).

use std::net::IpAddr;
use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use jid::FullJid;
use kabar_core::accounts::{self, AccountError};
use kabar_core::ratelimit::KeyedLimiter;
use kabar_core::sessions::{Outbound, SendError};
use kabar_core::{ns, Config, Event, Server};
use kabar_xml::{elem, ElementExt};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::{ConnInfo, HttpState};
use crate::http::Obj;
use crate::stream::random_id;

/// Where the API is mounted.
pub const BASE: &str = "/admin/api/v1";
/// Shortest token accepted from a token file someone wrote by hand.
const MIN_TOKEN_LEN: usize = 16;
/// Largest announcement body, in bytes.
const MAX_ANNOUNCE_BYTES: usize = 64 * 1024;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The admin token (as its SHA-256) and the failed-attempt limiter.
pub struct AdminAuth {
    token_sha256: [u8; 32],
    failures_by_ip: KeyedLimiter,
}

impl AdminAuth {
    /// Reads the token file, creating it with a fresh random token if it does not exist. `None`
    /// when the API is switched off (`[admin] enabled = false`) or no HTTPS listener is configured.
    pub fn load(config: &Config) -> Result<Option<Arc<AdminAuth>>> {
        if !config.admin.enabled || config.http.listen.is_empty() {
            return Ok(None);
        }
        let path = config.admin.token_file.clone().unwrap_or_else(|| config.data_dir.join("admin-token"));
        let token = read_or_create_token(&path)?;
        info!(token_file = %path.display(), "admin API enabled at {BASE} on the HTTPS listener");
        Ok(Some(Arc::new(AdminAuth::new(&token, config.limits.auth_failures_per_ip_per_minute))))
    }

    fn new(token: &str, failures_per_minute: u32) -> AdminAuth {
        AdminAuth {
            token_sha256: Sha256::digest(token.as_bytes()).into(),
            failures_by_ip: KeyedLimiter::new(failures_per_minute.max(1), Duration::from_secs(60)),
        }
    }

    /// Constant-time check of a presented token (both sides hashed first, so lengths do not leak).
    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.token_sha256).into()
    }
}

fn read_or_create_token(path: &FsPath) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            let token = text.trim().to_string();
            if token.len() < MIN_TOKEN_LEN {
                bail!(
                    "the admin token in {} is shorter than {MIN_TOKEN_LEN} characters; delete the file to have a new one generated",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            write_private(path, &format!("{token}\n"))
                .with_context(|| format!("cannot create the admin token file {}", path.display()))?;
            info!(file = %path.display(), "generated an admin API token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the admin token file {}", path.display())),
    }
}

/// 32 random bytes, base64url without padding (43 characters).
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_private(path: &FsPath, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

fn warn_if_readable_by_others(path: &FsPath) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(file = %path.display(), "the admin token file is readable by other users; chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

// --- errors ------------------------------------------------------------------------------------

pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, error, message: message.into() }
    }
    pub(crate) fn bad_request(error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn store(e: impl std::fmt::Display) -> ApiError {
        warn!(error = %e, "admin API: store failure");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the database did not answer; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "message": self.message }))).into_response()
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        match e {
            AccountError::InvalidJid(_) | AccountError::WrongDomain(..) => ApiError::bad_request("invalid_jid", e.to_string()),
            AccountError::BadPassword(_) => ApiError::bad_request("invalid_password", e.to_string()),
            AccountError::Exists => ApiError::new(StatusCode::CONFLICT, "exists", "the account already exists"),
            AccountError::NotFound => ApiError::not_found("no such account"),
            AccountError::Store(e) => ApiError::store(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        let status = if status.is_client_error() { status } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, "invalid_body", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

// --- routing and authentication -----------------------------------------------------------------

/// The API's routes, to be nested at [`BASE`]. With the API switched off, everything under it is a
/// JSON 404.
pub fn routes(state: &HttpState) -> Router<HttpState> {
    if state.admin.is_none() {
        return Router::new().fallback(|| async { ApiError::not_found("the admin API is disabled ([admin] enabled = false)") });
    }
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{jid}", delete(delete_user))
        .route("/users/{jid}/password", post(set_password))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{*jid}", delete(kick_session))
        .route("/stats", get(stats))
        .route("/registration", get(get_registration).put(put_registration))
        .route("/registration/mode", get(get_registration_mode).put(put_registration_mode))
        .route("/announce", post(announce))
        .route("/monitor/incidents/{id}/annotations", post(super::status::annotate_incident))
        .route("/uploads", get(list_uploads))
        .route("/uploads/{id}", delete(delete_upload))
        .route("/rooms", get(list_rooms))
        .route("/rooms/{jid}", delete(destroy_room))
        .route("/invites", get(list_invites).post(create_invite))
        .route("/invites/{id}", delete(revoke_invite))
        .route("/drain", get(crate::drain::api_status).post(crate::drain::api_start))
        .fallback(|| async { ApiError::not_found("no such admin API endpoint (see docs/openapi.yaml)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(from_fn_with_state(state.clone(), require_token))
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let Some(admin) = state.admin.as_ref() else {
        return super::refused_unread(ApiError::not_found("the admin API is disabled").into_response());
    };
    let ip = request.extensions().get::<ConnInfo>().map(|c| c.peer.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let key = ip.to_string();
    if !admin.failures_by_ip.would_allow(&key) {
        let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_failures", "too many failed authentication attempts from this address; try again in a minute")
            .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return super::refused_unread(r);
    }
    let ok = match bearer(request.headers()) {
        Some(token) => admin.matches(token),
        // Still hash something, so a missing header takes as long as a wrong one.
        None => {
            let _ = admin.matches(b"");
            false
        }
    };
    if !ok {
        admin.failures_by_ip.allow(&key);
        state.c2s.server.metrics.admin_auth_failures.inc();
        info!(%ip, path = %request.uri().path(), "admin API: missing or wrong token");
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid admin token is required: Authorization: Bearer <token>")
            .into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kabar-admin\""));
        return super::refused_unread(r);
    }
    next.run(request).await
}

fn server(state: &HttpState) -> &Arc<Server> {
    &state.c2s.server
}

// --- users ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_users(State(state): State<HttpState>, query: std::result::Result<Query<Page>, QueryRejection>) -> ApiResult<Json<serde_json::Value>> {
    let Query(page) = query?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let all = server(&state).store.list_accounts().await.map_err(ApiError::store)?;
    let rest: Vec<&String> = match &page.after {
        Some(after) => all.iter().filter(|j| j.as_str() > after.as_str()).collect(),
        None => all.iter().collect(),
    };
    let more = rest.len() > limit;
    let users: Vec<_> = rest.iter().take(limit).map(|j| json!({ "jid": j })).collect();
    let next = if more { rest.get(limit - 1).map(|j| json!(j)).unwrap_or(json!(null)) } else { json!(null) };
    Ok(Json(json!({ "users": users, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    jid: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

fn check_password(server: &Server, password: &str) -> ApiResult<()> {
    let min = server.config.registration.min_password_length.max(1);
    if password.chars().count() < min {
        return Err(ApiError::bad_request("invalid_password", format!("the password must have at least {min} characters")));
    }
    let max = kabar_modules::register::MAX_PASSWORD_BYTES;
    if password.len() > max {
        return Err(ApiError::bad_request("invalid_password", format!("the password must have at most {max} bytes")));
    }
    Ok(())
}

async fn create_user(State(state): State<HttpState>, body: std::result::Result<Json<Obj<NewUser>>, JsonRejection>) -> ApiResult<Response> {
    let Json(Obj(new)) = body?;
    let server = server(&state);
    let jid = accounts::parse_account(new.jid.trim(), &server.domain)?;
    check_password(server, &new.password)?;
    accounts::create(&server.store, &jid, &new.password).await?;
    info!(account = %jid, "admin API: account created");
    Ok((StatusCode::CREATED, Json(json!({ "jid": jid.as_str() }))).into_response())
}

async fn delete_user(State(state): State<HttpState>, path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let server = server(&state);
    let jid = accounts::parse_account(raw.trim(), &server.domain)?;
    // As in-band removal (XEP-0077 §3.2): read the roster first so contacts can be told.
    let roster = server.store.roster(jid.as_str()).await.map(|(items, _)| items).unwrap_or_default();
    accounts::delete(&server.store, &jid).await?;
    info!(account = %jid, "admin API: account deleted");
    server.notify(Event::AccountDeleted { jid: &jid, roster: &roster }).await;
    for session in server.sessions.sessions(&jid) {
        let _ = server.sessions.send(
            &session.jid,
            Outbound::Close { condition: "not-authorized", text: Some("The account was deleted".into()) },
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(
    State(state): State<HttpState>,
    path: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Json<Obj<NewPassword>>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let Json(Obj(new)) = body?;
    let server = server(&state);
    let jid = accounts::parse_account(raw.trim(), &server.domain)?;
    check_password(server, &new.password)?;
    accounts::set_password(&server.store, &jid, &new.password).await?;
    info!(account = %jid, "admin API: password changed");
    Ok(StatusCode::NO_CONTENT)
}

// --- sessions ------------------------------------------------------------------------------------

async fn list_sessions(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let server = server(&state);
    // In a cluster: every node's sessions, each with the node holding it (docs/CLUSTER.md).
    let mut list: Vec<(Option<String>, _)> = match server.sessions.cluster_sessions() {
        Some(all) => all.into_iter().map(|(node, s)| (Some(node), s)).collect(),
        None => server.sessions.all().iter().filter_map(|j| server.sessions.get(j)).map(|s| (None, s)).collect(),
    };
    list.sort_by(|a, b| a.1.jid.as_str().cmp(b.1.jid.as_str()));
    let sessions: Vec<_> = list
        .iter()
        .map(|(node, s)| {
            let mut v = json!({
                "jid": s.jid.as_str(),
                "available": s.available,
                "detached": s.detached,
                "inactive": s.inactive,
                "priority": s.priority,
            });
            if let Some(node) = node {
                v["node"] = json!(node);
            }
            v
        })
        .collect();
    Json(json!({ "sessions": sessions }))
}

async fn kick_session(State(state): State<HttpState>, path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let jid = FullJid::new(raw.trim())
        .map_err(|_| ApiError::bad_request("invalid_jid", "expected a full JID: user@domain/resource (percent-encoded)"))?;
    let server = server(&state);
    let close = Outbound::Close { condition: "policy-violation", text: Some("Disconnected by the server administrator".into()) };
    match server.sessions.send(&jid, close) {
        Ok(()) => {
            info!(session = %jid, "admin API: session kicked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(SendError::NoSession) => Err(ApiError::not_found("no such session")),
        Err(SendError::QueueFull) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_busy",
            "the session's queue is full; it is being closed as too slow",
        )),
    }
}

// --- server --------------------------------------------------------------------------------------

async fn stats(State(state): State<HttpState>) -> ApiResult<Json<serde_json::Value>> {
    use kabar_core::metrics::Transport;
    let server = server(&state);
    let accounts = server.store.list_accounts().await.map_err(ApiError::store)?.len();
    let connections: serde_json::Map<String, serde_json::Value> =
        Transport::ALL.iter().map(|t| (t.label().to_string(), json!(server.metrics.connections_open(*t)))).collect();
    Ok(Json(json!({
        "sessions": server.sessions.count(),
        "accounts": accounts,
        "connections": connections,
        "uptime_seconds": server.started_at.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "registration_enabled": server.registration_enabled.load(Ordering::Relaxed),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    enabled: bool,
}

async fn get_registration(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(json!({ "enabled": server(&state).registration_enabled.load(Ordering::Relaxed) }))
}

async fn put_registration(State(state): State<HttpState>, body: std::result::Result<Json<Obj<Registration>>, JsonRejection>) -> ApiResult<Json<serde_json::Value>> {
    let Json(Obj(r)) = body?;
    let server = server(&state);
    let before = server.registration.mode();
    let mode = kabar_modules::register::set_public(server, r.enabled);
    if before != mode {
        info!(enabled = r.enabled, from = before.as_str(), to = mode.as_str(), "admin API: in-band registration switched");
    }
    Ok(Json(json!({ "enabled": r.enabled })))
}

/// `PUT /registration/mode` (docs/REGISTRATION.md); absent fields keep their value, `null` is
/// refused like any other value outside the schema.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationModeChange {
    // A string parsed below rather than the enum: serde_json reports a non-string enum as a syntax
    // error (400), and this API answers every well-formed JSON of the wrong shape with 422.
    #[serde(default, deserialize_with = "present")]
    mode: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pow_difficulty: Option<u8>,
}

/// A field that may be absent but not `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn registration_mode_json(server: &Server) -> serde_json::Value {
    json!({
        "mode": server.registration.mode().as_str(),
        "pow_difficulty": server.registration.pow_difficulty(),
    })
}

async fn get_registration_mode(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(registration_mode_json(server(&state)))
}

async fn put_registration_mode(
    State(state): State<HttpState>,
    body: std::result::Result<Json<Obj<RegistrationModeChange>>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    use kabar_core::registration::{RegistrationMode, MAX_POW_DIFFICULTY};
    let Json(Obj(change)) = body?;
    let server = server(&state);
    let mode = match change.mode.as_deref() {
        None => None,
        Some(m) => Some(RegistrationMode::parse(m).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "mode must be open, invite-only, proof-of-work or closed")
        })?),
    };
    if let Some(bits) = change.pow_difficulty {
        if !(1..=MAX_POW_DIFFICULTY).contains(&bits) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("pow_difficulty must be between 1 and {MAX_POW_DIFFICULTY}"),
            ));
        }
        let before = server.registration.swap_pow_difficulty(bits);
        if before != bits {
            info!(from = before, to = bits, "admin API: proof-of-work difficulty changed");
        }
    }
    if let Some(mode) = mode {
        let before = kabar_modules::register::set_mode(server, mode);
        if before != mode {
            info!(from = before.as_str(), to = mode.as_str(), "admin API: registration mode switched");
        }
    }
    Ok(Json(registration_mode_json(server)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Announcement {
    body: String,
}

/// XML 1.0 §2.2 `Char`: what a text node may contain (Rust chars already exclude surrogates).
fn is_xml_text(s: &str) -> bool {
    s.chars().all(|c| matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}'))
}

async fn announce(State(state): State<HttpState>, body: std::result::Result<Json<Obj<Announcement>>, JsonRejection>) -> ApiResult<Json<serde_json::Value>> {
    let Json(Obj(a)) = body?;
    if a.body.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_body", "the announcement body is empty"));
    }
    if a.body.len() > MAX_ANNOUNCE_BYTES {
        return Err(ApiError::bad_request("invalid_body", format!("the announcement body is longer than {MAX_ANNOUNCE_BYTES} bytes")));
    }
    if !is_xml_text(&a.body) {
        return Err(ApiError::bad_request("invalid_body", "the announcement body contains characters XML cannot carry"));
    }
    let server = server(&state);
    let id = format!("announce-{}", random_id(12));
    let mut recipients = 0usize;
    for jid in server.sessions.all() {
        let message = elem("message", ns::CLIENT)
            .with_attr("from", server.domain.as_str())
            .with_attr("to", jid.as_str())
            .with_attr("type", "headline")
            .with_attr("id", id.as_str())
            .with_child(elem("body", ns::CLIENT).with_text(a.body.as_str()));
        server.deliver(&jid, message).await;
        recipients += 1;
    }
    info!(recipients, "admin API: announcement sent");
    Ok(Json(json!({ "recipients": recipients })))
}

// --- uploads (XEP-0363) ---------------------------------------------------------------------------

fn uploads(state: &HttpState) -> ApiResult<Arc<kabar_modules::upload::Uploads>> {
    super::upload::service(server(state))
        .filter(|u| u.enabled)
        .ok_or_else(|| ApiError::not_found("HTTP file upload is disabled ([upload] enabled = false)"))
}

fn upload_error(e: kabar_modules::upload::UploadError) -> ApiError {
    ApiError::store(e)
}

/// Stored files by id, paged like `/users` (`limit`, `after` = the last id of the previous page).
async fn list_uploads(State(state): State<HttpState>, query: std::result::Result<Query<Page>, QueryRejection>) -> ApiResult<Json<serde_json::Value>> {
    let Query(page) = query?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let up = uploads(&state)?;
    let all = up.list(&server(&state).store).await.map_err(upload_error)?;
    let rest: Vec<_> = match &page.after {
        Some(after) => all.iter().filter(|r| r.id.as_str() > after.as_str()).collect(),
        None => all.iter().collect(),
    };
    let more = rest.len() > limit;
    let items: Vec<_> = rest
        .iter()
        .take(limit)
        .map(|r| {
            json!({
                "id": r.id,
                "owner": r.owner,
                "filename": r.filename,
                "size": r.size,
                "content_type": r.content_type,
                "created": r.created,
                "expires": r.expires,
                "url": up.get_url(&r.id, &r.filename),
            })
        })
        .collect();
    let next = if more { rest.get(limit - 1).map(|r| json!(r.id)).unwrap_or(json!(null)) } else { json!(null) };
    Ok(Json(json!({ "uploads": items, "next": next })))
}

async fn delete_upload(State(state): State<HttpState>, path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    let up = uploads(&state)?;
    if !kabar_modules::upload::valid_id(&id) {
        return Err(ApiError::not_found("no such upload"));
    }
    if up.delete(&server(&state).store, &id).await.map_err(upload_error)? {
        info!(upload = %id, "admin API: upload deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such upload"))
    }
}

// --- rooms (XEP-0045) ----------------------------------------------------------------------------

fn muc(state: &HttpState) -> ApiResult<&kabar_modules::muc::MucModule> {
    server(state)
        .modules()
        .iter()
        .find_map(|m| (m.as_ref() as &dyn std::any::Any).downcast_ref::<kabar_modules::muc::MucModule>())
        .filter(|_| server(state).config.muc.enabled)
        .ok_or_else(|| ApiError::not_found("the multi-user chat service is disabled ([muc] enabled = false)"))
}

async fn list_rooms(State(state): State<HttpState>, query: std::result::Result<Query<Page>, QueryRejection>) -> ApiResult<Json<serde_json::Value>> {
    let Query(page) = query?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let all = muc(&state)?.list_rooms(server(&state)).await;
    let rest: Vec<_> = match &page.after {
        Some(after) => all.iter().filter(|r| r.jid.as_str() > after.as_str()).collect(),
        None => all.iter().collect(),
    };
    let more = rest.len() > limit;
    let rooms: Vec<_> = rest
        .iter()
        .take(limit)
        .map(|r| {
            json!({
                "jid": r.jid,
                "name": r.name,
                "occupants": r.occupants,
                "persistent": r.persistent,
                "public": r.public,
                "members_only": r.members_only,
                "channel": r.channel,
            })
        })
        .collect();
    let next = if more { rest.get(limit - 1).map(|r| json!(r.jid)).unwrap_or(json!(null)) } else { json!(null) };
    Ok(Json(json!({ "rooms": rooms, "next": next })))
}

async fn destroy_room(State(state): State<HttpState>, path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let Path(raw) = path?;
    let module = muc(&state)?;
    let jid = kabar_core::stanza::parse_bare(raw.trim())
        .ok()
        .filter(|j| j.domain().as_str() == module.service_domain())
        .ok_or_else(|| ApiError::bad_request("invalid_jid", format!("expected a room JID: name@{}", module.service_domain())))?;
    let Some(name) = jid.node() else {
        return Err(ApiError::bad_request("invalid_jid", format!("expected a room JID: name@{}", module.service_domain())));
    };
    if module.destroy_room(server(&state), name.as_str(), Some("Destroyed by the server administrator")).await {
        info!(room = %jid, "admin API: room destroyed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such room"))
    }
}

// --- invites (XEP-0401, docs/INVITES.md) -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvite {
    /// Absent: an account-only invite.
    inviter: Option<String>,
    username: Option<String>,
    expires_in_secs: Option<u64>,
    max_uses: Option<u32>,
    /// Befriend inviter and invitee (default: true when there is an inviter).
    roster: Option<bool>,
}

fn invite_json(inv: &kabar_modules::invite::Invite) -> serde_json::Value {
    json!({
        "id": inv.id,
        "inviter": inv.inviter,
        "username": inv.username,
        "created": kabar_core::time::xep0082(inv.created),
        "expires": super::invite::expires(inv),
        "max_uses": inv.max_uses,
        "uses": inv.uses,
        "invitees": inv.invitees,
        "roster": inv.roster,
        "status": inv.status(kabar_core::time::unix_now()).as_str(),
    })
}

impl From<kabar_modules::invite::InviteError> for ApiError {
    fn from(e: kabar_modules::invite::InviteError) -> ApiError {
        use kabar_modules::invite::InviteError as E;
        match e {
            E::Disabled => ApiError::not_found("invitations are disabled ([invites] enabled = false)"),
            E::UsernameTaken => ApiError::new(StatusCode::CONFLICT, "exists", "the username is taken or reserved by another invite"),
            E::InvalidUsername(_) | E::WrongUsername(_) => ApiError::bad_request("invalid_username", e.to_string()),
            E::BadRequest(m) => ApiError::bad_request("invalid_body", m),
            E::Account(a) => a.into(),
            E::Store(s) => ApiError::store(s),
            other => ApiError::bad_request("invalid_invite", other.to_string()),
        }
    }
}

async fn create_invite(State(state): State<HttpState>, body: std::result::Result<Json<Obj<NewInvite>>, JsonRejection>) -> ApiResult<Response> {
    let Json(Obj(new)) = body?;
    let server = server(&state);
    let inviter = match new.inviter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => {
            let jid = accounts::parse_account(raw, &server.domain)?;
            if !server.account_exists(&jid).await {
                return Err(ApiError::not_found("the inviter has no account here"));
            }
            Some(jid)
        }
    };
    let request = kabar_modules::invite::NewInvite {
        roster: new.roster.unwrap_or(inviter.is_some()),
        inviter,
        username: new.username.filter(|u| !u.trim().is_empty()),
        expires_in_secs: new.expires_in_secs,
        max_uses: new.max_uses,
        limited: false,
    };
    let created = kabar_modules::invite::create(&server.store, &server.config, request, kabar_core::time::unix_now()).await?;
    info!(invite = %created.invite.id, "admin API: invite created");
    let mut body = invite_json(&created.invite);
    body["token"] = json!(created.token);
    body["uri"] = json!(created.uri);
    body["landing_url"] = json!(created.landing_url);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_invites(State(state): State<HttpState>) -> ApiResult<Json<serde_json::Value>> {
    let all = kabar_modules::invite::list(&server(&state).store).await.map_err(ApiError::store)?;
    Ok(Json(json!({ "invites": all.iter().map(invite_json).collect::<Vec<_>>() })))
}

async fn revoke_invite(State(state): State<HttpState>, path: std::result::Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    if kabar_modules::invite::revoke(&server(&state).store, id.trim()).await.map_err(ApiError::store)? {
        info!(invite = %id, "admin API: invite revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such invite"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check_accepts_only_the_exact_token() {
        let a = AdminAuth::new("correct-horse-battery-staple", 5);
        assert!(a.matches(b"correct-horse-battery-staple"));
        assert!(!a.matches(b"correct-horse-battery-stapl"));
        assert!(!a.matches(b""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bear"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn token_file_is_generated_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("kabar-admin-test-{}", random_id(10)));
        let path = dir.join("sub").join("admin-token");
        let first = read_or_create_token(&path).expect("generated");
        assert_eq!(first.len(), 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(read_or_create_token(&path).expect("read back"), first);
        std::fs::write(&path, "short\n").expect("write");
        assert!(read_or_create_token(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn announcement_text_must_be_xml_characters() {
        assert!(is_xml_text("Maintenance at 22:00\n\tbe back soon ✓"));
        assert!(!is_xml_text("nul\u{0}"));
        assert!(!is_xml_text("bell\u{7}"));
        assert!(!is_xml_text("\u{FFFE}"));
    }
}
