//! XEP-0363 HTTP File Upload, the HTTP half: `/upload/<id>/<filename>` on the HTTPS listener.
//!
//! * `PUT` with the slot's query (`owner`, `size`, `expires`, `sig`): the MAC is recomputed over the
//!   URL's id, filename, owner, expiry and the request's own `Content-Length` and `Content-Type`
//!   (absent: `application/octet-stream`), so a slot only takes the file it was granted for. The
//!   body streams into `<id>.part` (never held in memory), is cut off as soon as it exceeds the
//!   size, and is moved into place and recorded only when exactly that many bytes arrived.
//!   `201` on success; `403` bad or expired signature; `409` slot already used; `411` no length;
//!   `413` over size, quota or maximum; `400` short body.
//! * `GET`/`HEAD`: anyone with the URL (the 128-bit id is the capability, XEP-0363 §5) gets the
//!   file with its stored `Content-Type`, `X-Content-Type-Options: nosniff`, a sandboxing CSP,
//!   and `Content-Disposition: attachment` for every type a browser could run (HTML, SVG, XML,
//!   scripts …), so an upload can never act as a page of this origin.
//! * `OPTIONS`: CORS preflight, so web clients on other origins can upload and show files.
//!
//! The state is the upload module's own [`Uploads`] handle (the binary finds it by downcasting
//! the registered module), and [`sweeper`] deletes expired files periodically.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use http_body_util::BodyExt;
use kabar_core::time::unix_now;
use kabar_core::Server;
use kabar_modules::upload::{Commit, SlotClaim, UploadModule, UploadRecord, Uploads, DEFAULT_CONTENT_TYPE};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::HttpState;

/// Types shown inline; everything else is served as an attachment. Only passive media and plain
/// text: no HTML, SVG, XML, PDF or anything scriptable.
fn inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "image/avif" | "image/bmp" | "text/plain"
    ) || essence.starts_with("audio/")
        || essence.starts_with("video/")
}

/// The upload service of a running server: the upload module's handle.
pub fn service(server: &Server) -> Option<Arc<Uploads>> {
    server.modules().iter().find_map(|m| {
        let any: &dyn std::any::Any = m.as_ref();
        any.downcast_ref::<UploadModule>().map(UploadModule::uploads)
    })
}

#[derive(Clone)]
struct UploadState {
    uploads: Arc<Uploads>,
    server: Arc<Server>,
}

/// The `/upload/` routes; none when uploads are off.
pub fn routes(state: &HttpState) -> Router<HttpState> {
    let server = state.c2s.server.clone();
    match service(&server).filter(|u| u.enabled) {
        Some(uploads) => Router::new()
            .route("/upload/{id}/{filename}", put(put_file).get(get_file).options(preflight))
            .with_state(UploadState { uploads, server }),
        None => Router::new(),
    }
}

/// Deletes expired (and orphaned) files every `[upload] sweep_interval_secs`.
pub async fn sweeper(server: Arc<Server>) {
    let Some(uploads) = service(&server).filter(|u| u.enabled) else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(uploads.config.sweep_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match uploads.sweep(&server.store, unix_now()).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "upload sweep deleted expired files"),
            Err(e) => warn!(error = %e, "upload sweep failed"),
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = (status, format!("{text}\n")).into_response();
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

#[derive(Deserialize)]
struct PutQuery {
    owner: String,
    size: u64,
    expires: u64,
    sig: String,
}

async fn put_file(
    State(st): State<UploadState>,
    Path((id, filename)): Path<(String, String)>,
    query: Result<Query<PutQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let up = &st.uploads;
    let Ok(Query(q)) = query else {
        return plain(StatusCode::FORBIDDEN, "not an upload URL (missing slot parameters)");
    };
    if !kabar_modules::upload::valid_id(&id) {
        return plain(StatusCode::NOT_FOUND, "no such slot");
    }
    if unix_now() > q.expires {
        return plain(StatusCode::FORBIDDEN, "the upload slot has expired; request a new one");
    }
    let Some(length) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return plain(StatusCode::LENGTH_REQUIRED, "Content-Length is required");
    };
    if length > q.size {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "Content-Length is larger than the slot's size");
    }
    if length < q.size {
        return plain(StatusCode::BAD_REQUEST, "Content-Length is smaller than the slot's size");
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_string(),
        Some(v) => match v.to_str() {
            Ok(s) => s.trim().to_string(),
            Err(_) => return plain(StatusCode::FORBIDDEN, "Content-Type does not match the slot"),
        },
    };
    let claim = SlotClaim {
        id: &id,
        owner: &q.owner,
        filename: &filename,
        size: q.size,
        content_type: &content_type,
        expires: q.expires,
    };
    let signer = match up.signer() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "upload: no signing secret");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "uploads are unavailable");
        }
    };
    if !signer.verify(&claim, &q.sig) {
        return plain(StatusCode::FORBIDDEN, "invalid slot signature (or Content-Type differs from the slot request)");
    }
    // Limits may have been lowered since the slot was granted.
    if q.size > up.config.max_file_size {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "the file is larger than the maximum file size");
    }
    let store = &st.server.store;
    if up.config.quota_bytes > 0 {
        match up.usage(store, &q.owner).await {
            Ok((used, _)) if used.saturating_add(q.size) > up.config.quota_bytes => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "upload quota exceeded");
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "upload: cannot read usage");
                return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
            }
        }
    }
    match up.record(store, &id).await {
        Ok(Some(_)) => return plain(StatusCode::CONFLICT, "this slot has been used already"),
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "upload: cannot read the index");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
        }
    }
    if let Err(e) = tokio::fs::create_dir_all(&up.dir).await {
        warn!(dir = %up.dir.display(), error = %e, "upload: cannot create the upload folder");
        return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
    }
    let part = up.part_path(&id);
    let file = match tokio::fs::OpenOptions::new().write(true).create_new(true).open(&part).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return plain(StatusCode::CONFLICT, "this slot is being used by another upload");
        }
        Err(e) => {
            warn!(file = %part.display(), error = %e, "upload: cannot create the file");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
        }
    };
    let idle = Duration::from_secs(up.config.slot_lifetime_secs.max(1));
    if let Err(refusal) = receive(file, body, q.size, idle).await {
        let _ = tokio::fs::remove_file(&part).await;
        return refusal;
    }
    let now = unix_now();
    let record = UploadRecord {
        id: id.clone(),
        owner: q.owner.clone(),
        filename: filename.clone(),
        size: q.size,
        content_type,
        created: now,
        expires: (up.config.expire_after_secs > 0).then(|| now.saturating_add(up.config.expire_after_secs)),
    };
    let outcome = up.commit(store, &record).await;
    if !matches!(outcome, Ok(Commit::Stored)) {
        let _ = tokio::fs::remove_file(&part).await;
    }
    match outcome {
        Ok(Commit::Stored) => {
            info!(id = %id, owner = %q.owner, size = q.size, "upload stored");
            plain(StatusCode::CREATED, "stored")
        }
        Ok(Commit::Exists) => plain(StatusCode::CONFLICT, "this slot has been used already"),
        Ok(Commit::OverQuota) => plain(StatusCode::PAYLOAD_TOO_LARGE, "upload quota exceeded"),
        Err(e) => {
            warn!(error = %e, "upload: cannot store the file");
            plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

/// Streams the body into `file`, refusing as soon as it would exceed `size` and unless it is
/// exactly `size` bytes; flushed to disk before returning. A body that sends nothing for `idle`
/// is dropped, so a stalled client cannot hold a file open for good.
async fn receive(mut file: tokio::fs::File, mut body: Body, size: u64, idle: Duration) -> Result<(), Response> {
    let mut received = 0u64;
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(plain(StatusCode::REQUEST_TIMEOUT, "the upload stalled"));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            debug!(error = %e, "upload body broke off");
            plain(StatusCode::BAD_REQUEST, "the upload broke off")
        })?;
        let Ok(data) = frame.into_data() else { continue };
        received = received.saturating_add(data.len() as u64);
        if received > size {
            return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "more data than the slot's size"));
        }
        file.write_all(&data).await.map_err(|e| {
            warn!(error = %e, "upload: write failed");
            plain(StatusCode::INSUFFICIENT_STORAGE, "cannot write the file")
        })?;
    }
    if received != size {
        return Err(plain(StatusCode::BAD_REQUEST, "the body is shorter than the slot's size"));
    }
    file.sync_all().await.map_err(|e| {
        warn!(error = %e, "upload: fsync failed");
        plain(StatusCode::INSUFFICIENT_STORAGE, "cannot write the file")
    })
}

/// RFC 6266 `Content-Disposition` with an RFC 8187 UTF-8 filename (and an ASCII fallback).
fn disposition(kind: &str, filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}", kabar_modules::upload::percent_encode(filename))
}

async fn get_file(State(st): State<UploadState>, Path((id, _filename)): Path<(String, String)>) -> Response {
    let up = &st.uploads;
    if !kabar_modules::upload::valid_id(&id) {
        return plain(StatusCode::NOT_FOUND, "no such file");
    }
    let record = match up.record(&st.server.store, &id).await {
        Ok(Some(r)) if r.expires.is_none_or(|e| e > unix_now()) => r,
        Ok(_) => return plain(StatusCode::NOT_FOUND, "no such file"),
        Err(e) => {
            warn!(error = %e, "upload: cannot read the index");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
        }
    };
    let file = match tokio::fs::File::open(up.file_path(&id)).await {
        Ok(f) => f,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(id = %id, error = %e, "upload: cannot open the file");
            }
            return plain(StatusCode::NOT_FOUND, "no such file");
        }
    };
    let kind = if inline_safe(&record.content_type) { "inline" } else { "attachment" };
    let mut headers = HeaderMap::new();
    let content_type =
        HeaderValue::from_str(&record.content_type).unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(record.size));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    if let Ok(v) = HeaderValue::from_str(&disposition(kind, &record.filename)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    // The content behind an id never changes.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400, immutable"));
    (StatusCode::OK, headers, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response()
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passive_types_are_shown_inline() {
        for t in ["image/png", "image/jpeg", "video/mp4", "audio/ogg", "text/plain; charset=utf-8", "IMAGE/PNG"] {
            assert!(inline_safe(t), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/javascript",
            "application/pdf",
            "application/octet-stream",
            "text/html;charset=utf-8",
        ] {
            assert!(!inline_safe(t), "{t}");
        }
    }

    #[test]
    fn disposition_quotes_safely() {
        assert_eq!(disposition("inline", "a b.png"), "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png");
        assert_eq!(
            disposition("attachment", "x\"y.html"),
            "attachment; filename=\"x_y.html\"; filename*=UTF-8''x%22y.html"
        );
        assert_eq!(disposition("attachment", "ü.txt"), "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%BC.txt");
    }
}
