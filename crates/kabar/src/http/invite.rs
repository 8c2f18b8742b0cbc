//! `/invite/<token>`: the XEP-0401 landing page (docs/INVITES.md). `GET` shows who invited you and a
//! form to pick a username and password; the same-origin form `POST`s back to the same URL with the
//! token in a hidden field, and on success the page hands off to the web client at `/` or to an
//! app through the `xmpp:` URI.
//!
//! Everything on the page is server-rendered and HTML-escaped; it loads nothing (no script, no CDN;
//! the CSP allows only inline style and form posts to this origin) and sends no referrer, since its
//! URL carries the token. Unknown tokens are `404`, expired, used or revoked ones `410`.
//!
//! CSRF: the token is the only credential and it is in the form, so a cross-site page cannot post
//! a form that does anything its author could not do directly; a request whose `Origin` (when the
//! browser sends one) is neither the public URL nor this host is still refused (`403`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kabar_core::time::{unix_now, xep0082};
use kabar_modules::invite::{self, Expiry, Invite, InviteError, Status};
use serde::Deserialize;
use tracing::warn;

use super::{ConnInfo, HttpState};

const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 8 * 1024;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.5rem}label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}\
button,.button{display:inline-block;margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;background:#2a6ebb;color:#fff;border:0;border-radius:4px;text-decoration:none}\
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.6rem;border-radius:4px}.muted{color:#666;font-size:.9rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        super::html_escape(title)
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn gone_page(status: Status) -> Response {
    let why = match status {
        Status::Expired => "This invitation has expired.",
        Status::UsedUp => "This invitation has already been used.",
        _ => "This invitation has been withdrawn.",
    };
    page(
        StatusCode::GONE,
        "Invitation no longer valid",
        &format!(
            "<h1>Invitation no longer valid</h1><p>{}</p><p>Ask the person who invited you for a new link.</p>",
            super::html_escape(why)
        ),
    )
}

fn not_found_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "No such invitation",
        "<h1>No such invitation</h1><p>This link is not a valid invitation. Check that you copied all of it.</p>",
    )
}

fn disabled_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Invitations are off",
        "<h1>Invitations are off</h1><p>This server does not accept invitations.</p>",
    )
}

/// The invite behind a token, or the page saying why there is none usable.
async fn lookup(state: &HttpState, token: &str) -> Result<Invite, Response> {
    let server = &state.c2s.server;
    if !server.config.invites.enabled {
        return Err(disabled_page());
    }
    match invite::find(&server.store, token).await {
        Ok(Some(inv)) => match inv.status(unix_now()) {
            Status::Valid => Ok(inv),
            s => Err(gone_page(s)),
        },
        Ok(None) => Err(not_found_page()),
        Err(e) => {
            warn!(error = %e, "invite lookup failed");
            Err(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "<h1>Try again later</h1><p>The server could not look up this invitation.</p>",
            ))
        }
    }
}

fn form_page(
    state: &HttpState,
    status: StatusCode,
    inv: &Invite,
    token: &str,
    username: &str,
    error: Option<&str>,
) -> Response {
    let config = &state.c2s.server.config;
    let domain = super::html_escape(&config.domain);
    let heading = match &inv.inviter {
        Some(inviter) => format!("{} invited you to chat", super::html_escape(inviter)),
        None => format!("You are invited to {domain}"),
    };
    let (uri, _) = invite::addresses(config, inv, token);
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", super::html_escape(e))).unwrap_or_default();
    let min = config.registration.min_password_length.max(1);
    let user_field = match &inv.username {
        Some(reserved) => format!(
            "<label for=\"username\">Username</label><input id=\"username\" name=\"username\" value=\"{}\" readonly>",
            super::html_escape(reserved)
        ),
        None => format!(
            "<label for=\"username\">Username</label><input id=\"username\" name=\"username\" value=\"{}\" required autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\">",
            super::html_escape(username)
        ),
    };
    let body = format!(
        "<h1>{heading}</h1>{error}\
<p>Create your account on <strong>{domain}</strong>. Your address will be <em>username</em>@{domain}.</p>\
<form method=\"post\" action=\"/invite/{tok}\">\
<input type=\"hidden\" name=\"token\" value=\"{tok}\">{user_field}\
<label for=\"password\">Password (at least {min} characters)</label><input id=\"password\" name=\"password\" type=\"password\" required minlength=\"{min}\" autocomplete=\"new-password\">\
<label for=\"password2\">Password again</label><input id=\"password2\" name=\"password2\" type=\"password\" required minlength=\"{min}\" autocomplete=\"new-password\">\
<button type=\"submit\">Create account</button></form>\
<p class=\"muted\">Already use XMPP, or prefer an app? <a href=\"{uri}\">Open this invitation in your XMPP app</a>.</p>",
        tok = super::html_escape(token),
        uri = super::html_escape(&uri),
    );
    page(status, &format!("Invitation to {}", config.domain), &body)
}

/// `GET /invite/{token}`.
pub async fn show(State(state): State<HttpState>, Path(token): Path<String>) -> Response {
    match lookup(&state, &token).await {
        Ok(inv) => form_page(&state, StatusCode::OK, &inv, &token, "", None),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct Submission {
    token: String,
    username: Option<String>,
    password: String,
    password2: Option<String>,
}

/// Whether a browser-sent `Origin` is this server (absent: not a browser cross-site request).
fn same_origin(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    if origin == &*state.public_url {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    !host.is_empty() && origin == format!("https://{host}")
}

/// `POST /invite/{token}`: the form.
pub async fn submit(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&state, &headers) {
        return page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "<h1>Forbidden</h1><p>This form can only be sent from its own page.</p>",
        );
    }
    let inv = match lookup(&state, &token).await {
        Ok(inv) => inv,
        Err(r) => return r,
    };
    let is_form = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).is_some_and(|c| {
        c.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    let form: Option<Submission> =
        (is_form && body.len() <= MAX_FORM_BYTES).then(|| serde_urlencoded::from_bytes(&body).ok()).flatten();
    let Some(form) = form.filter(|f| f.token == token) else {
        return form_page(
            &state,
            StatusCode::BAD_REQUEST,
            &inv,
            &token,
            "",
            Some("The form was incomplete; please fill it in again."),
        );
    };
    let username = inv.username.clone().or(form.username.clone()).unwrap_or_default();
    let again = |status: StatusCode, msg: &str| form_page(&state, status, &inv, &token, &username, Some(msg));
    if username.trim().is_empty() {
        return again(StatusCode::BAD_REQUEST, "Choose a username.");
    }
    if form.password2.as_deref().is_some_and(|p| p != form.password) {
        return again(StatusCode::BAD_REQUEST, "The two passwords are different.");
    }
    let server = &state.c2s.server;
    match invite::register(server, conn.peer.ip(), &token, &username, &form.password, Expiry::Check).await {
        Ok(jid) => {
            let config = &server.config;
            let web = if config.http.web_client {
                "<p><a class=\"button\" href=\"/\">Open the web chat</a></p>".to_string()
            } else {
                String::new()
            };
            let app_target = inv.inviter.clone().unwrap_or_else(|| jid.to_string());
            let contact = inv
                .inviter
                .as_deref()
                .filter(|_| inv.roster)
                .map(|i| format!("<p>{} is already in your contacts.</p>", super::html_escape(i)))
                .unwrap_or_default();
            let body = format!(
                "<h1>Welcome!</h1><p>Your account <strong>{acct}</strong> is ready.</p>{contact}{web}\
<p>Or sign in with any XMPP app (Conversations, Monal, Dino, Gajim …) as <strong>{acct}</strong> with your new password, \
then <a href=\"xmpp:{app}\">open this link in the app</a>.</p>",
                acct = super::html_escape(jid.as_str()),
                app = super::html_escape(&app_target),
            );
            page(StatusCode::CREATED, "Account created", &body)
        }
        Err(InviteError::NotFound) => not_found_page(),
        Err(InviteError::Unusable(s)) => gone_page(s),
        Err(InviteError::Disabled) => disabled_page(),
        Err(InviteError::UsernameTaken) => again(StatusCode::CONFLICT, "That username is taken; choose another one."),
        Err(InviteError::RateLimited) => {
            let mut r = again(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many accounts were created from your address recently; try again later.",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
            r
        }
        Err(InviteError::Busy(refusal)) => {
            let mut r = again(StatusCode::SERVICE_UNAVAILABLE, &refusal.text());
            if let Ok(v) = HeaderValue::from_str(&refusal.retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(e @ (InviteError::InvalidUsername(_) | InviteError::WrongUsername(_) | InviteError::BadRequest(_))) => {
            again(StatusCode::BAD_REQUEST, &capitalise(&e.to_string()))
        }
        Err(InviteError::Account(
            kabar_core::accounts::AccountError::InvalidJid(_) | kabar_core::accounts::AccountError::WrongDomain(..),
        )) => again(StatusCode::BAD_REQUEST, "That username is not valid."),
        Err(e) => {
            warn!(error = %e, "web registration with an invite failed");
            again(StatusCode::SERVICE_UNAVAILABLE, "The server could not create the account; try again later.")
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `expire` for JSON answers (admin API).
pub fn expires(inv: &Invite) -> String {
    xep0082(inv.expires)
}
