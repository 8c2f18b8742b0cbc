//! Clustering over NATS core pub/sub (docs/CLUSTER.md).
//!
//! [`ClusterDirectory`] implements the core's `SessionDirectory`: each node keeps its own sessions in
//! a [`LocalSessions`] exactly as a single node does, and learns everybody else's from NATS. Routing
//! in the core is unchanged: `get`/`sessions` answer with the cluster-wide list, and `send` to a
//! session on another node publishes the serialised stanza on that node's subject, where the node
//! hands it to the session's queue and confirms. What is not confirmed in time goes back through
//! routing (another resource, or offline storage), as a session that ends does with its queue.
//!
//! Subjects:
//! - `kabar.cluster.state`: JSON `StateMsg` (sync.rs: hello, beat, want, snapshot chunks addressed
//!   to one node, numbered session up/down deltas, bye).
//! - `kabar.node.<name>`: stanzas (and stream closes) for sessions on node `<name>`; header
//!   `Kabar-To` names the full JID, the payload is the stanza as XML.
//! - `kabar.ack.<name>.<seq>`: the reply subject of each stanza: `ok` or `gone`, or the server's
//!   no-responders status when node `<name>` is not subscribed any more.

pub mod drain;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, StatusCode};
use futures_util::StreamExt;
use jid::{BareJid, FullJid};
use kabar_core::config::ClusterConfig;
use kabar_core::sessions::{LocalSessions, Outbound, SendError, SessionDirectory, SessionInfo};
use kabar_core::stanza::{self, StanzaError};
use kabar_core::Server;
use kabar_xml::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod homes;
mod remote;
mod stats;
mod sync;
pub use homes::HomesMetrics;

const STATE_SUBJECT: &str = "kabar.cluster.state";
const HEADER_TO: &str = "Kabar-To";
const HEADER_CLOSE: &str = "Kabar-Close";
/// On a directory message meant for one node only (a snapshot, a request for one).
const HEADER_FOR: &str = "Kabar-For";

use remote::Remote;
use sync::StateMsg;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("[cluster] needs [storage] backend = \"postgres\": every node must share accounts, rosters, offline messages and archives (docs/CLUSTER.md)")]
    NeedsSharedStorage,
    #[error("[cluster] node = {0:?} is not a valid node name: use letters, digits, '-' and '_' (it becomes a NATS subject token)")]
    BadNodeName(String),
    #[error("[cluster] lease_secs ({lease}) must be more than heartbeat_secs ({heartbeat}), and heartbeat_secs at least 1")]
    BadTiming { lease: u64, heartbeat: u64 },
    #[error("cannot set up the NATS connection to {url}: {reason}")]
    Nats { url: String, reason: String },
}

enum Out {
    /// A directory message; `to`: addressed to one node (header `Kabar-For`), others skip it.
    State { msg: StateMsg, to: Option<String> },
    Deliver {
        node: String,
        to: FullJid,
        stanza: Element,
    },
    Close {
        node: String,
        to: FullJid,
        condition: &'static str,
    },
}

struct Pending {
    node: String,
    to: FullJid,
    stanza: Element,
    deadline: Instant,
}

/// The cluster-wide session directory of one node.
pub struct ClusterDirectory {
    node: String,
    inc: String,
    local: LocalSessions,
    remote: RwLock<Remote>,
    connected: AtomicBool,
    out: mpsc::UnboundedSender<Out>,
    out_rx: Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
    /// Held while a local change is applied and its event queued, and while a snapshot is taken
    /// and queued, so other nodes see events and snapshots in the order things happened.
    order: Mutex<()>,
    /// This node's session change number (sync.rs).
    change_seq: AtomicU64,
    /// When this node last said hello (the others' snapshots are on their way for a while).
    hello_at: Mutex<Option<Instant>>,
    /// Set by `leave`: no more heartbeats, which would bring this node back in the others' view.
    leaving: AtomicBool,
    pending: Mutex<HashMap<u64, Pending>>,
    server: OnceLock<Weak<Server>>,
    heartbeat: Duration,
    lease: Duration,
    delivery_timeout: Duration,
    nats_url: String,
    /// Which node serves each MUC room / component (homes.rs).
    homes: homes::Homes,
    counters: stats::Counters,
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kabar".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "kabar".to_string()
    } else {
        host
    };
    format!("{host}-{}", random_hex(3))
}

/// Stream error conditions a close may carry across nodes (Outbound::Close wants a `'static`).
fn static_condition(c: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "conflict",
        "policy-violation",
        "system-shutdown",
        "not-authorized",
        "reset",
        "see-other-host",
        "resource-constraint",
        "connection-timeout",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == c)
        .unwrap_or("undefined-condition")
}

impl ClusterDirectory {
    /// Checks the configuration and makes the directory; [`ClusterDirectory::start`] connects.
    pub fn new(config: &kabar_core::config::Config) -> Result<Arc<Self>, ClusterError> {
        let c: &ClusterConfig = &config.cluster;
        if config.storage.backend != kabar_core::config::StorageBackend::Postgres {
            return Err(ClusterError::NeedsSharedStorage);
        }
        let node = c.node.clone().unwrap_or_else(default_node_name);
        if !valid_node_name(&node) {
            return Err(ClusterError::BadNodeName(node));
        }
        if c.heartbeat_secs == 0 || c.lease_secs <= c.heartbeat_secs {
            return Err(ClusterError::BadTiming {
                lease: c.lease_secs,
                heartbeat: c.heartbeat_secs,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(ClusterDirectory {
            node,
            inc: random_hex(8),
            local: LocalSessions::new(),
            remote: RwLock::new(Remote::default()),
            connected: AtomicBool::new(false),
            out: tx,
            out_rx: Mutex::new(Some(rx)),
            order: Mutex::new(()),
            change_seq: AtomicU64::new(0),
            hello_at: Mutex::new(None),
            leaving: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            server: OnceLock::new(),
            heartbeat: Duration::from_secs(c.heartbeat_secs),
            lease: Duration::from_secs(c.lease_secs),
            delivery_timeout: Duration::from_millis(c.delivery_timeout_ms.max(100)),
            nats_url: std::env::var("KABAR_NATS_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| c.nats_url.clone()),
            homes: homes::Homes::new(),
            counters: stats::Counters::default(),
        }))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Nodes this one currently hears from (itself excluded).
    pub fn peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.remote_read().nodes.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn remote_read(&self) -> std::sync::RwLockReadGuard<'_, Remote> {
        self.remote.read().unwrap_or_else(|p| p.into_inner())
    }

    fn remote_write(&self) -> std::sync::RwLockWriteGuard<'_, Remote> {
        self.remote.write().unwrap_or_else(|p| p.into_inner())
    }

    fn ordered(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remote_node_of(&self, jid: &FullJid) -> Option<String> {
        if !self.is_connected() {
            return None;
        }
        self.remote_read().find(jid).map(|e| e.node.to_string())
    }

    /// Subscribes to `subject`, naming the NATS server in the error.
    pub(crate) async fn subscribe(
        &self,
        client: &async_nats::Client,
        subject: String,
    ) -> Result<async_nats::Subscriber, ClusterError> {
        client.subscribe(subject).await.map_err(|e| ClusterError::Nats { url: self.nats_url.clone(), reason: e.to_string() })
    }

    /// Connects to NATS (in the background: the node serves its own sessions meanwhile, and
    /// async-nats reconnects with backoff by itself) and starts the cluster tasks.
    pub async fn start(self: &Arc<Self>, server: &Arc<Server>) -> Result<(), ClusterError> {
        let _ = self.server.set(Arc::downgrade(server));
        let weak = Arc::downgrade(self);
        let options = async_nats::ConnectOptions::new()
            .name(format!("kabar {}", self.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let weak = weak.clone();
                async move {
                    let Some(dir) = weak.upgrade() else { return };
                    match event {
                        async_nats::Event::Connected => {
                            info!(node = %dir.node, "cluster: connected to NATS");
                            dir.connected.store(true, Ordering::Release);
                            stats::Counters::bump(&dir.counters.nats_connects);
                            dir.hello();
                            dir.homes_connected();
                            dir.rejoined();
                        }
                        async_nats::Event::Disconnected => {
                            warn!(node = %dir.node, "cluster: lost NATS; cross-node delivery falls back to offline storage until it is back");
                            dir.connected.store(false, Ordering::Release);
                        }
                        other => debug!(event = %other, "cluster: NATS event"),
                    }
                }
            });
        let client =
            options
                .connect(self.nats_url.as_str())
                .await
                .map_err(|e| ClusterError::Nats {
                    url: self.nats_url.clone(),
                    reason: e.to_string(),
                })?;
        let sub = |subject: String| self.subscribe(&client, subject);
        let state = sub(STATE_SUBJECT.to_string()).await?;
        let inbox = sub(format!("kabar.node.{}", self.node)).await?;
        let acks = sub(format!("kabar.ack.{}.*", self.node)).await?;
        let rx = self.out_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            tokio::spawn(publisher(self.clone(), client.clone(), rx));
        }
        tokio::spawn(state_loop(self.clone(), state));
        tokio::spawn(inbox_loop(self.clone(), client.clone(), inbox));
        tokio::spawn(ack_loop(self.clone(), acks));
        self.start_homes(&client).await?;
        tokio::spawn(timers(self.clone()));
        info!(node = %self.node, url = %self.nats_url, "cluster: this node joins over NATS");
        Ok(())
    }

    /// Tells the others this node is leaving, so they forget its sessions now rather than after
    /// the lease.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.emit(StateMsg::Bye {
            node: self.node.clone(),
            inc: self.inc.clone(),
        });
        // The publisher drains the queue in order; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// A stanza another node did not take: forget that session (or node) and route it again.
    fn undeliverable(&self, node: &str, to: &FullJid, stanza: Element, node_gone: bool) {
        stats::Counters::bump(&self.counters.reroutes);
        {
            let mut r = self.remote_write();
            if node_gone {
                if let Some(n) = r.nodes.get_mut(node) {
                    if !n.suspect {
                        warn!(node, "cluster node does not take stanzas: its sessions are skipped until it is heard from again");
                    }
                    n.suspect = true;
                }
            } else {
                r.remove(to, Some(node));
            }
        }
        let Some(server) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        let to = to.clone();
        tokio::spawn(async move {
            match stanza.name() {
                "message" if reroutable(&stanza, &to) => server.route(stanza).await,
                "iq" if matches!(stanza::stanza_type(&stanza), Some("get" | "set")) => {
                    server
                        .bounce(&stanza, StanzaError::service_unavailable())
                        .await
                }
                _ => debug!(to = %to, "stanza for a session on a lost node dropped"),
            }
        });
    }

    /// The sessions of a node that died never said goodbye: one surviving node (the first by name,
    /// as this node sees the cluster) ends them as their own node would have, so contacts get
    /// unavailable presence once (RFC 6121 §4.5.2) and last activity is recorded.
    fn closed_elsewhere(&self, gone: Vec<SessionInfo>) {
        // Cut off from NATS ourselves, we cannot tell a dead node from our own outage.
        if gone.is_empty() || !self.is_connected() {
            return;
        }
        let first = self
            .remote_read()
            .nodes
            .keys()
            .all(|n| n.as_str() > self.node.as_str());
        if !first {
            return;
        }
        let Some(server) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        tokio::spawn(async move {
            for s in gone {
                server
                    .notify(kabar_core::Event::SessionClosed {
                        jid: &s.jid,
                        was_available: s.available,
                        directed_to: &s.directed_to,
                    })
                    .await;
            }
        });
    }

    /// This node and a peer can reach each other again (our reconnection, or its hello): stanzas one
    /// side routed to storage while they were apart, for users who stayed online on the other side,
    /// are handed over by the modules holding them (docs/CLUSTER.md "Failure behaviour").
    pub(crate) fn rejoined(&self) {
        let Some(server) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        tokio::spawn(async move {
            server.notify(kabar_core::Event::ClusterRejoined).await;
        });
    }

    fn fail_pending(&self, seq: u64, node_gone: bool) {
        let p = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        if let Some(p) = p {
            self.undeliverable(&p.node, &p.to, p.stanza, node_gone);
        }
    }
}

/// Same rule as a session that ends (session.rs): only messages someone sent to this user go back
/// through routing, not server-made copies (carbons, archive results) or errors.
fn reroutable(stanza: &Element, to: &FullJid) -> bool {
    if matches!(
        stanza::stanza_type(stanza),
        Some("error" | "headline" | "groupchat")
    ) {
        return false;
    }
    match stanza::from_jid(stanza) {
        Ok(Some(from)) => from.to_bare() != to.to_bare(),
        _ => false,
    }
}

impl SessionDirectory for ClusterDirectory {
    fn register(&self, jid: FullJid, tx: mpsc::Sender<Outbound>, replace: bool) -> bool {
        let _g = self.ordered();
        if let Some(node) = self.remote_node_of(&jid) {
            if !replace {
                return false;
            }
            let _ = self.out.send(Out::Close {
                node: node.clone(),
                to: jid.clone(),
                condition: "conflict",
            });
            self.remote_write().remove(&jid, Some(&node));
        }
        if !self.local.register(jid.clone(), tx, replace) {
            return false;
        }
        if let Some(info) = self.local.get(&jid) {
            self.emit_up(&info);
        }
        true
    }

    fn unregister(&self, jid: &FullJid, tx: &mpsc::Sender<Outbound>) -> Option<SessionInfo> {
        let _g = self.ordered();
        let info = self.local.unregister(jid, tx)?;
        if self.local.get(jid).is_none() {
            self.emit_down(jid);
        }
        Some(info)
    }

    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        let mut list = self.local.sessions(bare);
        if self.is_connected() {
            let r = self.remote_read();
            for e in r.of_bare(bare) {
                if !list.iter().any(|s| &s.jid == e.jid()) {
                    list.push(e.info());
                }
            }
        }
        list
    }

    fn get(&self, jid: &FullJid) -> Option<SessionInfo> {
        if let Some(info) = self.local.get(jid) {
            return Some(info);
        }
        if !self.is_connected() {
            return None;
        }
        self.remote_read().find(jid).map(|e| e.info())
    }

    fn update(&self, jid: &FullJid, f: &mut dyn FnMut(&mut SessionInfo)) {
        let _g = self.ordered();
        // Only this node changes its own sessions; other nodes' entries change by their events.
        let Some(before) = self.local.get(jid) else {
            return;
        };
        self.local.update(jid, f);
        if let Some(after) = self.local.get(jid) {
            let (b, a) = (
                remote::WireSession::from_info(&before),
                remote::WireSession::from_info(&after),
            );
            let changed = serde_json::to_string(&b).ok() != serde_json::to_string(&a).ok();
            if changed {
                self.emit_up(&after);
            }
        }
    }

    fn send(&self, jid: &FullJid, item: Outbound) -> Result<(), SendError> {
        if self.local.get(jid).is_some() {
            return self.local.send(jid, item);
        }
        let Some(node) = self.remote_node_of(jid) else {
            return Err(SendError::NoSession);
        };
        let out = match item.unshare() {
            Outbound::Stanza(stanza) => Out::Deliver {
                node,
                to: jid.clone(),
                stanza: *stanza,
            },
            Outbound::Close { condition, .. } => Out::Close {
                node,
                to: jid.clone(),
                condition,
            },
            // `unshare` turned it into a stanza: another node gets a tree, not our bytes.
            Outbound::Shared(_) => return Err(SendError::NoSession),
        };
        self.out.send(out).map_err(|_| SendError::NoSession)
    }

    /// Sessions held by this node (admission, metrics and shutdown are per node).
    fn count(&self) -> usize {
        self.local.count()
    }

    fn all(&self) -> Vec<FullJid> {
        self.local.all()
    }

    fn queue_depth(&self) -> usize {
        self.local.queue_depth()
    }

    fn homes(&self) -> Option<&dyn kabar_core::cluster::ServiceHomes> {
        Some(self)
    }

    fn cluster_stats(&self) -> Option<kabar_core::cluster::ClusterStats> {
        Some(self.stats())
    }

    fn cluster_sessions(&self) -> Option<Vec<(String, SessionInfo)>> {
        Some(self.sessions_everywhere())
    }
}

/// Publishes in queue order, so stanzas from one node to one session arrive in the order routed.
async fn publisher(
    dir: Arc<ClusterDirectory>,
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut seq: u64 = 0;
    while let Some(item) = rx.recv().await {
        let connected = dir.is_connected();
        match item {
            Out::State { msg, to } => {
                // A change not sent while NATS is away is a gap in the numbering the others
                // notice at the next beat, and repair with a snapshot.
                if !connected {
                    continue;
                }
                let body = match serde_json::to_vec(&msg) {
                    Ok(body) => bytes::Bytes::from(body),
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot encode state message");
                        continue;
                    }
                };
                let sent = match to {
                    None => client.publish(STATE_SUBJECT, body).await,
                    Some(to) => {
                        let mut headers = HeaderMap::new();
                        headers.insert(HEADER_FOR, to.as_str());
                        client.publish_with_headers(STATE_SUBJECT, headers, body).await
                    }
                };
                if let Err(e) = sent {
                    debug!(error = %e, "cluster: state publish failed");
                }
            }
            Out::Deliver { node, to, stanza } => {
                if !connected {
                    dir.undeliverable(&node, &to, stanza, false);
                    continue;
                }
                let body = match kabar_xml::element_to_bytes(&stanza) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot serialise stanza");
                        continue;
                    }
                };
                seq += 1;
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_TO, to.to_string().as_str());
                let deadline = Instant::now() + dir.delivery_timeout;
                dir.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        seq,
                        Pending {
                            node: node.clone(),
                            to,
                            stanza,
                            deadline,
                        },
                    );
                let subject = format!("kabar.node.{node}");
                let reply = format!("kabar.ack.{}.{seq}", dir.node);
                stats::Counters::bump(&dir.counters.remote_routes);
                if let Err(e) = client
                    .publish_with_reply_and_headers(subject, reply, headers, body.into())
                    .await
                {
                    debug!(error = %e, "cluster: stanza publish failed");
                    dir.fail_pending(seq, false);
                }
            }
            Out::Close {
                node,
                to,
                condition,
            } => {
                if !connected {
                    continue;
                }
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_TO, to.to_string().as_str());
                headers.insert(HEADER_CLOSE, condition);
                let _ = client
                    .publish_with_headers(
                        format!("kabar.node.{node}"),
                        headers,
                        bytes::Bytes::new(),
                    )
                    .await;
            }
        }
    }
}

async fn state_loop(dir: Arc<ClusterDirectory>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let for_other = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_FOR))
            .is_some_and(|to| to.as_str() != dir.node);
        if for_other {
            continue;
        }
        match serde_json::from_slice::<StateMsg>(&msg.payload) {
            Ok(m) => dir.on_state(m),
            Err(e) => debug!(error = %e, "cluster: unreadable state message ignored"),
        }
    }
}

/// Stanzas other nodes route to sessions held here: straight into the session's queue (the
/// sending node already ran routing and the inbound hooks), then confirm.
async fn inbox_loop(dir: Arc<ClusterDirectory>, client: Client, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let to = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_TO))
            .and_then(|v| stanza::parse_jid(v.as_str()).ok())
            .and_then(|j| j.try_into_full().ok());
        let Some(to) = to else {
            debug!("cluster: stanza without a valid Kabar-To ignored");
            continue;
        };
        let close = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_CLOSE))
            .map(|v| static_condition(v.as_str()));
        let answer = if let Some(condition) = close {
            let _ = dir.local.send(
                &to,
                Outbound::Close {
                    condition,
                    text: None,
                },
            );
            None
        } else {
            let parsed = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| s.parse::<Element>().ok());
            match parsed {
                None => {
                    warn!(to = %to, "cluster: unparsable stanza from another node dropped");
                    Some("ok")
                }
                Some(stanza) => match dir.local.send(&to, Outbound::stanza(stanza)) {
                    Ok(()) => Some("ok"),
                    Err(SendError::NoSession) => Some("gone"),
                    Err(SendError::QueueFull) => {
                        warn!(to = %to, "session queue full; closing it as too slow");
                        let _ = dir.local.send(
                            &to,
                            Outbound::Close {
                                condition: "policy-violation",
                                text: None,
                            },
                        );
                        Some("gone")
                    }
                },
            }
        };
        if let (Some(answer), Some(reply)) = (answer, msg.reply) {
            let _ = client
                .publish(reply, bytes::Bytes::from_static(answer.as_bytes()))
                .await;
        }
    }
}

/// The sequence number an ack subject (`kabar.ack.<node>.<seq>`, `kabar.routeack.<node>.<seq>`) ends in.
pub(crate) fn ack_seq(subject: &str) -> Option<u64> {
    subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok())
}

async fn ack_loop(dir: Arc<ClusterDirectory>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(seq) = ack_seq(&msg.subject) else {
            continue;
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            dir.fail_pending(seq, true);
        } else if &msg.payload[..] == b"gone" {
            dir.fail_pending(seq, false);
        } else {
            dir.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&seq);
        }
    }
}

/// Heartbeats (change numbers only), lease expiry of silent nodes, and delivery timeouts.
async fn timers(dir: Arc<ClusterDirectory>) {
    let tick = Duration::from_millis(250);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = Instant::now();
    loop {
        interval.tick().await;
        let now = Instant::now();
        if now.duration_since(last_beat) >= dir.heartbeat {
            last_beat = now;
            if dir.is_connected() && !dir.leaving.load(Ordering::Acquire) {
                dir.beat();
                dir.queue_claims();
            }
        }
        dir.expire_silent(now);
        let late: Vec<u64> = dir
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            dir.fail_pending(seq, true);
        }
        dir.expire_forwards(now);
    }
}

impl ClusterDirectory {
    /// Forgets the nodes not heard from within the lease, and their sessions.
    fn expire_silent(&self, now: Instant) {
        let expired: Vec<String> = self
            .remote_read()
            .nodes
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.last_seen) > self.lease)
            .map(|(name, _)| name.clone())
            .collect();
        for node in expired {
            let gone = self.remote_write().drop_node(&node);
            warn!(node = %node, sessions = gone.len(), "cluster node missed its lease: its sessions are gone");
            self.closed_elsewhere(gone);
        }
    }
}

/// A directory for node "me" that believes it is connected to NATS (no server needed), for the
/// crate's unit tests.
#[cfg(test)]
pub(crate) fn connected_test_directory() -> Arc<ClusterDirectory> {
    let mut config = kabar_core::config::Config::default();
    config.cluster.enabled = true;
    config.cluster.node = Some("me".into());
    config.storage.backend = kabar_core::config::StorageBackend::Postgres;
    let dir = ClusterDirectory::new(&config).unwrap_or_else(|e| panic!("{e}"));
    dir.connected.store(true, Ordering::Release);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_single_nats_tokens() {
        assert!(valid_node_name("node-1_a"));
        assert!(!valid_node_name("a.b"));
        assert!(!valid_node_name("a*"));
        assert!(!valid_node_name(">"));
        assert!(!valid_node_name(""));
        assert!(valid_node_name(&default_node_name()));
    }

    #[test]
    fn cluster_refuses_the_embedded_store() {
        let mut config = kabar_core::config::Config::default();
        config.cluster.enabled = true;
        assert!(matches!(
            ClusterDirectory::new(&config),
            Err(ClusterError::NeedsSharedStorage)
        ));
        config.storage.backend = kabar_core::config::StorageBackend::Postgres;
        config.cluster.node = Some("a.b".into());
        assert!(matches!(
            ClusterDirectory::new(&config),
            Err(ClusterError::BadNodeName(_))
        ));
    }

    use crate::remote::test_wire as wire;

    fn snapshot(node: &str, inc: &str, seq: u64, jids: &[&str]) -> StateMsg {
        StateMsg::Snapshot {
            node: node.into(),
            inc: inc.into(),
            seq,
            part: 0,
            last: true,
            sessions: jids.iter().map(|j| wire(j)).collect(),
        }
    }

    fn up(node: &str, seq: u64, jid: &str) -> StateMsg {
        StateMsg::Up {
            node: node.into(),
            inc: "i".into(),
            seq,
            session: wire(jid),
        }
    }

    fn down(node: &str, seq: u64, jid: &str) -> StateMsg {
        StateMsg::Down {
            node: node.into(),
            inc: "i".into(),
            seq,
            jid: jid.into(),
        }
    }

    fn beat(node: &str, seq: u64) -> StateMsg {
        StateMsg::Beat {
            node: node.into(),
            inc: "i".into(),
            seq,
        }
    }

    fn bare(s: &str) -> BareJid {
        stanza::parse_bare(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn full(s: &str) -> FullJid {
        stanza::parse_jid(s)
            .ok()
            .and_then(|j| j.try_into_full().ok())
            .unwrap_or_else(|| panic!("test JID {s}"))
    }

    fn names(dir: &ClusterDirectory, b: &str) -> Vec<String> {
        let mut v: Vec<String> = dir
            .sessions(&bare(b))
            .iter()
            .map(|s| s.jid.to_string())
            .collect();
        v.sort();
        v
    }

    /// What the directory queued for NATS since the last call: (addressee, message).
    fn sent(rx: &mut mpsc::UnboundedReceiver<Out>) -> Vec<(Option<String>, StateMsg)> {
        let mut v = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Out::State { msg, to } = item {
                v.push((to, msg));
            }
        }
        v
    }

    fn outbox(dir: &ClusterDirectory) -> mpsc::UnboundedReceiver<Out> {
        dir.out_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| panic!("outbox taken"))
    }

    fn asks_for_snapshot_of(msgs: &[(Option<String>, StateMsg)], node: &str) -> bool {
        msgs.iter().any(|(to, m)| {
            to.as_deref() == Some(node) && matches!(m, StateMsg::Want { of, .. } if of == node)
        })
    }

    /// A node known with an empty, complete copy (it announced change number 0).
    fn joined(dir: &ClusterDirectory, node: &str) {
        dir.on_state(beat(node, 0));
    }

    #[test]
    fn deltas_apply_in_order_and_a_missed_one_is_repaired_by_a_snapshot_on_request() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        joined(&dir, "n2");
        dir.on_state(up("n2", 1, "a@x/1"));
        dir.on_state(up("n2", 2, "a@x/2"));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/2"]);
        assert!(sent(&mut rx).is_empty(), "in-step deltas need no request");
        // Change 3 (a@x/2 went) is lost on the way; change 4 shows the gap.
        dir.on_state(up("n2", 4, "a@x/3"));
        assert!(asks_for_snapshot_of(&sent(&mut rx), "n2"));
        // Deltas while the snapshot is on its way are covered by it (or follow it).
        dir.on_state(up("n2", 5, "b@x/1"));
        assert!(sent(&mut rx).is_empty(), "one request at a time");
        dir.on_state(snapshot("n2", "i", 5, &["a@x/1", "a@x/3", "b@x/1"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/3"]);
        assert_eq!(names(&dir, "b@x"), ["b@x/1"]);
        dir.on_state(down("n2", 6, "a@x/1"));
        assert_eq!(names(&dir, "a@x"), ["a@x/3"]);
        dir.on_state(beat("n2", 6));
        assert!(sent(&mut rx).is_empty());
    }

    #[test]
    fn a_beat_ahead_of_the_copy_asks_for_a_snapshot_and_a_beat_in_step_does_not() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        joined(&dir, "n2");
        dir.on_state(up("n2", 1, "a@x/1"));
        dir.on_state(beat("n2", 1));
        assert!(sent(&mut rx).is_empty());
        // The last change before a quiet period was lost: only the beat tells.
        dir.on_state(beat("n2", 2));
        assert!(asks_for_snapshot_of(&sent(&mut rx), "n2"));
        dir.on_state(snapshot("n2", "i", 2, &[]));
        assert!(names(&dir, "a@x").is_empty());
    }

    #[test]
    fn a_fresh_node_heard_while_our_hello_is_answered_takes_deltas_at_once() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        dir.hello();
        dir.on_state(StateMsg::Hello {
            node: "n2".into(),
            inc: "i".into(),
            seq: 0,
        });
        dir.on_state(up("n2", 1, "a@x/1"));
        assert_eq!(names(&dir, "a@x"), ["a@x/1"]);
        assert!(!asks_for_snapshot_of(&sent(&mut rx), "n2"));
    }

    #[test]
    fn a_node_first_heard_mid_life_is_learnt_from_its_snapshot() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        dir.on_state(up("n2", 41, "a@x/1"));
        assert!(names(&dir, "a@x").is_empty(), "a delta alone is not a complete copy");
        assert!(asks_for_snapshot_of(&sent(&mut rx), "n2"));
        dir.on_state(snapshot("n2", "i", 41, &["a@x/1", "a@x/2"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/2"]);
    }

    #[test]
    fn a_snapshot_missing_a_chunk_is_asked_for_again() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        dir.on_state(beat("n2", 3));
        assert!(asks_for_snapshot_of(&sent(&mut rx), "n2"));
        dir.on_state(StateMsg::Snapshot {
            node: "n2".into(),
            inc: "i".into(),
            seq: 3,
            part: 0,
            last: false,
            sessions: vec![wire("a@x/1")],
        });
        dir.on_state(StateMsg::Snapshot {
            node: "n2".into(),
            inc: "i".into(),
            seq: 3,
            part: 2,
            last: true,
            sessions: vec![wire("a@x/3")],
        });
        assert!(asks_for_snapshot_of(&sent(&mut rx), "n2"));
        assert!(names(&dir, "a@x").is_empty());
    }

    #[test]
    fn hello_and_requests_are_answered_with_a_snapshot_to_the_asker_only() {
        let dir = connected_test_directory();
        let mut rx = outbox(&dir);
        let (tx, _queue) = mpsc::channel(4);
        assert!(dir.register(full("me@x/1"), tx, false));
        let mine = sent(&mut rx);
        assert!(matches!(&mine[..], [(None, StateMsg::Up { seq: 1, .. })]));
        dir.on_state(StateMsg::Hello {
            node: "n2".into(),
            inc: "i".into(),
            seq: 0,
        });
        dir.on_state(StateMsg::Want {
            node: "n3".into(),
            inc: "i".into(),
            of: "me".into(),
        });
        dir.on_state(StateMsg::Want {
            node: "n3".into(),
            inc: "i".into(),
            of: "n4".into(),
        });
        let snapshots: Vec<(Option<String>, u64, usize)> = sent(&mut rx)
            .into_iter()
            .filter_map(|(to, m)| match m {
                StateMsg::Snapshot { seq, sessions, .. } => Some((to, seq, sessions.len())),
                _ => None,
            })
            .collect();
        assert_eq!(
            snapshots,
            [(Some("n2".to_string()), 1, 1), (Some("n3".to_string()), 1, 1)]
        );
    }

    #[test]
    fn restarted_node_replaces_its_previous_incarnations_sessions() {
        let dir = connected_test_directory();
        joined(&dir, "n2");
        dir.on_state(up("n2", 1, "a@x/1"));
        dir.on_state(up("n2", 2, "b@x/1"));
        dir.on_state(StateMsg::Hello {
            node: "n2".into(),
            inc: "new".into(),
            seq: 0,
        });
        assert!(names(&dir, "a@x").is_empty() && names(&dir, "b@x").is_empty());
        dir.on_state(StateMsg::Up {
            node: "n2".into(),
            inc: "new".into(),
            seq: 1,
            session: wire("b@x/9"),
        });
        assert_eq!(names(&dir, "b@x"), ["b@x/9"]);
    }

    #[test]
    fn a_silent_node_is_forgotten_after_its_lease() {
        let dir = connected_test_directory();
        joined(&dir, "n2");
        dir.on_state(up("n2", 1, "a@x/1"));
        dir.expire_silent(Instant::now());
        assert_eq!(names(&dir, "a@x"), ["a@x/1"]);
        dir.expire_silent(Instant::now() + dir.lease + Duration::from_secs(1));
        assert!(names(&dir, "a@x").is_empty());
        assert!(dir.peers().is_empty());
        assert_eq!(dir.stats().remote_sessions, 0);
    }

    #[test]
    fn unresponsive_node_is_skipped_until_heard_from_and_bye_forgets_at_once() {
        let dir = connected_test_directory();
        joined(&dir, "n2");
        joined(&dir, "n3");
        dir.on_state(up("n2", 1, "a@x/1"));
        dir.on_state(up("n3", 1, "a@x/2"));
        let a1 = full("a@x/1");
        dir.undeliverable("n2", &a1, kabar_xml::elem("message", "jabber:client"), true);
        assert_eq!(names(&dir, "a@x"), ["a@x/2"]);
        assert!(dir.get(&a1).is_none());
        dir.on_state(beat("n2", 1));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/2"]);
        dir.on_state(StateMsg::Bye {
            node: "n3".into(),
            inc: "i".into(),
        });
        assert_eq!(names(&dir, "a@x"), ["a@x/1"]);
        // Closing sessions of a node that said bye do not bring it back.
        dir.on_state(down("n3", 2, "a@x/2"));
        assert_eq!(dir.peers(), ["n2"]);
        // Cut off from NATS, a node sees only its own sessions.
        dir.connected.store(false, Ordering::Release);
        assert!(names(&dir, "a@x").is_empty());
    }
}
