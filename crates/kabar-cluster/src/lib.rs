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
//! - `kabar.cluster.state`: JSON [`StateMsg`] (hello, snapshot chunks, session up/down, bye).
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
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod homes;
mod stats;
pub use homes::HomesMetrics;

const STATE_SUBJECT: &str = "kabar.cluster.state";
const HEADER_TO: &str = "Kabar-To";
const HEADER_CLOSE: &str = "Kabar-Close";
/// Sessions per snapshot message: keeps each well under NATS's default 1 MiB max_payload.
const SNAPSHOT_CHUNK: usize = 500;

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

/// A session as other nodes see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WireSession {
    jid: String,
    available: bool,
    priority: i8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<String>,
    interested: bool,
    #[serde(default)]
    directed_to: Vec<String>,
    detached: bool,
    inactive: bool,
}

impl WireSession {
    fn from_info(info: &SessionInfo) -> Self {
        WireSession {
            jid: info.jid.to_string(),
            available: info.available,
            priority: info.priority,
            presence: info
                .presence
                .as_ref()
                .and_then(|p| kabar_xml::element_to_bytes(p).ok())
                .and_then(|b| String::from_utf8(b).ok()),
            interested: info.interested,
            directed_to: info.directed_to.clone(),
            detached: info.detached,
            inactive: info.inactive,
        }
    }

    fn into_info(self) -> Option<SessionInfo> {
        let jid = match stanza::parse_jid(&self.jid) {
            Ok(j) => j.try_into_full().ok()?,
            Err(_) => return None,
        };
        Some(SessionInfo {
            jid,
            available: self.available,
            priority: self.priority,
            presence: self.presence.and_then(|p| p.parse::<Element>().ok()),
            interested: self.interested,
            directed_to: self.directed_to,
            detached: self.detached,
            inactive: self.inactive,
        })
    }
}

/// What nodes tell each other on [`STATE_SUBJECT`]. `inc` (incarnation) is random per process, so
/// a node restarted under the same name replaces what its previous life announced.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum StateMsg {
    Hello {
        node: String,
        inc: String,
    },
    Snapshot {
        node: String,
        inc: String,
        seq: u64,
        last: bool,
        sessions: Vec<WireSession>,
    },
    Up {
        node: String,
        inc: String,
        session: WireSession,
    },
    Down {
        node: String,
        inc: String,
        jid: String,
    },
    Bye {
        node: String,
        inc: String,
    },
}

enum Out {
    State(StateMsg),
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

struct NodeState {
    inc: String,
    last_seen: Instant,
    /// Latest snapshot sequence heard from it.
    seq: u64,
    /// Did not take a stanza (no subscriber, or no answer in time): its sessions are hidden from
    /// routing until it is heard from again, and forgotten when its lease runs out.
    suspect: bool,
}

struct RemoteEntry {
    node: String,
    info: SessionInfo,
    seq: u64,
}

#[derive(Default)]
struct Remote {
    nodes: HashMap<String, NodeState>,
    by_bare: HashMap<BareJid, Vec<RemoteEntry>>,
    /// Sessions of a previous incarnation of a restarted node, to be ended by `closed_elsewhere`.
    stale: Vec<SessionInfo>,
}

impl Remote {
    /// Forgets a node and its sessions; returns the sessions.
    fn drop_node(&mut self, node: &str) -> Vec<SessionInfo> {
        self.nodes.remove(node);
        let mut gone = Vec::new();
        self.by_bare.retain(|_, list| {
            list.retain(|e| {
                if e.node == node {
                    gone.push(e.info.clone());
                    false
                } else {
                    true
                }
            });
            !list.is_empty()
        });
        gone
    }

    fn routable(&self, e: &RemoteEntry) -> bool {
        self.nodes.get(&e.node).is_some_and(|n| !n.suspect)
    }

    fn find(&self, jid: &FullJid) -> Option<&RemoteEntry> {
        self.by_bare
            .get(&jid.to_bare())?
            .iter()
            .find(|e| &e.info.jid == jid && self.routable(e))
    }

    fn remove(&mut self, jid: &FullJid, node: Option<&str>) {
        let bare = jid.to_bare();
        if let Some(list) = self.by_bare.get_mut(&bare) {
            list.retain(|e| !(&e.info.jid == jid && node.is_none_or(|n| n == e.node)));
            if list.is_empty() {
                self.by_bare.remove(&bare);
            }
        }
    }

    fn upsert(&mut self, node: &str, info: SessionInfo, seq: u64) {
        let list = self.by_bare.entry(info.jid.to_bare()).or_default();
        // A full JID lives on one node: the latest announcement wins (a login on another node
        // replaced it).
        list.retain(|e| e.info.jid != info.jid);
        list.push(RemoteEntry {
            node: node.to_string(),
            info,
            seq,
        });
    }

    /// Learns that `node` (incarnation `inc`) is alive; forgets a previous incarnation's sessions.
    fn touch(&mut self, node: &str, inc: &str) -> u64 {
        let stale = self.nodes.get(node).is_some_and(|n| n.inc != inc);
        if stale {
            info!(
                node,
                "cluster node restarted: forgetting its previous sessions"
            );
            let gone = self.drop_node(node);
            self.stale.extend(gone);
        }
        let state = self.nodes.entry(node.to_string()).or_insert_with(|| {
            info!(node, "cluster node joined");
            NodeState {
                inc: inc.to_string(),
                last_seen: Instant::now(),
                seq: 0,
                suspect: false,
            }
        });
        state.last_seen = Instant::now();
        state.suspect = false;
        state.seq
    }
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
    snapshot_seq: AtomicU64,
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
            snapshot_seq: AtomicU64::new(0),
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

    fn emit(&self, msg: StateMsg) {
        let _ = self.out.send(Out::State(msg));
    }

    fn remote_node_of(&self, jid: &FullJid) -> Option<String> {
        if !self.is_connected() {
            return None;
        }
        self.remote_read().find(jid).map(|e| e.node.clone())
    }

    /// Queues this node's whole session list (in chunks) for the others.
    fn queue_snapshot(&self) {
        let _g = self.ordered();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let all: Vec<WireSession> = self
            .local
            .all()
            .iter()
            .filter_map(|j| self.local.get(j))
            .map(|i| WireSession::from_info(&i))
            .collect();
        let chunks: Vec<Vec<WireSession>> = if all.is_empty() {
            vec![Vec::new()]
        } else {
            all.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec).collect()
        };
        let n = chunks.len();
        for (i, sessions) in chunks.into_iter().enumerate() {
            self.emit(StateMsg::Snapshot {
                node: self.node.clone(),
                inc: self.inc.clone(),
                seq,
                last: i + 1 == n,
                sessions,
            });
        }
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
                            dir.emit(StateMsg::Hello { node: dir.node.clone(), inc: dir.inc.clone() });
                            dir.queue_snapshot();
                            dir.homes_connected();
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
        self.emit(StateMsg::Bye {
            node: self.node.clone(),
            inc: self.inc.clone(),
        });
        // The publisher drains the queue in order; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn on_state(&self, msg: StateMsg) {
        let (node, inc) = match &msg {
            StateMsg::Hello { node, inc }
            | StateMsg::Snapshot { node, inc, .. }
            | StateMsg::Up { node, inc, .. }
            | StateMsg::Down { node, inc, .. }
            | StateMsg::Bye { node, inc } => (node.clone(), inc.clone()),
        };
        if node == self.node {
            if inc != self.inc {
                warn!(node = %node, "cluster: another process uses this node name; give each node its own [cluster] node");
            }
            return;
        }
        self.apply_state(node, inc, msg);
        let stale = std::mem::take(&mut self.remote_write().stale);
        self.closed_elsewhere(stale);
    }

    fn apply_state(&self, node: String, inc: String, msg: StateMsg) {
        match msg {
            StateMsg::Hello { .. } => {
                self.remote_write().touch(&node, &inc);
                // The newcomer catches up from everybody's snapshot at once.
                self.queue_snapshot();
            }
            StateMsg::Snapshot {
                seq,
                last,
                sessions,
                ..
            } => {
                let mut r = self.remote_write();
                r.touch(&node, &inc);
                if let Some(n) = r.nodes.get_mut(&node) {
                    n.seq = seq;
                }
                for s in sessions {
                    if let Some(info) = s.into_info() {
                        r.upsert(&node, info, seq);
                    }
                }
                if last {
                    // Whatever this snapshot did not list has gone (a down event we missed).
                    r.by_bare.retain(|_, list| {
                        list.retain(|e| e.node != node || e.seq >= seq);
                        !list.is_empty()
                    });
                }
            }
            StateMsg::Up { session, .. } => {
                let mut r = self.remote_write();
                let seq = r.touch(&node, &inc);
                if let Some(info) = session.into_info() {
                    r.upsert(&node, info, seq);
                }
            }
            StateMsg::Down { jid, .. } => {
                let mut r = self.remote_write();
                // Sessions closing after a node's `bye` must not bring the node back.
                if !r.nodes.contains_key(&node) {
                    return;
                }
                r.touch(&node, &inc);
                if let Some(full) = stanza::parse_jid(&jid)
                    .ok()
                    .and_then(|j| j.try_into_full().ok())
                {
                    r.remove(&full, Some(&node));
                }
            }
            StateMsg::Bye { .. } => {
                let n = self.remote_write().drop_node(&node).len();
                info!(node = %node, sessions = n, "cluster node left");
            }
        }
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
            self.emit(StateMsg::Up {
                node: self.node.clone(),
                inc: self.inc.clone(),
                session: WireSession::from_info(&info),
            });
        }
        true
    }

    fn unregister(&self, jid: &FullJid, tx: &mpsc::Sender<Outbound>) -> Option<SessionInfo> {
        let _g = self.ordered();
        let info = self.local.unregister(jid, tx)?;
        if self.local.get(jid).is_none() {
            self.emit(StateMsg::Down {
                node: self.node.clone(),
                inc: self.inc.clone(),
                jid: jid.to_string(),
            });
        }
        Some(info)
    }

    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        let mut list = self.local.sessions(bare);
        if self.is_connected() {
            let r = self.remote_read();
            if let Some(remote) = r.by_bare.get(bare) {
                for e in remote {
                    if r.routable(e) && !list.iter().any(|s| s.jid == e.info.jid) {
                        list.push(e.info.clone());
                    }
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
        self.remote_read().find(jid).map(|e| e.info.clone())
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
                WireSession::from_info(&before),
                WireSession::from_info(&after),
            );
            let changed = serde_json::to_string(&b).ok() != serde_json::to_string(&a).ok();
            if changed {
                self.emit(StateMsg::Up {
                    node: self.node.clone(),
                    inc: self.inc.clone(),
                    session: a,
                });
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
                stanza,
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
            Out::State(msg) => {
                // Announcements are idempotent: one missed while NATS is away is replaced by the
                // snapshot sent on reconnect.
                if !connected {
                    continue;
                }
                match serde_json::to_vec(&msg) {
                    Ok(body) => {
                        if let Err(e) = client.publish(STATE_SUBJECT, body.into()).await {
                            debug!(error = %e, "cluster: state publish failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "cluster: cannot encode state message"),
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
                Some(stanza) => match dir.local.send(&to, Outbound::Stanza(stanza)) {
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

/// Heartbeats (snapshots), lease expiry of silent nodes, and delivery timeouts.
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
            if dir.is_connected() {
                dir.queue_snapshot();
                dir.queue_claims();
            }
        }
        let expired: Vec<String> = dir
            .remote_read()
            .nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_seen) > dir.lease)
            .map(|(name, _)| name.clone())
            .collect();
        for node in expired {
            let gone = dir.remote_write().drop_node(&node);
            warn!(node = %node, sessions = gone.len(), "cluster node missed its lease: its sessions are gone");
            dir.closed_elsewhere(gone);
        }
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

    fn directory() -> Arc<ClusterDirectory> {
        let mut config = kabar_core::config::Config::default();
        config.cluster.enabled = true;
        config.cluster.node = Some("me".into());
        config.storage.backend = kabar_core::config::StorageBackend::Postgres;
        let dir = ClusterDirectory::new(&config).unwrap_or_else(|e| panic!("{e}"));
        dir.connected.store(true, Ordering::Release);
        dir
    }

    fn wire(jid: &str) -> WireSession {
        WireSession {
            jid: jid.into(),
            available: true,
            priority: 0,
            presence: None,
            interested: false,
            directed_to: Vec::new(),
            detached: false,
            inactive: false,
        }
    }

    fn snapshot(node: &str, inc: &str, seq: u64, jids: &[&str]) -> StateMsg {
        StateMsg::Snapshot {
            node: node.into(),
            inc: inc.into(),
            seq,
            last: true,
            sessions: jids.iter().map(|j| wire(j)).collect(),
        }
    }

    fn bare(s: &str) -> BareJid {
        stanza::parse_bare(s).unwrap_or_else(|e| panic!("{e}"))
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

    #[test]
    fn snapshot_heartbeat_repairs_a_missed_down_event() {
        let dir = directory();
        dir.on_state(snapshot("n2", "i1", 1, &["a@x/1", "a@x/2"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/2"]);
        // a@x/2's down event was lost; the next heartbeat no longer lists it.
        dir.on_state(snapshot("n2", "i1", 2, &["a@x/1"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1"]);
        // An up event after a snapshot survives the next snapshot that lists it.
        dir.on_state(StateMsg::Up {
            node: "n2".into(),
            inc: "i1".into(),
            session: wire("a@x/3"),
        });
        dir.on_state(snapshot("n2", "i1", 3, &["a@x/1", "a@x/3"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/3"]);
        dir.on_state(StateMsg::Down {
            node: "n2".into(),
            inc: "i1".into(),
            jid: "a@x/1".into(),
        });
        assert_eq!(names(&dir, "a@x"), ["a@x/3"]);
    }

    #[test]
    fn restarted_node_replaces_its_previous_incarnations_sessions() {
        let dir = directory();
        dir.on_state(snapshot("n2", "old", 7, &["a@x/1", "b@x/1"]));
        dir.on_state(StateMsg::Hello {
            node: "n2".into(),
            inc: "new".into(),
        });
        assert!(names(&dir, "a@x").is_empty() && names(&dir, "b@x").is_empty());
        dir.on_state(snapshot("n2", "new", 1, &["b@x/9"]));
        assert_eq!(names(&dir, "b@x"), ["b@x/9"]);
    }

    #[test]
    fn unresponsive_node_is_skipped_until_heard_from_and_bye_forgets_at_once() {
        let dir = directory();
        dir.on_state(snapshot("n2", "i", 1, &["a@x/1"]));
        dir.on_state(snapshot("n3", "i", 1, &["a@x/2"]));
        let a1 = stanza::parse_jid("a@x/1")
            .ok()
            .and_then(|j| j.try_into_full().ok());
        let Some(a1) = a1 else { panic!("test JID") };
        dir.undeliverable("n2", &a1, kabar_xml::elem("message", "jabber:client"), true);
        assert_eq!(names(&dir, "a@x"), ["a@x/2"]);
        assert!(dir.get(&a1).is_none());
        dir.on_state(snapshot("n2", "i", 2, &["a@x/1"]));
        assert_eq!(names(&dir, "a@x"), ["a@x/1", "a@x/2"]);
        dir.on_state(StateMsg::Bye {
            node: "n3".into(),
            inc: "i".into(),
        });
        assert_eq!(names(&dir, "a@x"), ["a@x/1"]);
        // Closing sessions of a node that said bye do not bring it back.
        dir.on_state(StateMsg::Down {
            node: "n3".into(),
            inc: "i".into(),
            jid: "a@x/2".into(),
        });
        assert_eq!(dir.peers(), ["n2"]);
        // Cut off from NATS, a node sees only its own sessions.
        dir.connected.store(false, Ordering::Release);
        assert!(names(&dir, "a@x").is_empty());
    }

    #[test]
    fn wire_session_keeps_presence_and_routing_state() {
        let jid = stanza::parse_jid("a@example.org/r")
            .ok()
            .and_then(|j| j.try_into_full().ok());
        let Some(jid) = jid else { panic!("test JID") };
        let presence: Element =
            "<presence xmlns='jabber:client'><show>away</show><x xmlns='urn:x'/></presence>"
                .parse()
                .unwrap_or_else(|_| panic!("test presence"));
        let info = SessionInfo {
            jid: jid.clone(),
            available: true,
            priority: -3,
            presence: Some(presence.clone()),
            interested: true,
            directed_to: vec!["b@example.org".into()],
            detached: false,
            inactive: true,
        };
        let json = serde_json::to_string(&WireSession::from_info(&info)).unwrap_or_default();
        let back: WireSession = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        let Some(back) = back.into_info() else {
            panic!("round trip lost the session")
        };
        assert_eq!(back.jid, jid);
        assert!(back.available && back.interested && back.inactive && !back.detached);
        assert_eq!(back.priority, -3);
        assert_eq!(back.presence, Some(presence));
        assert_eq!(back.directed_to, vec!["b@example.org".to_string()]);
    }
}
