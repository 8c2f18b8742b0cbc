//! Webhook alert deliveries of the outage monitor (docs/MONITOR.md "Webhooks"): one worker per URL
//! delivers that URL's alerts in order, retries with exponential backoff and signs each attempt
//! (`X-Kabar-Signature`). Every waiting or retrying delivery is kept in the server's store (kv
//! store [`STORE_WEBHOOKS`]) until it is accepted or given up, so a restart — even a crash —
//! resumes it instead of losing the alert. Bounded per URL (`webhook_queue`) and in total
//! (`webhook_pending_max`): the oldest waiting delivery is dropped, logged and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kabar_core::monitor_config::MonitorSection;
use kabar_core::Server;
use kabar_modules::status::{webhook_signature, Alert};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::probes;

/// kv store (user "") of pending deliveries; key: zero-padded sequence number (creation order).
pub const STORE_WEBHOOKS: &str = "monitor-webhooks";

/// Deliveries dropped unsent because a queue was full (`kabar_monitor_webhook_dropped_total`).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Deliveries given up after `webhook_retries` further attempts.
static GIVEN_UP: AtomicU64 = AtomicU64::new(0);
/// Deliveries waiting or being attempted now, all URLs.
static PENDING: AtomicU64 = AtomicU64::new(0);

pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

pub fn given_up_total() -> u64 {
    GIVEN_UP.load(Ordering::Relaxed)
}

pub fn pending() -> u64 {
    PENDING.load(Ordering::Relaxed)
}

/// One alert for one URL, as stored: the same id and body on every attempt (also across a
/// restart), so a receiver that got a delivery whose response was lost can drop the retry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Delivery {
    url: String,
    id: String,
    body: String,
    /// Attempts made so far; the next one sends `X-Kabar-Attempt: attempts + 1`.
    attempts: u32,
    #[serde(skip)]
    seq: u64,
}

fn store_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// The JSON body of one alert, with a fresh delivery id.
fn alert_body(alert: &Alert) -> (String, String) {
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
    (id, body)
}

/// Waiting deliveries per URL (index into the configured list), oldest first. Pure bookkeeping:
/// the caller writes the store.
struct Queues {
    per_url: Vec<VecDeque<Delivery>>,
    cap_per_url: usize,
    cap_total: usize,
}

impl Queues {
    fn new(urls: usize, cap_per_url: usize, cap_total: usize) -> Queues {
        Queues { per_url: vec![VecDeque::new(); urls], cap_per_url: cap_per_url.max(1), cap_total: cap_total.max(1) }
    }

    fn waiting(&self) -> usize {
        self.per_url.iter().map(VecDeque::len).sum()
    }

    /// Queues `d` for URL `i`; returns what had to make room: the URL's oldest when its queue is
    /// full, then the oldest of any URL while the total is over its bound.
    fn push(&mut self, i: usize, d: Delivery) -> Vec<Delivery> {
        let mut dropped = Vec::new();
        let Some(q) = self.per_url.get_mut(i) else { return vec![d] };
        while q.len() >= self.cap_per_url {
            dropped.extend(q.pop_front());
        }
        q.push_back(d);
        while self.waiting() > self.cap_total {
            let oldest = self
                .per_url
                .iter()
                .enumerate()
                .filter_map(|(j, q)| q.front().map(|d| (d.seq, j)))
                .min()
                .map(|(_, j)| j);
            match oldest.and_then(|j| self.per_url.get_mut(j)).and_then(VecDeque::pop_front) {
                Some(d) => dropped.push(d),
                None => break,
            }
        }
        dropped
    }

    fn pop(&mut self, i: usize) -> Option<Delivery> {
        self.per_url.get_mut(i).and_then(VecDeque::pop_front)
    }
}

/// All webhook URLs' pending deliveries, in memory and in the store.
pub struct Outbox {
    server: Arc<Server>,
    urls: Vec<String>,
    queues: Mutex<Queues>,
    ready: Vec<Notify>,
    next_seq: AtomicU64,
}

impl Outbox {
    /// Loads what the previous run left pending; deliveries for URLs no longer configured and
    /// unreadable records are deleted.
    pub async fn load(server: Arc<Server>, cfg: &MonitorSection) -> Arc<Outbox> {
        let urls = cfg.webhooks.clone();
        let outbox = Arc::new(Outbox {
            server,
            queues: Mutex::new(Queues::new(urls.len(), cfg.webhook_queue, cfg.webhook_pending_max)),
            ready: urls.iter().map(|_| Notify::new()).collect(),
            urls,
            next_seq: AtomicU64::new(1),
        });
        let stored = outbox.server.store.kv_list("", STORE_WEBHOOKS).await.unwrap_or_else(|e| {
            warn!(error = %e, "monitor: cannot read pending webhook deliveries");
            Vec::new()
        });
        let mut restored: Vec<Delivery> = Vec::new();
        for (key, value) in stored {
            let parsed = key.parse::<u64>().ok().zip(serde_json::from_slice::<Delivery>(&value).ok());
            match parsed {
                Some((seq, d)) if outbox.urls.contains(&d.url) => restored.push(Delivery { seq, ..d }),
                Some((_, d)) => {
                    info!(
                        url = d.url,
                        delivery = d.id,
                        "monitor: webhook no longer configured; pending delivery deleted"
                    );
                    outbox.delete(&key).await;
                }
                None => {
                    warn!(key, "monitor: unreadable pending webhook delivery deleted");
                    outbox.delete(&key).await;
                }
            }
        }
        restored.sort_by_key(|d| d.seq);
        let max_seq = restored.last().map_or(0, |d| d.seq);
        outbox.next_seq.store(max_seq + 1, Ordering::Relaxed);
        if !restored.is_empty() {
            info!(deliveries = restored.len(), "monitor: resuming webhook deliveries pending before the restart");
        }
        for d in restored {
            outbox.enqueue(d, false).await;
        }
        outbox
    }

    pub fn urls(&self) -> usize {
        self.urls.len()
    }

    /// Stores the alert for every URL, then queues it.
    pub async fn push(&self, alert: &Alert) {
        let (id, body) = alert_body(alert);
        for url in &self.urls {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let d = Delivery { url: url.clone(), id: id.clone(), body: body.clone(), attempts: 0, seq };
            self.enqueue(d, true).await;
        }
    }

    async fn enqueue(&self, d: Delivery, write: bool) {
        let Some(i) = self.urls.iter().position(|u| *u == d.url) else { return };
        // Written before it is queued: a crash right after the receiver accepted repeats the
        // delivery (same id), but no crash can lose it.
        if write {
            self.save(&d).await;
        }
        PENDING.fetch_add(1, Ordering::Relaxed);
        let dropped = self.queues.lock().unwrap_or_else(|p| p.into_inner()).push(i, d);
        for old in dropped {
            warn!(url = old.url, delivery = old.id, "monitor: webhook queue full; oldest waiting alert dropped");
            DROPPED.fetch_add(1, Ordering::Relaxed);
            self.finish(&old).await;
        }
        if let Some(n) = self.ready.get(i) {
            n.notify_one();
        }
    }

    async fn pop(&self, i: usize) -> Delivery {
        loop {
            if let Some(d) = self.queues.lock().unwrap_or_else(|p| p.into_inner()).pop(i) {
                return d;
            }
            match self.ready.get(i) {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        }
    }

    async fn save(&self, d: &Delivery) {
        let bytes = match serde_json::to_vec(d) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "monitor: cannot encode a webhook delivery"),
        };
        if let Err(e) = self.server.store.kv_put("", STORE_WEBHOOKS, &store_key(d.seq), &bytes).await {
            warn!(error = %e, url = d.url, delivery = d.id, "monitor: cannot store a pending webhook delivery");
        }
    }

    /// Accepted, given up or dropped: no longer pending.
    async fn finish(&self, d: &Delivery) {
        PENDING.fetch_sub(1, Ordering::Relaxed);
        self.delete(&store_key(d.seq)).await;
    }

    async fn delete(&self, key: &str) {
        if let Err(e) = self.server.store.kv_delete("", STORE_WEBHOOKS, key).await {
            warn!(error = %e, key, "monitor: cannot delete a finished webhook delivery");
        }
    }
}

#[derive(Clone)]
pub struct WebhookPolicy {
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    secret: Option<Arc<[u8]>>,
}

impl WebhookPolicy {
    pub fn of(cfg: &MonitorSection) -> WebhookPolicy {
        WebhookPolicy {
            timeout: Duration::from_secs(cfg.webhook_timeout_secs.max(1)),
            retries: cfg.webhook_retries,
            backoff: Duration::from_millis(cfg.webhook_backoff_ms),
            max_backoff: Duration::from_millis(cfg.webhook_max_backoff_ms.max(cfg.webhook_backoff_ms)),
            secret: cfg.webhook_secret.as_ref().filter(|s| !s.is_empty()).map(|s| Arc::from(s.as_bytes())),
        }
    }
}

/// Delivers URL `i`'s alerts in order; a failing delivery is retried with doubling waits and
/// given up after `retries` further attempts, so one dead receiver delays only its own queue.
/// A delivery resumed after a restart is attempted at once (the downtime was its wait) and keeps
/// its attempt count.
pub async fn worker(outbox: Arc<Outbox>, i: usize, tls: TlsConnector, policy: WebhookPolicy) {
    loop {
        let mut d = outbox.pop(i).await;
        let mut wait = policy.backoff;
        loop {
            let ok = post_webhook(&tls, &d, &policy).await;
            d.attempts += 1;
            if ok {
                break;
            }
            if d.attempts > policy.retries {
                warn!(url = d.url, delivery = d.id, attempts = d.attempts, "monitor: webhook delivery given up");
                GIVEN_UP.fetch_add(1, Ordering::Relaxed);
                break;
            }
            outbox.save(&d).await;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(policy.max_backoff);
        }
        outbox.finish(&d).await;
    }
}

/// One attempt; true when the receiver answered 2xx.
async fn post_webhook(tls: &TlsConnector, d: &Delivery, policy: &WebhookPolicy) -> bool {
    let attempt = d.attempts + 1;
    let url = d.url.as_str();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(url: &str, seq: u64) -> Delivery {
        Delivery { url: url.into(), id: format!("id{seq}"), body: "{}".into(), attempts: 0, seq }
    }

    fn seqs(v: &[Delivery]) -> Vec<u64> {
        v.iter().map(|d| d.seq).collect()
    }

    #[test]
    fn full_url_queue_drops_its_own_oldest_waiting_delivery() {
        let mut q = Queues::new(2, 2, 100);
        assert!(q.push(0, d("a", 1)).is_empty());
        assert!(q.push(1, d("b", 2)).is_empty());
        assert!(q.push(0, d("a", 3)).is_empty());
        assert_eq!(seqs(&q.push(0, d("a", 4))), vec![1]);
        assert_eq!(q.pop(0).map(|d| d.seq), Some(3));
        assert_eq!(q.pop(1).map(|d| d.seq), Some(2));
    }

    #[test]
    fn total_bound_drops_the_oldest_waiting_delivery_of_any_url() {
        let mut q = Queues::new(2, 10, 3);
        for (i, seq) in [(1, 1), (0, 2), (0, 3)] {
            assert!(q.push(i, d("x", seq)).is_empty());
        }
        assert_eq!(seqs(&q.push(0, d("x", 4))), vec![1]);
        assert_eq!(q.waiting(), 3);
        assert_eq!(q.pop(1), None);
    }

    #[test]
    fn stored_delivery_round_trips_without_its_key() {
        let one = Delivery { attempts: 3, ..d("http://127.0.0.1:1/hook", 7) };
        let bytes = serde_json::to_vec(&one).unwrap_or_default();
        let back: Option<Delivery> = serde_json::from_slice(&bytes).ok();
        assert_eq!(back, Some(Delivery { seq: 0, ..one }));
        assert_eq!(store_key(7), "00000000000000000007");
    }
}
