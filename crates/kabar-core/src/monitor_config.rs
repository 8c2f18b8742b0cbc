//! The `[monitor]` section: the built-in outage monitor (docs/MONITOR.md) — which services it
//! watches, their probes, report counting limits, detector parameters, alerts and retention.

use std::net::IpAddr;

use serde::Deserialize;

pub use kabar_monitor::{GateConfig, MonitorConfig as DetectionConfig};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// Run the monitor: the `/status` pages, report intake, probes, alerts.
    pub enabled: bool,
    /// Title of the status page.
    pub title: String,
    /// Length of one detection "minute" in real seconds (60). Everything in the detector counts in
    /// these minutes; tests shorten it to 1 so a probe outage is detected in seconds. Persisted
    /// state recorded with another length is discarded at start.
    pub minute_secs: u64,
    /// How often the monitor judges finished minutes and saves its state, in seconds (10; at most
    /// `minute_secs`).
    pub tick_secs: u64,
    /// Services watched. Empty: one service named after the domain, probed over TCP, TLS and (if
    /// `self_probe` credentials are set) an XMPP login.
    pub service: Vec<ServiceEntry>,
    /// Addresses of reverse proxies whose `X-Forwarded-For` is believed for report rate limits.
    /// Empty (default): the TCP peer address is the client address.
    pub trusted_proxies: Vec<IpAddr>,
    /// URLs (http:// or https://) that get a JSON POST on every state change and incident.
    pub webhooks: Vec<String>,
    /// Seconds a webhook POST may take.
    pub webhook_timeout_secs: u64,
    /// HMAC-SHA256 key for the `X-Kabar-Signature: sha256=<hex>` header over each webhook body.
    /// Unset (default): deliveries are not signed.
    pub webhook_secret: Option<String>,
    /// Further attempts after a failed webhook delivery (5); a response outside 2xx, a
    /// connection error and a timeout all count as failures.
    pub webhook_retries: u32,
    /// Wait before the first retry, in milliseconds (2000); doubled after every failure up to
    /// `webhook_max_backoff_ms` (300000).
    pub webhook_backoff_ms: u64,
    pub webhook_max_backoff_ms: u64,
    /// Alerts waiting per webhook URL (100); when full, the oldest waiting alert is dropped.
    pub webhook_queue: usize,
    /// Alerts waiting for all webhook URLs together (1000); when full, the oldest waiting alert
    /// of any URL is dropped. Waiting alerts are kept in the store and resumed after a restart.
    pub webhook_pending_max: usize,
    /// How long a subscription requested on the status page waits for confirmation (86400 s).
    pub confirm_ttl_secs: u64,
    /// Confirmations waiting at once (1000) and per client address (5); further requests are
    /// refused until some are confirmed or expire.
    pub max_pending_confirmations: usize,
    pub max_pending_per_ip: usize,
    /// Most alert subscribers (XMPP accounts).
    pub max_subscribers: usize,
    /// Per-minute detail (charts) is kept this many hours.
    pub minute_retention_hours: u64,
    /// Hourly rollups (reports, expectation, probe success and latency) are kept this many days.
    pub hour_retention_days: u64,
    /// Incidents kept in the store (oldest resolved ones are deleted beyond it).
    pub max_incidents: usize,
    /// Distinct regions counted per service and minute; further ones count as "other".
    pub max_regions: usize,
    /// Longest report comment kept, in bytes (comments are shown to admins only, never stored
    /// per report: the latest few per service are kept in memory).
    pub max_comment_bytes: usize,
    /// Largest POST /status/reports body, in bytes.
    pub max_report_body_bytes: usize,
    /// Report counting rules (dedupe window, per-IP and per-account token buckets).
    pub gate: GateConfig,
    /// Detector and baseline parameters (docs/MONITOR.md "Parameters and defaults").
    pub detection: DetectionConfig,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            enabled: true,
            title: String::new(),
            minute_secs: 60,
            tick_secs: 10,
            service: Vec::new(),
            trusted_proxies: Vec::new(),
            webhooks: Vec::new(),
            webhook_timeout_secs: 10,
            webhook_secret: None,
            webhook_retries: 5,
            webhook_backoff_ms: 2000,
            webhook_max_backoff_ms: 300_000,
            webhook_queue: 100,
            webhook_pending_max: 1000,
            confirm_ttl_secs: 86_400,
            max_pending_confirmations: 1000,
            max_pending_per_ip: 5,
            max_subscribers: 1000,
            minute_retention_hours: 48,
            hour_retention_days: 90,
            max_incidents: 500,
            max_regions: 32,
            max_comment_bytes: 500,
            max_report_body_bytes: 4096,
            gate: GateConfig::default(),
            detection: DetectionConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Identifier used in reports and URLs (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Shown on the page; default: `name`.
    #[serde(default)]
    pub title: Option<String>,
    /// Regions offered on the report form (free text is accepted too).
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub probe: Vec<ProbeEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// TCP connect to `target` (host:port).
    Tcp,
    /// TCP + TLS handshake to `target` (host:port), certificate checked against the system roots,
    /// kabar's own CA and `ca_file`; reports the days until the certificate expires.
    Tls,
    /// GET `target` (http:// or https:// URL): status in `expect_status`, body contains `keyword`.
    Http,
    /// Resolve `target` (a host name) through the system resolver.
    Dns,
    /// XMPP c2s login round trip at `target` (host:port): STARTTLS, SASL PLAIN as `jid`, bind,
    /// ping the server, close.
    XmppLogin,
    /// Log in `jid` and `peer_jid`, send a message from one to the other and wait for it.
    XmppMessage,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeEntry {
    /// Unique within the service; default: `<kind>-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    pub kind: ProbeKind,
    pub target: String,
    /// Seconds between runs.
    #[serde(default = "default_probe_interval")]
    pub interval_secs: u64,
    /// Seconds one attempt may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout_secs: u64,
    /// Further attempts after a failed one before the run counts as failed.
    #[serde(default = "default_probe_retries")]
    pub retries: u32,
    /// TLS server name / XMPP domain; default: the host part of `target` (XMPP: the jid's domain).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Extra PEM roots trusted for TLS, HTTPS and XMPP probes.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// HTTP: accepted status codes (default 200–399).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// HTTP: the body must contain this text.
    #[serde(default)]
    pub keyword: Option<String>,
    /// XMPP: the probe account and its password.
    #[serde(default)]
    pub jid: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// XMPP message probe: the second account.
    #[serde(default)]
    pub peer_jid: Option<String>,
    #[serde(default)]
    pub peer_password: Option<String>,
    /// TLS: a certificate expiring within this many days makes the probe fail (0: never).
    #[serde(default)]
    pub min_cert_days: u64,
}

fn default_probe_interval() -> u64 {
    60
}
fn default_probe_timeout() -> u64 {
    10
}
fn default_probe_retries() -> u32 {
    1
}
