//! Alert subscriptions from the status page (docs/MONITOR.md "Alerts"):
//!
//! * `POST /status/subscriptions` — `{"jid", "action": "subscribe"|"unsubscribe"}` as JSON;
//!   `202` and a confirmation chat message from the status bot to that account (the same answer
//!   whether or not it exists). Nothing changes until the account confirms.
//! * `GET /status/confirm?token=…` — the link in that message: a page naming the JID and the
//!   action with a button; it does not use the token (chat clients and mail scanners fetch links
//!   to preview them).
//! * `POST /status/confirm` — the button (`token=…`, form-encoded): uses the one-time token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use kabar_modules::status::{ConfirmError, ConfirmFailure, RequestError, StatusHub, SubAction, WebSubscribeError};
use serde::Deserialize;
use serde_json::json;

use crate::http::Obj;

use super::super::{html_escape, ConnInfo, HttpState};
use super::{client_ip, disabled, hub, is_json, json_error};

/// Largest subscription request body, in bytes (a JID is at most ~3 KiB).
const MAX_BODY: usize = 4096;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/status/subscriptions", post(request))
        .route("/status/confirm", get(confirm_page).post(confirm))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    jid: String,
    action: String,
}

async fn request(
    State(state): State<HttpState>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    if !is_json(&headers) {
        return json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_body", "send the request as application/json");
    }
    if body.len() > MAX_BODY {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("at most {MAX_BODY} bytes"));
    }
    let r: SubscriptionBody = match serde_json::from_slice(&body).map(|Obj(r)| r) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    };
    let Some(action) = SubAction::parse(&r.action) else {
        return json_error(StatusCode::BAD_REQUEST, "invalid_action", "action is \"subscribe\" or \"unsubscribe\"");
    };
    let ip = client_ip(&hub, info.peer.ip(), &headers);
    match hub.request_web_subscription(&state.c2s.server, &r.jid, action, ip).await {
        Ok(()) => {
            let body = json!({
                "pending": true,
                "action": action.as_str(),
                "message": "If this account exists, the status bot has sent it a message; the change happens once you confirm there.",
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e @ WebSubscribeError::InvalidJid) => json_error(StatusCode::BAD_REQUEST, "invalid_jid", e.to_string()),
        Err(e @ WebSubscribeError::NotLocal) => json_error(StatusCode::BAD_REQUEST, "not_local", e.to_string()),
        Err(WebSubscribeError::Limited(e @ RequestError::IpLimited)) => {
            json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
        }
        Err(WebSubscribeError::Limited(e @ RequestError::Full)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct TokenParam {
    #[serde(default)]
    token: String,
}

fn action_text(action: SubAction) -> &'static str {
    match action {
        SubAction::Subscribe => "receive outage alerts as chat messages",
        SubAction::Unsubscribe => "stop receiving outage alerts",
    }
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{t}</title><link rel="icon" href="data:,"><style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}button{{font-size:1rem;padding:.5rem 1rem}}</style></head><body><h1>{t}</h1>{body}<p><a href="/status">Back to the status page</a></p></body></html>"#,
        t = html_escape(title)
    );
    let mut response = (status, page).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn refused(e: ConfirmError) -> Response {
    let status = match e {
        ConfirmError::Unknown => StatusCode::NOT_FOUND,
        ConfirmError::Expired => StatusCode::GONE,
        ConfirmError::WrongAccount => StatusCode::FORBIDDEN,
    };
    html(status, "Not confirmed", &format!("<p>{}.</p>", html_escape(&e.to_string())))
}

async fn confirm_page(
    State(state): State<HttpState>,
    query: Result<Query<TokenParam>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let token = query.map(|q| q.0.token).unwrap_or_default();
    match hub.peek_confirmation(&token) {
        Ok((jid, action)) => html(
            StatusCode::OK,
            "Confirm alerts",
            &format!(
                r#"<p>Confirm that <strong>{jid}</strong> wants to {what}.</p><form method="post" action="/status/confirm"><input type="hidden" name="token" value="{token}"><button type="submit">Confirm</button></form>"#,
                jid = html_escape(&jid),
                what = action_text(action),
                token = html_escape(&token),
            ),
        ),
        Err(e) => refused(e),
    }
}

async fn confirm(State(state): State<HttpState>, body: Bytes) -> Response {
    let Some(hub): Option<Arc<StatusHub>> = hub(&state) else { return disabled() };
    let token = if body.len() <= MAX_BODY {
        serde_urlencoded::from_bytes::<TokenParam>(&body).map(|p| p.token).unwrap_or_default()
    } else {
        String::new()
    };
    match hub.confirm_subscription(&state.c2s.server, &token, None).await {
        Ok((jid, action, _)) => {
            let done = match action {
                SubAction::Subscribe => "will now receive outage alerts from the status bot",
                SubAction::Unsubscribe => "will no longer receive outage alerts",
            };
            html(StatusCode::OK, "Confirmed", &format!("<p><strong>{}</strong> {done}.</p>", html_escape(jid.as_str())))
        }
        Err(ConfirmFailure::Confirm(e)) => refused(e),
        Err(ConfirmFailure::Store(_)) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not confirmed",
            "<p>The subscription could not be saved (the subscriber list may be full). Try again later.</p>",
        ),
    }
}
