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
    cluster_metrics(&mut out, server);

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
    registration_metrics(&mut out, server);
    head(&mut out, "kabar_admin_auth_failures_total", "counter", "Admin API requests refused for a missing or wrong token.");
    let _ = writeln!(out, "kabar_admin_auth_failures_total {}", m.admin_auth_failures.get());
    // Outage-monitor webhooks (docs/MONITOR.md "Webhooks").
    head(&mut out, "kabar_monitor_webhook_pending", "gauge", "Webhook deliveries waiting or being attempted (kept in the store).");
    let _ = writeln!(out, "kabar_monitor_webhook_pending {}", crate::webhooks::pending());
    head(&mut out, "kabar_monitor_webhook_dropped_total", "counter", "Webhook deliveries dropped unsent because a queue was full.");
    let _ = writeln!(out, "kabar_monitor_webhook_dropped_total {}", crate::webhooks::dropped_total());
    head(&mut out, "kabar_monitor_webhook_given_up_total", "counter", "Webhook deliveries given up after all retries.");
    let _ = writeln!(out, "kabar_monitor_webhook_given_up_total {}", crate::webhooks::given_up_total());

    // Admission control (docs/OVERLOAD.md): its signals next to their limits (0 = no limit).
    let a = &server.admission;
    let sig = a.signals();
    let cfg = a.config();
    head(&mut out, "kabar_admission_level", "gauge", "0 open, 1 registrations refused, 2 logins and registrations refused.");
    let _ = writeln!(out, "kabar_admission_level {}", a.level());
    head(&mut out, "kabar_admission_refused_total", "counter", "New work refused by admission control, by kind.");
    let _ = writeln!(out, "kabar_admission_refused_total{{work=\"login\"}} {}", a.refused_logins.get());
    let _ = writeln!(out, "kabar_admission_refused_total{{work=\"registration\"}} {}", a.refused_registrations.get());
    for (name, help, value, limit) in [
        ("connections", "Open client connections (all transports).", server.client_connections(), a.max_connections()),
        ("memory_mb", "Resident memory, MiB.", sig.memory_mb, cfg.max_memory_mb),
        ("open_fds", "Open file descriptors.", sig.open_fds, sig.fd_limit * 9 / 10),
        ("loop_lag_ms", "Event-loop lag, ms (smoothed).", sig.loop_lag_ms, cfg.max_loop_lag_ms),
        ("store_latency_ms", "Store write-queue barrier latency, ms (smoothed).", sig.store_latency_ms, cfg.max_store_latency_ms),
        ("registration_queue", "Registrations waiting for a key-derivation slot.", sig.registration_queue, cfg.max_registration_queue),
    ] {
        head(&mut out, &format!("kabar_admission_{name}"), "gauge", help);
        let _ = writeln!(out, "kabar_admission_{name} {value}");
        head(&mut out, &format!("kabar_admission_{name}_limit"), "gauge", "The limit for the signal above (0: none).");
        let _ = writeln!(out, "kabar_admission_{name}_limit {limit}");
    }
    out
}

/// The registration mode, proof-of-work difficulty and outcomes (docs/REGISTRATION.md).
fn registration_metrics(out: &mut String, server: &Server) {
    use kabar_core::registration::RegistrationMode;
    let now = server.registration.mode();
    head(out, "kabar_registration_mode", "gauge", "1 for the registration mode in force (open, invite-only, proof-of-work, closed).");
    for mode in RegistrationMode::ALL {
        let _ = writeln!(out, "kabar_registration_mode{{mode=\"{}\"}} {}", mode.as_str(), u8::from(mode == now));
    }
    head(out, "kabar_registration_pow_difficulty", "gauge", "Leading zero bits new proof-of-work challenges ask for.");
    let _ = writeln!(out, "kabar_registration_pow_difficulty {}", server.registration.pow_difficulty());
    let p = &server.registration.pow;
    head(out, "kabar_registration_pow_total", "counter", "Proof-of-work challenges issued and registrations by outcome.");
    for (result, c) in [
        ("issued", &p.issued),
        ("accepted", &p.accepted),
        ("missing", &p.missing),
        ("wrong", &p.wrong),
        ("invalid", &p.invalid),
        ("expired", &p.expired),
        ("reused", &p.reused),
    ] {
        let _ = writeln!(out, "kabar_registration_pow_total{{result=\"{result}\"}} {}", c.get());
    }
    let remembered = server
        .modules()
        .iter()
        .find_map(|m| (m.as_ref() as &dyn std::any::Any).downcast_ref::<kabar_modules::register::RegisterModule>())
        .map_or(0, |m| m.pow_remembered());
    head(out, "kabar_registration_pow_remembered", "gauge", "Used proof-of-work challenges remembered against replay.");
    let _ = writeln!(out, "kabar_registration_pow_remembered {remembered}");
}

/// The cluster as this node sees it (docs/CLUSTER.md); nothing on a single node.
fn cluster_metrics(out: &mut String, server: &Server) {
    let Some(c) = server.sessions.cluster_stats() else { return };
    let node = &c.node;
    for (name, kind, help, value) in [
        ("kabar_cluster_nodes_seen", "gauge", "Other cluster nodes this node hears from now.", c.nodes_seen as u64),
        ("kabar_cluster_nodes_suspect", "gauge", "Other nodes skipped because they did not take a stanza.", c.nodes_suspect as u64),
        ("kabar_cluster_directory_remote_sessions", "gauge", "Sessions of other nodes in this node's directory.", c.remote_sessions as u64),
        ("kabar_cluster_nats_connected", "gauge", "1 while connected to NATS.", u64::from(c.nats_connected)),
        ("kabar_cluster_nats_connects_total", "counter", "NATS connections made (the first one and every reconnect).", c.nats_connects),
        ("kabar_cluster_remote_routes_total", "counter", "Stanzas published to sessions on other nodes.", c.remote_routes),
        ("kabar_cluster_reroutes_total", "counter", "Stanzas another node did not take, routed again here.", c.reroutes),
        ("kabar_cluster_homes_served", "gauge", "MUC rooms and components this node serves.", c.homes_served as u64),
        ("kabar_cluster_forwarded_total", "counter", "Stanzas forwarded to the node serving their room or component.", c.forwarded),
        ("kabar_cluster_forward_failures_total", "counter", "Forwards the serving node did not confirm (routed again here).", c.forward_failures),
    ] {
        head(out, name, kind, help);
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
    }
}
