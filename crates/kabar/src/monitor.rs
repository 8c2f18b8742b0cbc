//! Runs the outage monitor inside the server (docs/MONITOR.md): loads its saved state, starts one
//! task per probe, judges finished minutes every `[monitor] tick_secs`, and POSTs alerts to the
//! configured webhooks ([`crate::webhooks`]: bounded queues kept in the store across restarts,
//! retries with exponential backoff, an HMAC-SHA256 signature header). The detection itself is
//! `kabar_monitor`; the shared state, persistence and chat side are `kabar_modules::status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kabar_core::monitor_config::{ProbeEntry, ProbeKind};
use kabar_core::time::unix_now;
use kabar_core::Server;
use kabar_modules::status::{probe_name, StatusHub, StatusModule};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::probes;
use crate::webhooks::{self, Outbox, WebhookPolicy};

/// The probes of one service: configured, or — for the default service (the server itself) — a
/// TCP connect to the first STARTTLS listener and a TLS handshake on the first direct-TLS one.
fn probes_for(server: &Server, service: &str) -> Vec<(String, ProbeEntry)> {
    let config = &server.config;
    if let Some(s) = config.monitor.service.iter().find(|s| s.name == service) {
        return s.probe.iter().enumerate().map(|(i, p)| (probe_name(p, i), p.clone())).collect();
    }
    if !config.monitor.service.is_empty() {
        return Vec::new();
    }
    let local = |a: &SocketAddr| {
        let ip = if a.ip().is_unspecified() {
            if a.is_ipv4() {
                "127.0.0.1".parse().ok()
            } else {
                "::1".parse().ok()
            }
        } else {
            Some(a.ip())
        };
        ip.map(|ip| SocketAddr::new(ip, a.port()).to_string())
    };
    let entry = |kind, target: String, server_name: Option<String>| ProbeEntry {
        name: None,
        kind,
        target,
        interval_secs: 60,
        timeout_secs: 10,
        retries: 1,
        server_name,
        ca_file: None,
        expect_status: Vec::new(),
        keyword: None,
        jid: None,
        password: None,
        peer_jid: None,
        peer_password: None,
        min_cert_days: 0,
    };
    let mut out = Vec::new();
    if let Some(t) = config.c2s.listen.first().and_then(local) {
        out.push(("c2s-tcp".to_owned(), entry(ProbeKind::Tcp, t, None)));
    }
    if let Some(t) = config.c2s.direct_tls_listen.first().and_then(local) {
        out.push(("c2s-tls".to_owned(), entry(ProbeKind::Tls, t, Some(config.domain.clone()))));
    }
    out
}

/// Starts the monitor; returns when it is disabled. Runs until aborted.
pub async fn run(server: Arc<Server>, own_ca: Option<PathBuf>) {
    let Some(hub) = StatusModule::hub_of(&server) else { return };
    if !hub.config().enabled {
        return;
    }
    hub.load(&server).await;
    let mut extra: Vec<PathBuf> = own_ca.into_iter().collect();
    extra.extend(server.config.monitor.service.iter().flat_map(|s| s.probe.iter().filter_map(|p| p.ca_file.clone())));
    let roots = probes::root_store(&extra.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let tls = match probes::connector(roots) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "monitor: no TLS client configuration; probes and webhooks are off");
            return tick_loop(server, hub, None).await;
        }
    };
    let mut tasks = JoinSet::new();
    for s in hub.services() {
        for (name, entry) in probes_for(&server, &s.name) {
            tasks.spawn(probe_loop(hub.clone(), s.name.clone(), name, entry, tls.clone()));
        }
    }
    info!(services = hub.services().len(), probes = tasks.len(), "outage monitor running; status page at /status");
    tick_loop(server, hub, Some(tls)).await;
}

async fn tick_loop(server: Arc<Server>, hub: Arc<StatusHub>, tls: Option<TlsConnector>) {
    let cfg = hub.config();
    let every = Duration::from_secs(cfg.tick_secs.clamp(1, cfg.minute_secs.max(1)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outbox = Outbox::load(server.clone(), cfg).await;
    match &tls {
        Some(tls) => {
            for i in 0..outbox.urls() {
                tokio::spawn(webhooks::worker(outbox.clone(), i, tls.clone(), WebhookPolicy::of(cfg)));
            }
        }
        None if outbox.urls() > 0 => warn!("monitor: webhooks are off (no TLS client configuration); alerts stay pending"),
        None => {}
    }
    loop {
        tick.tick().await;
        let alerts = hub.tick(&server).await;
        for alert in alerts {
            outbox.push(&alert).await;
        }
    }
}

async fn probe_loop(hub: Arc<StatusHub>, service: String, name: String, entry: ProbeEntry, tls: TlsConnector) {
    let mut tick = tokio::time::interval(Duration::from_secs(entry.interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = probes::run_once(&entry, &tls).await;
        if !outcome.ok {
            info!(service, probe = name, detail = outcome.detail, "monitor: probe failed");
        }
        hub.record_probe(
            &service,
            &name,
            outcome.ok,
            outcome.latency_ms,
            &outcome.detail,
            outcome.cert_days,
            unix_now(),
        );
    }
}
