//! Runs the outage monitor inside the server (docs/MONITOR.md): loads its saved state, starts one
//! task per probe, judges finished minutes every `[monitor] tick_secs`, and POSTs alerts to the
//! configured webhooks — one delivery task per URL with a bounded queue (oldest alert dropped
//! when full), retries with exponential backoff, and an HMAC-SHA256 signature header. The detection itself is `kabar_monitor`; the shared state, persistence
//! and chat side are `kabar_modules::status`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kabar_core::monitor_config::{ProbeEntry, ProbeKind};
use kabar_core::time::unix_now;
use kabar_core::Server;
use kabar_modules::status::{probe_name, webhook_signature, Alert, StatusHub, StatusModule};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::probes;

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
    let hooks: Vec<Arc<WebhookQueue>> = match &tls {
        Some(tls) => cfg
            .webhooks
            .iter()
            .map(|url| {
                let q = Arc::new(WebhookQueue::new(url.clone(), cfg.webhook_queue));
                tokio::spawn(webhook_worker(q.clone(), tls.clone(), WebhookPolicy::of(cfg)));
                q
            })
            .collect(),
        None => Vec::new(),
    };
    loop {
        tick.tick().await;
        let alerts = hub.tick(&server).await;
        for alert in alerts {
            let delivery = Delivery::of(&alert);
            for q in &hooks {
                q.push(delivery.clone());
            }
        }
    }
}

/// One alert as delivered to every webhook: the same id on every attempt, so a receiver that
/// got a delivery whose response was lost can drop the retry.
#[derive(Clone)]
struct Delivery {
    id: String,
    body: Arc<String>,
}

impl Delivery {
    fn of(alert: &Alert) -> Delivery {
        let id = format!("{:032x}", rand::random::<u128>());
        let body = json!({
            "delivery": id,
            "service": alert.service,
            "title": alert.title,
            "from": alert.from,
            "to": alert.to,
            "state": alert.to.as_str(),
            "cause": alert.cause,
            "at": kabar_core::time::xep0082(alert.at_secs),
            "ratio": alert.ratio,
            "incident": alert.incident,
            "text": alert.text,
        })
        .to_string();
        Delivery { id, body: Arc::new(body) }
    }
}

/// Alerts waiting for one webhook URL, oldest first; bounded so an unreachable receiver costs at
/// most `webhook_queue` alerts of memory.
struct WebhookQueue {
    url: String,
    cap: usize,
    waiting: Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

impl WebhookQueue {
    fn new(url: String, cap: usize) -> WebhookQueue {
        WebhookQueue { url, cap: cap.max(1), waiting: Mutex::new(VecDeque::new()), ready: Notify::new() }
    }

    fn push(&self, d: Delivery) {
        {
            let mut q = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            while q.len() >= self.cap {
                if let Some(old) = q.pop_front() {
                    warn!(url = self.url, delivery = old.id, "monitor: webhook queue full; oldest alert dropped");
                }
            }
            q.push_back(d);
        }
        self.ready.notify_one();
    }

    async fn pop(&self) -> Delivery {
        loop {
            if let Some(d) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return d;
            }
            self.ready.notified().await;
        }
    }
}

#[derive(Clone)]
struct WebhookPolicy {
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    secret: Option<Arc<[u8]>>,
}

impl WebhookPolicy {
    fn of(cfg: &kabar_core::monitor_config::MonitorSection) -> WebhookPolicy {
        WebhookPolicy {
            timeout: Duration::from_secs(cfg.webhook_timeout_secs.max(1)),
            retries: cfg.webhook_retries,
            backoff: Duration::from_millis(cfg.webhook_backoff_ms),
            max_backoff: Duration::from_millis(cfg.webhook_max_backoff_ms.max(cfg.webhook_backoff_ms)),
            secret: cfg.webhook_secret.as_ref().filter(|s| !s.is_empty()).map(|s| Arc::from(s.as_bytes())),
        }
    }
}

/// Delivers one URL's alerts in order; a failing delivery is retried with doubling waits and
/// given up after `retries` further attempts, so one dead receiver delays only its own queue.
async fn webhook_worker(q: Arc<WebhookQueue>, tls: TlsConnector, policy: WebhookPolicy) {
    loop {
        let d = q.pop().await;
        let mut wait = policy.backoff;
        for attempt in 0..=policy.retries {
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(policy.max_backoff);
            }
            if post_webhook(&tls, &q.url, &d, attempt + 1, &policy).await {
                break;
            }
            if attempt == policy.retries {
                warn!(url = q.url, delivery = d.id, attempts = attempt + 1, "monitor: webhook delivery given up");
            }
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

/// One attempt; true when the receiver answered 2xx.
async fn post_webhook(tls: &TlsConnector, url: &str, d: &Delivery, attempt: u32, policy: &WebhookPolicy) -> bool {
    let mut headers = vec![("X-Kabar-Delivery", d.id.clone()), ("X-Kabar-Attempt", attempt.to_string())];
    if let Some(secret) = &policy.secret {
        headers.push(("X-Kabar-Signature", webhook_signature(secret, d.body.as_bytes())));
    }
    let send = probes::http_request_with_headers(tls, "POST", url, Some(d.body.as_bytes()), &headers, 64 * 1024);
    match tokio::time::timeout(policy.timeout, send).await {
        Ok(Ok((status, _))) if (200..300).contains(&status) => true,
        Ok(Ok((status, _))) => {
            warn!(url, status, attempt, "monitor: webhook refused the alert");
            false
        }
        Ok(Err(e)) => {
            warn!(url, error = e, attempt, "monitor: webhook failed");
            false
        }
        Err(_) => {
            warn!(url, attempt, "monitor: webhook timed out");
            false
        }
    }
}
