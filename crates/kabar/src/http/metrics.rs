//! `GET /metrics`: the server's counters in the Prometheus text exposition format (version 0.0.4),
//! written by hand from [`kabar_core::metrics::Metrics`] plus gauges read at scrape time. Public
//! (no token), like `/healthz`; see docs/ADMIN.md for the metric list.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use kabar_core::metrics::{kind_label, HistogramSnapshot, StoreOp, Transport, LATENCY_BUCKETS, STANZA_KINDS};
use kabar_core::Server;

use super::HttpState;

pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&state.c2s.server))
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, count) in h.cumulative.iter().enumerate() {
        let le = LATENCY_BUCKETS.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

/// The whole exposition.
pub fn render(server: &Server) -> String {
    let m = &server.metrics;
    let mut out = String::with_capacity(8 * 1024);

    head(&mut out, "kabar_build_info", "gauge", "Always 1; the version label names the running build.");
    let _ = writeln!(out, "kabar_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    head(&mut out, "kabar_uptime_seconds", "gauge", "Seconds since the server started.");
    let _ = writeln!(out, "kabar_uptime_seconds {}", server.started_at.elapsed().as_secs());

    head(&mut out, "kabar_connections", "gauge", "Client connections open now, by transport.");
    for t in Transport::ALL {
        let _ = writeln!(out, "kabar_connections{{transport=\"{}\"}} {}", t.label(), m.connections_open(t));
    }
    head(&mut out, "kabar_connections_total", "counter", "Client connections accepted since start, by transport.");
    for t in Transport::ALL {
        let _ = writeln!(out, "kabar_connections_total{{transport=\"{}\"}} {}", t.label(), m.connections_total(t));
    }

    head(&mut out, "kabar_sessions", "gauge", "Bound client sessions (including detached ones awaiting XEP-0198 resumption).");
    let _ = writeln!(out, "kabar_sessions {}", server.sessions.count());
    head(&mut out, "kabar_session_queue_depth", "gauge", "Stanzas waiting in the outbound queues of all sessions together.");
    let _ = writeln!(out, "kabar_session_queue_depth {}", server.sessions.queue_depth());

    head(&mut out, "kabar_auth_total", "counter", "SASL authentication exchanges that ran to the end, by result.");
    let _ = writeln!(out, "kabar_auth_total{{result=\"success\"}} {}", m.auth_success.get());
    let _ = writeln!(out, "kabar_auth_total{{result=\"failure\"}} {}", m.auth_failure.get());

    head(&mut out, "kabar_stanzas_in_total", "counter", "Stanzas received from client sessions, by kind.");
    for k in STANZA_KINDS {
        let _ = writeln!(out, "kabar_stanzas_in_total{{kind=\"{}\"}} {}", kind_label(k), m.stanzas_in(k));
    }
    head(&mut out, "kabar_stanzas_out_total", "counter", "Stanzas written to client sessions, by kind.");
    for k in STANZA_KINDS {
        let _ = writeln!(out, "kabar_stanzas_out_total{{kind=\"{}\"}} {}", kind_label(k), m.stanzas_out(k));
    }

    head(&mut out, "kabar_routing_seconds", "histogram", "Time the core spent on one stanza from a client (Server::from_client).");
    histogram(&mut out, "kabar_routing_seconds", "", &m.routing.snapshot());
    head(&mut out, "kabar_store_seconds", "histogram", "Latency of selected store calls, by operation.");
    for op in StoreOp::ALL {
        histogram(&mut out, "kabar_store_seconds", &format!("op=\"{}\"", op.label()), &m.store(op).snapshot());
    }

    head(&mut out, "kabar_registrations_total", "counter", "Accounts created by XEP-0077 in-band registration.");
    let _ = writeln!(out, "kabar_registrations_total {}", m.registrations.get());
    head(&mut out, "kabar_registration_enabled", "gauge", "1 when in-band registration is open now (runtime switch).");
    let _ = writeln!(out, "kabar_registration_enabled {}", u8::from(server.registration_enabled.load(Ordering::Relaxed)));
    head(&mut out, "kabar_admin_auth_failures_total", "counter", "Admin API requests refused for a missing or wrong token.");
    let _ = writeln!(out, "kabar_admin_auth_failures_total {}", m.admin_auth_failures.get());
    out
}
