//! The outage monitor's public pages (docs/MONITOR.md) on the HTTPS listener:
//!
//! * `GET /status` — server-rendered HTML with inline SVG charts (reports against the baseline
//!   band, probe latency), problem types, regions, incidents with their timelines, and a report
//!   form (a few lines of inline JavaScript, allowed by its CSP hash; no external resources).
//! * `GET /status/summary.json` — shaped like Statuspage's `/api/v2/summary.json`.
//! * `POST /status/reports` — a JSON problem report; always `202` with `counted: true|false` for
//!   a well-formed one (reports over the limits are acknowledged but not counted).
//! * `GET /status/incidents.atom` — Atom feed of incidents.
//! * `POST /admin/api/v1/monitor/incidents/{id}/annotations` — admin notes and manual resolution
//!   (mounted by the admin API, behind its token).
//!
//! The page and summary are rendered at most once a second and cached, so a flood of page loads
//! during an outage costs one render per second, not one per request.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use kabar_core::time::{unix_now, xep0082};
use kabar_modules::status::{verdict_text, ServiceSnapshot, Snapshot, StatusHub, StatusModule, SubmitError};
use kabar_monitor::{Cause, Incident, NotCounted, ProblemType, ReportError, State as MonState, Verdict};
use kabar_xml::{elem, element_to_bytes, ElementExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ConnInfo, HttpState, Obj};

mod subscribe;

const NS_ATOM: &str = "http://www.w3.org/2005/Atom";
/// Bins of the 24-hour charts (10 detection minutes each).
const BINS: usize = 144;
const BIN_MINUTES: u64 = 10;
const INCIDENTS_SHOWN: usize = 10;
const FEED_ENTRIES: usize = 50;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/status", get(page))
        .route("/status/summary.json", get(summary))
        .route("/status/reports", post(report))
        .route("/status/incidents.atom", get(feed))
        .merge(subscribe::routes())
}

fn hub(state: &HttpState) -> Option<Arc<StatusHub>> {
    StatusModule::hub_of(&state.c2s.server).filter(|h| h.config().enabled)
}

fn json_error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error, "message": message.into() }))).into_response()
}

fn disabled() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "the status monitor is disabled ([monitor] enabled = false)")
}

// --- render cache ----------------------------------------------------------------------------------

struct Cached {
    at: Instant,
    hub: usize,
    body: Arc<String>,
}

fn cached(
    slot: &'static OnceLock<Mutex<Option<Cached>>>,
    hub: &Arc<StatusHub>,
    render: impl FnOnce() -> String,
) -> Arc<String> {
    let key = Arc::as_ptr(hub) as usize;
    let cell = slot.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = guard.as_ref() {
        if c.hub == key && c.at.elapsed() < Duration::from_secs(1) {
            return c.body.clone();
        }
    }
    let body = Arc::new(render());
    *guard = Some(Cached { at: Instant::now(), hub: key, body: body.clone() });
    body
}

static PAGE_CACHE: OnceLock<Mutex<Option<Cached>>> = OnceLock::new();
static SUMMARY_CACHE: OnceLock<Mutex<Option<Cached>>> = OnceLock::new();
static FEED_CACHE: OnceLock<Mutex<Option<Cached>>> = OnceLock::new();

// --- POST /status/reports ----------------------------------------------------------------------------

/// Fields borrow from the request body when they hold no JSON escapes (the usual case): a report
/// flood then costs no string allocations here (docs/BENCHMARKS.md "Report intake (session 5)").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody<'a> {
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    problem: Cow<'a, str>,
    #[serde(default, borrow)]
    region: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    comment: Option<Cow<'a, str>>,
    /// A random id the page keeps per browser (the "device"); without it the client address is
    /// the reporter key.
    #[serde(default, borrow)]
    device: Option<Cow<'a, str>>,
}

/// The `202` answer, serialised straight from this struct (no intermediate `serde_json::Value`).
#[derive(Serialize)]
struct ReportAnswer<'a> {
    counted: bool,
    reason: Option<&'static str>,
    service: &'a str,
    message: &'static str,
}

/// The client address: the TCP peer, or — when the peer is a trusted proxy — the rightmost
/// `X-Forwarded-For` address that is not itself a trusted proxy.
/// The request body is declared as JSON (parameters such as `charset` aside).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn client_ip(hub: &StatusHub, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = &hub.config().trusted_proxies;
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(s) = value.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                Err(_) => return peer,
            }
        }
    }
    chain.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer)
}

/// The largest body read at all, as axum's `Bytes` extractor caps it by default; the configured
/// `max_report_body_bytes` is checked after parsing.
const REPORT_READ_LIMIT: usize = 2 * 1024 * 1024;

// Takes the whole request rather than `HeaderMap` and `Extension<ConnInfo>` extractors, which
// clone the headers and the connection facts for every report.
async fn report(State(state): State<HttpState>, request: Request) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if !is_json(headers) {
        return super::refused_unread(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_body",
            "send the report as application/json",
        ));
    }
    let body = match axum::body::to_bytes(body, REPORT_READ_LIMIT).await {
        Ok(b) => b,
        Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body too large"),
    };
    let Some(peer) = parts.extensions.get::<ConnInfo>().map(|i| i.peer.ip()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // Shape first: an invalid body is reported as invalid whatever its size (bodies are read up
    // to 2 MB); a well-formed but oversized one is refused as too large.
    let r: ReportBody = match serde_json::from_slice(&body).map(|Obj(r)| r) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    };
    if body.len() > hub.config().max_report_body_bytes {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a report is at most {} bytes", hub.config().max_report_body_bytes),
        );
    }
    let ip = client_ip(&hub, peer, headers);
    let reporter = match r.device.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) if d.len() <= 128 && !d.chars().any(char::is_control) => format!("device:{d}"),
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_device",
                "device must be at most 128 characters without control characters",
            )
        }
        None => format!("ip:{ip}"),
    };
    let verdict = hub.submit_report(
        &r.service,
        &reporter,
        ip,
        None,
        &r.problem,
        r.region.as_deref(),
        r.comment.as_deref(),
        unix_now(),
    );
    match verdict {
        Ok(v) => {
            let reason = match v {
                Verdict::Counted => None,
                Verdict::Acknowledged(NotCounted::Duplicate) => Some("duplicate"),
                Verdict::Acknowledged(NotCounted::IpLimited) => Some("ip_limited"),
                Verdict::Acknowledged(NotCounted::AccountLimited) => Some("account_limited"),
                Verdict::Acknowledged(NotCounted::Saturated) => Some("saturated"),
            };
            let body = ReportAnswer { counted: v.is_counted(), reason, service: &r.service, message: verdict_text(v) };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(SubmitError::Disabled) => disabled(),
        Err(SubmitError::Invalid(e)) => {
            let code = match e {
                ReportError::UnknownService => "unknown_service",
                ReportError::UnknownProblemType => "unknown_problem",
                ReportError::EmptyRegion | ReportError::RegionTooLong | ReportError::RegionInvalid => "invalid_region",
                _ => "invalid_report",
            };
            json_error(StatusCode::BAD_REQUEST, code, e.to_string())
        }
    }
}

// --- GET /status/summary.json --------------------------------------------------------------------------

fn component_status(s: MonState) -> &'static str {
    match s {
        MonState::Ok => "operational",
        MonState::PossibleProblems => "degraded_performance",
        MonState::ProblemsDetected => "major_outage",
    }
}

fn incident_status(i: &Incident) -> &'static str {
    if !i.is_open() {
        "resolved"
    } else if i.annotations.is_empty() {
        "investigating"
    } else {
        "identified"
    }
}

async fn summary(State(state): State<HttpState>) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let url = state.public_url.clone();
    let title = page_title(&state, &hub);
    let body = cached(&SUMMARY_CACHE, &hub, || render_summary(&hub, &hub.snapshot(), &url, &title));
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body.as_str().to_owned())
        .into_response()
}

fn render_summary(hub: &StatusHub, snap: &Snapshot, url: &str, title: &str) -> String {
    let now = xep0082(unix_now());
    let worst = snap.services.iter().map(|s| s.status.state).max().unwrap_or(MonState::Ok);
    let (indicator, description) = match worst {
        MonState::Ok => ("none", "All Systems Operational"),
        MonState::PossibleProblems => ("minor", "Possible Problems"),
        MonState::ProblemsDetected => ("major", "Problems Detected"),
    };
    let since = |s: &ServiceSnapshot| {
        let m = s.history.iter().rev().find(|r| r.state.is_some_and(|st| st != s.status.state)).map(|r| r.minute + 1);
        xep0082(hub.minute_to_unix(m.unwrap_or_else(|| s.history.first().map_or(0, |r| r.minute))))
    };
    let components: Vec<_> = snap
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": s.info.name,
                "name": s.info.title,
                "status": component_status(s.status.state),
                "created_at": xep0082(hub.minute_to_unix(s.history.first().map_or(0, |r| r.minute))),
                "updated_at": since(s),
                "position": i + 1,
                "description": format!("kabar monitor state: {}", s.status.state.as_str()),
                "showcase": true,
                "start_date": null,
                "group_id": null,
                "page_id": "kabar",
                "group": false,
                "only_show_if_degraded": false,
                // kabar's own detail (Statuspage clients ignore unknown fields).
                "kabar": kabar_detail(s),
            })
        })
        .collect();
    let incidents: Vec<_> =
        snap.incidents.iter().filter(|i| i.is_open()).map(|i| incident_json(hub, i, url, snap)).collect();
    json!({
        "page": { "id": "kabar", "name": title, "url": format!("{url}/status"), "time_zone": "Etc/UTC", "updated_at": now },
        "status": { "indicator": indicator, "description": description },
        "components": components,
        "incidents": incidents,
        "scheduled_maintenances": [],
    })
    .to_string()
}

fn kabar_detail(s: &ServiceSnapshot) -> serde_json::Value {
    let st = &s.status;
    let windows: Vec<_> = st
        .windows
        .iter()
        .map(|w| json!({ "minutes": w.minutes, "observed": w.observed, "expected": round2(w.expected), "ratio": round2(w.ratio), "z": round2(w.z) }))
        .collect();
    let problems: serde_json::Map<String, serde_json::Value> =
        ProblemType::ALL.iter().map(|p| (p.as_str().to_owned(), json!(st.problems_last_hour[p.index()]))).collect();
    let probes: serde_json::Map<String, serde_json::Value> = s
        .probes
        .iter()
        .map(|(name, p)| {
            (name.clone(), json!({ "ok": p.ok, "at": xep0082(p.at_secs), "latency_ms": p.latency_ms, "detail": p.detail, "cert_days": p.cert_days }))
        })
        .collect();
    let received: u64 = s.history.iter().rev().take(60).map(|r| r.received).sum();
    json!({
        "state": match st.state { MonState::Ok => "ok", MonState::PossibleProblems => "possible_problems", MonState::ProblemsDetected => "problems_detected" },
        "windows": windows,
        "problems_last_hour": problems,
        "reports_received_last_hour": received,
        "open_incident": st.open_incident,
        "probes": probes,
    })
}

fn round2(x: f64) -> f64 {
    if x.is_finite() {
        (x * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn incident_json(hub: &StatusHub, i: &Incident, url: &str, snap: &Snapshot) -> serde_json::Value {
    let ts = |m: u64| xep0082(hub.minute_to_unix(m));
    let status = incident_status(i);
    let service_title =
        snap.services.iter().find(|s| s.info.name == i.service).map_or(i.service.clone(), |s| s.info.title.clone());
    let mut updates: Vec<serde_json::Value> = Vec::new();
    for (n, t) in i.timeline.iter().enumerate() {
        updates.push(json!({
            "id": format!("{}-t{n}", i.id),
            "status": if t.to == MonState::Ok { "monitoring" } else { "investigating" },
            "body": format!("{} → {} ({})", t.from.as_str(), t.to.as_str(), cause_text(t.cause, t.ratio)),
            "incident_id": i.id,
            "created_at": ts(t.minute),
            "updated_at": ts(t.minute),
            "display_at": ts(t.minute),
            "affected_components": null,
        }));
    }
    for (n, a) in i.annotations.iter().enumerate() {
        let at = xep0082(hub.minute_to_unix(a.at_secs / 60));
        updates.push(json!({
            "id": format!("{}-a{n}", i.id),
            "status": "identified",
            "body": a.text,
            "incident_id": i.id,
            "created_at": at,
            "updated_at": at,
            "display_at": at,
            "affected_components": null,
        }));
    }
    updates.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    let updated =
        updates.first().and_then(|u| u["created_at"].as_str().map(str::to_owned)).unwrap_or_else(|| ts(i.start_minute));
    json!({
        "id": i.id,
        "name": format!("{service_title}: problems detected"),
        "status": status,
        "created_at": ts(i.start_minute),
        "updated_at": updated,
        "monitoring_at": i.end_minute.map(ts),
        "resolved_at": i.resolved_minute.map(ts),
        "impact": "major",
        "shortlink": format!("{url}/status#incident-{}", anchor(&i.id)),
        "started_at": ts(i.start_minute),
        "page_id": "kabar",
        "incident_updates": updates,
        "components": [{ "id": i.service, "name": service_title, "status": if i.is_open() { "major_outage" } else { "operational" } }],
    })
}

fn cause_text(cause: Cause, ratio: f64) -> String {
    match cause {
        Cause::Reports => format!("user reports {ratio:.1}× normal"),
        Cause::Probes => "probes failing".to_owned(),
        Cause::ReportsAndProbes => format!("user reports {ratio:.1}× normal, probes failing"),
        Cause::Recovered => "recovered".to_owned(),
        Cause::AdminResolved => "resolved by an administrator".to_owned(),
    }
}

fn anchor(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
}

// --- GET /status/incidents.atom --------------------------------------------------------------------

async fn feed(State(state): State<HttpState>) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let url = state.public_url.clone();
    let title = page_title(&state, &hub);
    let body = cached(&FEED_CACHE, &hub, || render_feed(&hub, &hub.snapshot(), &url, &title).unwrap_or_default());
    if body.is_empty() {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "feed rendering failed");
    }
    (
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        body.as_str().to_owned(),
    )
        .into_response()
}

fn render_feed(hub: &StatusHub, snap: &Snapshot, url: &str, title: &str) -> Option<String> {
    let text = |name: &str, value: String| elem(name, NS_ATOM).with_text(value);
    let newest = snap
        .incidents
        .iter()
        .map(|i| i.resolved_minute.or(i.timeline.last().map(|t| t.minute)).unwrap_or(i.start_minute))
        .max()
        .map(|m| hub.minute_to_unix(m))
        .unwrap_or_else(unix_now);
    let mut feed = elem("feed", NS_ATOM)
        .with_child(text("title", format!("{title}: incidents")))
        .with_child(text("id", format!("{url}/status/incidents.atom")))
        .with_child(text("updated", xep0082(newest)))
        .with_child(
            elem("link", NS_ATOM).with_attr("rel", "self").with_attr("href", format!("{url}/status/incidents.atom")),
        )
        .with_child(
            elem("link", NS_ATOM)
                .with_attr("rel", "alternate")
                .with_attr("type", "text/html")
                .with_attr("href", format!("{url}/status")),
        )
        .with_child(elem("author", NS_ATOM).with_child(text("name", "kabar outage monitor".to_owned())));
    for i in snap.incidents.iter().take(FEED_ENTRIES) {
        let service_title =
            snap.services.iter().find(|s| s.info.name == i.service).map_or(i.service.clone(), |s| s.info.title.clone());
        let updated = i.resolved_minute.or(i.timeline.last().map(|t| t.minute)).unwrap_or(i.start_minute);
        let mut content = String::new();
        let _ = writeln!(
            content,
            "{service_title}: problems detected since {} UTC (peak {:.1}× normal).",
            xep0082(hub.minute_to_unix(i.start_minute)),
            i.peak_ratio
        );
        for t in &i.timeline {
            let _ = writeln!(
                content,
                "{} {} → {} ({})",
                xep0082(hub.minute_to_unix(t.minute)),
                t.from.as_str(),
                t.to.as_str(),
                cause_text(t.cause, t.ratio)
            );
        }
        for a in &i.annotations {
            let _ = writeln!(content, "{} note: {}", xep0082(hub.minute_to_unix(a.at_secs / 60)), a.text);
        }
        if let Some(r) = i.resolved_minute {
            let _ = writeln!(
                content,
                "{} resolved ({}).",
                xep0082(hub.minute_to_unix(r)),
                if matches!(i.resolution, Some(kabar_monitor::Resolution::Admin)) {
                    "by an administrator"
                } else {
                    "automatically"
                }
            );
        }
        let status = if i.is_open() { "ongoing" } else { "resolved" };
        feed.append_child(
            elem("entry", NS_ATOM)
                .with_child(text("id", format!("{url}/status#incident-{}", anchor(&i.id))))
                .with_child(text("title", format!("{service_title}: problems detected ({status})")))
                .with_child(text("published", xep0082(hub.minute_to_unix(i.start_minute))))
                .with_child(text("updated", xep0082(hub.minute_to_unix(updated))))
                .with_child(
                    elem("link", NS_ATOM)
                        .with_attr("rel", "alternate")
                        .with_attr("href", format!("{url}/status#incident-{}", anchor(&i.id))),
                )
                .with_child(elem("content", NS_ATOM).with_attr("type", "text").with_text(content)),
        );
    }
    let bytes = element_to_bytes(&feed).ok()?;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    out.push_str(std::str::from_utf8(&bytes).ok()?);
    Some(out)
}

// --- admin: POST /admin/api/v1/monitor/incidents/{id}/annotations --------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotationBody {
    text: String,
    #[serde(default)]
    resolve: bool,
}

/// Mounted inside the admin API (its token check applies).
pub async fn annotate_incident(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    body: Result<Json<Obj<AnnotationBody>>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let Json(Obj(body)) = match body {
        Ok(b) => b,
        Err(r) => {
            let status = if r.status().is_client_error() { r.status() } else { StatusCode::BAD_REQUEST };
            return json_error(status, "invalid_body", r.body_text());
        }
    };
    if body.text.trim().is_empty() && !body.resolve {
        return json_error(StatusCode::BAD_REQUEST, "invalid_annotation", "text must not be empty");
    }
    use kabar_modules::status::AnnotateFailure;
    match hub.annotate(&state.c2s.server, &id, body.text.trim(), body.resolve).await {
        Ok(inc) => {
            let snap = hub.snapshot();
            (StatusCode::OK, Json(incident_json(&hub, &inc, &state.public_url, &snap))).into_response()
        }
        Err(AnnotateFailure::NotFound) => json_error(StatusCode::NOT_FOUND, "not_found", "no such incident"),
        Err(AnnotateFailure::NotOpen) => {
            json_error(StatusCode::CONFLICT, "not_open", "the incident is already resolved")
        }
        Err(AnnotateFailure::Invalid(m)) => json_error(StatusCode::BAD_REQUEST, "invalid_annotation", m),
    }
}

// --- GET /status -------------------------------------------------------------------------------------

const SCRIPT: &str = r#"
(function () {
  var form = document.getElementById('report-form');
  if (!form) return;
  var out = document.getElementById('report-result');
  var device = null;
  try {
    device = localStorage.getItem('kabar-status-device');
    if (!device) {
      var a = new Uint8Array(16); crypto.getRandomValues(a);
      device = Array.prototype.map.call(a, function (b) { return ('0' + b.toString(16)).slice(-2); }).join('');
      localStorage.setItem('kabar-status-device', device);
    }
  } catch (e) { device = null; }
  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var data = new FormData(form);
    var body = { service: data.get('service'), problem: data.get('problem') };
    var region = (data.get('region') || '').trim(); if (region) body.region = region;
    var comment = (data.get('comment') || '').trim(); if (comment) body.comment = comment;
    if (device) body.device = device;
    out.textContent = 'Sending…';
    fetch('/status/reports', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (x) { out.textContent = x[0] === 202 ? x[1].message : ('Not sent: ' + (x[1].message || x[0])); })
      .catch(function () { out.textContent = 'Could not send the report; try again.'; });
  });
})();
(function () {
  var form = document.getElementById('alerts-form');
  if (!form) return;
  var out = document.getElementById('alerts-result');
  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var action = (ev.submitter && ev.submitter.value) || 'subscribe';
    var body = { jid: (new FormData(form).get('jid') || '').trim(), action: action };
    out.textContent = 'Sending…';
    fetch('/status/subscriptions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (x) { out.textContent = x[0] === 202 ? x[1].message : ('Not sent: ' + (x[1].message || x[0])); })
      .catch(function () { out.textContent = 'Could not send the request; try again.'; });
  });
})();
"#;

fn script_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT.as_bytes())))
    })
}

fn page_title(state: &HttpState, hub: &StatusHub) -> String {
    let t = &hub.config().title;
    if t.is_empty() {
        format!("{} status", state.c2s.server.config.domain)
    } else {
        t.clone()
    }
}

async fn page(State(state): State<HttpState>) -> Response {
    let Some(hub) = hub(&state) else { return disabled() };
    let title = page_title(&state, &hub);
    let body = cached(&PAGE_CACHE, &hub, || render_page(&hub, &hub.snapshot(), &title));
    let csp = format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        script_hash()
    );
    let mut response = (StatusCode::OK, body.as_str().to_owned()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn state_class(s: MonState) -> &'static str {
    match s {
        MonState::Ok => "ok",
        MonState::PossibleProblems => "possible",
        MonState::ProblemsDetected => "detected",
    }
}

fn hhmm(unix: u64) -> String {
    xep0082(unix).get(11..16).unwrap_or("").to_owned()
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:1rem 1.5rem}header h1{margin:0;font-size:1.4rem}
main{max-width:1100px;margin:0 auto;padding:1rem}
section{background:#fff;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{margin:.2rem 0 .6rem;font-size:1.2rem}h3{font-size:1rem;margin:.8rem 0 .4rem}
.badge{display:inline-block;padding:.2rem .6rem;border-radius:1rem;font-weight:600;font-size:.9rem}
.ok{background:#d9f2e3;color:#11613a}.possible{background:#fff1cc;color:#7a5300}.detected{background:#fddede;color:#8a1616}
.overall{font-size:1.1rem;margin-top:.4rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:1rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.2rem .4rem;border-bottom:1px solid #eee;font-size:.9rem}
.bar{background:#4f6bed;height:.6rem;border-radius:.3rem;display:inline-block;vertical-align:middle}
svg{width:100%;height:auto;background:#fbfcfe;border:1px solid #e6e8ee;border-radius:4px}
.muted{color:#6b7280;font-size:.85rem}
form label{display:block;margin:.4rem 0 .15rem;font-weight:600}form select,form input,form textarea{width:100%;max-width:420px;padding:.35rem;font:inherit}
form button{margin-top:.6rem;padding:.45rem 1.2rem;font:inherit;background:#1d2330;color:#fff;border:0;border-radius:4px;cursor:pointer}
.timeline{margin:.3rem 0 .3rem 1rem;padding:0}.timeline li{font-size:.9rem}
"#;

struct Bin {
    counted: u64,
    expected: f64,
    spread: f64,
    minutes: u32,
    latency: BTreeMap<String, (u64, u32)>,
}

fn bins(svc: &ServiceSnapshot, end_minute: u64) -> Vec<Bin> {
    let start = end_minute.saturating_sub(BINS as u64 * BIN_MINUTES);
    let mut out: Vec<Bin> = (0..BINS)
        .map(|_| Bin { counted: 0, expected: 0.0, spread: 0.0, minutes: 0, latency: BTreeMap::new() })
        .collect();
    for r in &svc.history {
        if r.minute < start || r.minute >= end_minute {
            continue;
        }
        let b = &mut out[((r.minute - start) / BIN_MINUTES) as usize];
        b.counted += r.counted;
        b.expected += r.expected;
        b.spread = b.spread.max(r.spread);
        b.minutes += 1;
        for (name, p) in &r.probes {
            let e = b.latency.entry(name.clone()).or_insert((0, 0));
            e.0 += p.latency_ms_sum;
            e.1 += p.ok + p.fail;
        }
    }
    out
}

const W: f64 = 720.0;
const H: f64 = 160.0;
const PAD_L: f64 = 36.0;
const PAD_B: f64 = 18.0;

fn axis(out: &mut String, hub: &StatusHub, end_minute: u64, max: f64, unit: &str) {
    let plot_h = H - PAD_B;
    let _ = write!(out, r##"<line x1="{PAD_L}" y1="{plot_h}" x2="{W}" y2="{plot_h}" stroke="#c8ccd6"/>"##);
    let _ =
        write!(out, r##"<text x="2" y="12" font-size="10" fill="#6b7280">{}</text>"##, super::html_escape(&format!("{max:.0}{unit}")));
    let _ = write!(out, r##"<text x="2" y="{}" font-size="10" fill="#6b7280">0</text>"##, plot_h);
    let start = end_minute.saturating_sub(BINS as u64 * BIN_MINUTES);
    for k in 0..=4u64 {
        let m = start + k * (BINS as u64 * BIN_MINUTES) / 4;
        let x = PAD_L + (W - PAD_L) * k as f64 / 4.0;
        let anchor = if k == 0 {
            "start"
        } else if k == 4 {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{}" font-size="10" fill="#6b7280" text-anchor="{anchor}">{}</text>"##,
            H - 4.0,
            hhmm(hub.minute_to_unix(m))
        );
    }
}

fn reports_chart(hub: &StatusHub, svc: &ServiceSnapshot, end_minute: u64) -> String {
    let bins = bins(svc, end_minute);
    let upper = |b: &Bin| b.expected * (1.0 + 2.0 * b.spread.max(0.1)) + 2.0 * b.expected.sqrt();
    let lower = |b: &Bin| (b.expected * (1.0 - 2.0 * b.spread.max(0.1)) - 2.0 * b.expected.sqrt()).max(0.0);
    let max = bins.iter().map(|b| (b.counted as f64).max(upper(b))).fold(4.0, f64::max).ceil();
    let plot_h = H - PAD_B;
    let bw = (W - PAD_L) / BINS as f64;
    let y = |v: f64| plot_h - v / max * (plot_h - 14.0);
    let mut out = format!(
        r##"<svg class="chart reports-chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}: reports per 10 minutes over 24 hours against the expected band" xmlns="http://www.w3.org/2000/svg">"##,
        super::html_escape(&svc.info.title)
    );
    // Expected band (only where the minute was judged).
    let mut top = String::new();
    let mut bottom = Vec::new();
    for (i, b) in bins.iter().enumerate() {
        if b.minutes == 0 {
            continue;
        }
        let x = PAD_L + bw * (i as f64 + 0.5);
        let _ = write!(top, "{x:.1},{:.1} ", y(upper(b)));
        bottom.push(format!("{x:.1},{:.1}", y(lower(b))));
    }
    if !top.is_empty() {
        bottom.reverse();
        let _ = write!(
            out,
            r##"<polygon class="band" points="{top}{}" fill="#cfe3ff" stroke="none"><title>expected range</title></polygon>"##,
            bottom.join(" ")
        );
        let line: Vec<String> = bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.minutes > 0)
            .map(|(i, b)| format!("{:.1},{:.1}", PAD_L + bw * (i as f64 + 0.5), y(b.expected)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#4f6bed" stroke-width="1" stroke-dasharray="3,2"/>"##,
            line.join(" ")
        );
    }
    for (i, b) in bins.iter().enumerate() {
        if b.counted == 0 {
            continue;
        }
        let x = PAD_L + bw * i as f64;
        let color = if b.counted as f64 > upper(b) && b.counted >= 5 { "#d64545" } else { "#5a6477" };
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} reports (expected {:.1})</title></rect>"##,
            x + 0.5,
            y(b.counted as f64),
            (bw - 1.0).max(0.5),
            plot_h - y(b.counted as f64),
            b.counted,
            b.expected
        );
    }
    axis(&mut out, hub, end_minute, max, "");
    out.push_str("</svg>");
    out
}

fn latency_chart(hub: &StatusHub, svc: &ServiceSnapshot, end_minute: u64) -> Option<String> {
    let bins = bins(svc, end_minute);
    let names: Vec<String> = bins
        .iter()
        .flat_map(|b| b.latency.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.is_empty() {
        return None;
    }
    let avg = |b: &Bin, n: &str| b.latency.get(n).filter(|(_, c)| *c > 0).map(|(s, c)| *s as f64 / f64::from(*c));
    let max = bins
        .iter()
        .flat_map(|b| names.iter().filter_map(|n| avg(b, n)).collect::<Vec<_>>())
        .fold(10.0, f64::max)
        .ceil();
    let plot_h = H - PAD_B;
    let bw = (W - PAD_L) / BINS as f64;
    let y = |v: f64| plot_h - v / max * (plot_h - 14.0);
    let colors = ["#4f6bed", "#e08a00", "#18a058", "#b5179e", "#0096c7", "#6b7280"];
    let mut out = format!(
        r##"<svg class="chart latency-chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}: probe latency in milliseconds over 24 hours" xmlns="http://www.w3.org/2000/svg">"##,
        super::html_escape(&svc.info.title)
    );
    for (k, name) in names.iter().enumerate() {
        let color = colors[k % colors.len()];
        let pts: Vec<String> = bins
            .iter()
            .enumerate()
            .filter_map(|(i, b)| avg(b, name).map(|v| format!("{:.1},{:.1}", PAD_L + bw * (i as f64 + 0.5), y(v))))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"><title>{}</title></polyline>"##,
            pts.join(" "),
            super::html_escape(name)
        );
        // Dots too, so a series with one bin (a new probe) is visible.
        for p in &pts {
            if let Some((x, y)) = p.split_once(',') {
                let _ = write!(out, r##"<circle cx="{x}" cy="{y}" r="2" fill="{color}"/>"##);
            }
        }
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{}" font-size="10" fill="{color}">{}</text>"##,
            PAD_L + 6.0 + 110.0 * k as f64,
            12,
            super::html_escape(name)
        );
    }
    axis(&mut out, hub, end_minute, max, " ms");
    out.push_str("</svg>");
    Some(out)
}

fn render_page(hub: &StatusHub, snap: &Snapshot, title: &str) -> String {
    let now = unix_now();
    let end_minute = now / snap.minute_secs.max(1) + 1;
    let worst = snap.services.iter().map(|s| s.status.state).max().unwrap_or(MonState::Ok);
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{t}</title><link rel="icon" href="data:,"><link rel="alternate" type="application/atom+xml" title="Incidents" href="/status/incidents.atom"><style>{STYLE}</style></head><body><header><h1>{t}</h1><div class="overall">Overall: <span class="badge {c}" id="overall-state">{s}</span> <span class="muted">updated {u} UTC</span></div></header><main>"#,
        t = super::html_escape(title),
        c = state_class(worst),
        s = super::html_escape(worst.as_str()),
        u = hhmm(now)
    );
    for svc in &snap.services {
        let st = &svc.status;
        let _ = write!(
            h,
            r#"<section class="service" id="service-{id}" data-state="{sc}"><h2>{t} <span class="badge {sc}">{s}</span></h2>"#,
            id = anchor(&svc.info.name),
            t = super::html_escape(&svc.info.title),
            sc = state_class(st.state),
            s = super::html_escape(st.state.as_str())
        );
        let window = st.windows.iter().find(|w| w.minutes == 15).or(st.windows.first());
        if let Some(w) = window {
            let _ = write!(
                h,
                r#"<p class="muted">Last {} minutes: {} counted reports, {:.1} expected ({:.1}× normal).</p>"#,
                w.minutes, w.observed, w.expected, w.ratio
            );
        } else {
            h.push_str(r#"<p class="muted">Not judged yet.</p>"#);
        }
        h.push_str("<h3>Reports, last 24 hours (10-minute bins; blue: expected range)</h3>");
        h.push_str(&reports_chart(hub, svc, end_minute));
        if let Some(chart) = latency_chart(hub, svc, end_minute) {
            h.push_str("<h3>Probe latency</h3>");
            h.push_str(&chart);
        }
        h.push_str(r#"<div class="grid">"#);
        // Problem types (last hour).
        let total: u64 = st.problems_last_hour.iter().sum();
        h.push_str("<div><h3>Most reported problems (last hour)</h3><table>");
        let mut problems: Vec<(ProblemType, u64)> =
            ProblemType::ALL.iter().map(|p| (*p, st.problems_last_hour[p.index()])).collect();
        problems.sort_by_key(|p| std::cmp::Reverse(p.1));
        for (p, n) in problems {
            let pct = if total > 0 { n as f64 * 100.0 / total as f64 } else { 0.0 };
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td><span class="bar" style="width:{:.0}px"></span> {n}</td></tr>"#,
                problem_label(p),
                pct * 1.2
            );
        }
        h.push_str("</table></div>");
        // Regions (last hour of records).
        let mut regions: BTreeMap<&str, u64> = BTreeMap::new();
        let horizon = end_minute.saturating_sub(61);
        for r in svc.history.iter().filter(|r| r.minute >= horizon) {
            for (k, v) in &r.regions {
                *regions.entry(k.as_str()).or_default() += v;
            }
        }
        let mut regions: Vec<(&str, u64)> = regions.into_iter().collect();
        regions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        h.push_str(r#"<div><h3>Reports by region (last hour)</h3><table class="regions">"#);
        if regions.is_empty() {
            h.push_str(r#"<tr><td class="muted">No reports.</td></tr>"#);
        }
        let rmax = regions.first().map_or(1, |r| r.1.max(1));
        for (name, n) in regions.iter().take(10) {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td><span class="bar" style="width:{:.0}px"></span> {n}</td></tr>"#,
                super::html_escape(name),
                *n as f64 * 120.0 / rmax as f64
            );
        }
        h.push_str("</table></div>");
        // Probes.
        h.push_str(r#"<div><h3>Probes</h3><table class="probes">"#);
        if svc.probes.is_empty() {
            h.push_str(r#"<tr><td class="muted">No probe results yet.</td></tr>"#);
        }
        for (name, p) in &svc.probes {
            let cert = p.cert_days.map(|d| format!(", certificate expires in {d} days")).unwrap_or_default();
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td><span class="badge {}">{}</span></td><td>{} ms{} <span class="muted">{}</span></td></tr>"#,
                super::html_escape(name),
                if p.ok { "ok" } else { "detected" },
                if p.ok { "up" } else { "failing" },
                p.latency_ms,
                super::html_escape(&cert),
                super::html_escape(&p.detail)
            );
        }
        h.push_str("</table></div></div></section>");
    }
    // Incidents.
    h.push_str(r#"<section id="incidents"><h2>Recent incidents</h2>"#);
    if snap.incidents.is_empty() {
        h.push_str(r#"<p class="muted">No incidents recorded.</p>"#);
    }
    for i in snap.incidents.iter().take(INCIDENTS_SHOWN) {
        let title = snap
            .services
            .iter()
            .find(|s| s.info.name == i.service)
            .map_or(i.service.as_str(), |s| s.info.title.as_str());
        let when = match i.resolved_minute {
            Some(r) => {
                format!("resolved {} UTC", xep0082(hub.minute_to_unix(r)).replace('T', " ").trim_end_matches('Z'))
            }
            None => "ongoing".to_owned(),
        };
        let _ = write!(
            h,
            r#"<div class="incident" id="incident-{}"><h3>{}: problems detected <span class="badge {}">{}</span></h3><p class="muted">Started {} UTC, peak {:.1}× normal.</p><ul class="timeline">"#,
            anchor(&i.id),
            super::html_escape(title),
            if i.is_open() { "detected" } else { "ok" },
            super::html_escape(&when),
            xep0082(hub.minute_to_unix(i.start_minute)).replace('T', " ").trim_end_matches('Z'),
            i.peak_ratio
        );
        for t in &i.timeline {
            let _ = write!(
                h,
                "<li>{} — {} → {} ({})</li>",
                hhmm(hub.minute_to_unix(t.minute)),
                super::html_escape(t.from.as_str()),
                super::html_escape(t.to.as_str()),
                super::html_escape(&cause_text(t.cause, t.ratio))
            );
        }
        for a in &i.annotations {
            let _ = write!(
                h,
                "<li>{} — <strong>note:</strong> {}</li>",
                hhmm(hub.minute_to_unix(a.at_secs / 60)),
                super::html_escape(&a.text)
            );
        }
        h.push_str("</ul></div>");
    }
    h.push_str(r#"<p class="muted"><a href="/status/incidents.atom">Atom feed</a> · <a href="/status/summary.json">JSON summary</a></p></section>"#);
    // Report form.
    h.push_str(r#"<section id="report"><h2>Having problems? Tell us</h2><form id="report-form" method="post" action="/status/reports"><label for="service">Service</label><select id="service" name="service">"#);
    for svc in &snap.services {
        let _ = write!(h, r#"<option value="{}">{}</option>"#, super::html_escape(&svc.info.name), super::html_escape(&svc.info.title));
    }
    h.push_str(r#"</select><label for="problem">What is wrong?</label><select id="problem" name="problem">"#);
    for p in ProblemType::ALL {
        let _ = write!(h, r#"<option value="{}">{}</option>"#, p.as_str(), problem_label(p));
    }
    h.push_str(r#"</select><label for="region">Where are you? (optional)</label><input id="region" name="region" list="regions" maxlength="64" autocomplete="off"><datalist id="regions">"#);
    let regions: std::collections::BTreeSet<&str> =
        snap.services.iter().flat_map(|s| s.info.regions.iter().map(String::as_str)).collect();
    for r in regions {
        let _ = write!(h, r#"<option value="{}">"#, super::html_escape(r));
    }
    h.push_str(r#"</datalist><label for="comment">Comment (optional)</label><textarea id="comment" name="comment" rows="2" maxlength="500"></textarea><button type="submit">Report a problem</button><p id="report-result" class="muted" role="status"></p></form>"#);
    let _ = write!(
        h,
        r#"<p class="muted">In chat: send "report &lt;service&gt; &lt;problem&gt;" or "subscribe" to {}.</p></section>"#,
        super::html_escape(hub.bot_jid().map(|j| j.as_str()).unwrap_or(""))
    );
    let _ = write!(
        h,
        r#"<section id="alerts"><h2>Get alerts</h2><form id="alerts-form" method="post" action="/status/subscriptions"><label for="alerts-jid">Your chat address on {d}</label><input id="alerts-jid" name="jid" type="text" required maxlength="3071" autocomplete="username" placeholder="you@{d}"><button type="submit" name="action" value="subscribe">Subscribe</button> <button type="submit" name="action" value="unsubscribe">Unsubscribe</button><p id="alerts-result" class="muted" role="status"></p></form><p class="muted">The status bot sends you a message to confirm; nothing changes until you do.</p></section>"#,
        d = super::html_escape(hub.domain())
    );
    let _ = write!(h, "</main><script>{SCRIPT}</script></body></html>");
    h
}

fn problem_label(p: ProblemType) -> &'static str {
    match p {
        ProblemType::CantSend => "Can't send messages",
        ProblemType::CantLogIn => "Can't log in",
        ProblemType::AppWontLoad => "App won't load",
        ProblemType::MessagesDelayed => "Messages delayed",
        ProblemType::Other => "Something else",
    }
}
