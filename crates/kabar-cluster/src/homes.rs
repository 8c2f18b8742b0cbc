//! Homes: which node serves each keyed service (a MUC room, an external component), and stanza
//! forwarding to it (docs/CLUSTER.md "Homes").
//!
//! The same soft-state scheme as the session directory: a node claims a key by announcing it on
//! [`HOMES_SUBJECT`], repeats all its claims with every heartbeat, and its claims count only while
//! the directory hears the node (same incarnation, not suspect). Nothing is persisted: a claim is
//! worthless once its node is gone, and the service's durable state is in the shared database.
//!
//! * An unclaimed key goes to the live node ranked first by rendezvous hashing (FNV-1a of key and
//!   node name), so every node picks the same home without asking; that node claims the key when
//!   the first stanza reaches it. A stanza that arrives forwarded is served where it arrives if
//!   the key is still unclaimed, so nodes whose views differ for a moment cannot bounce it forever.
//! * Two live claims for one key (a partition healed, a frozen node woke up) are settled by the
//!   earliest claim (then the smaller node name); the loser drops its claim when it next looks.
//! * Forwarded stanzas travel on `kabar.route.<node>` with a reply subject; when the node does not
//!   confirm (no responders: it is dead; or no answer in time), it is marked suspect — its claims
//!   stop counting — and the stanza is routed again here, which picks the next home.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, StatusCode};
use futures_util::StreamExt;
use kabar_core::cluster::{Home, ServiceHomes};
use kabar_xml::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{ClusterDirectory, ClusterError};

pub(crate) const HOMES_SUBJECT: &str = "kabar.cluster.homes";
/// Claims per heartbeat message (each is well under 200 bytes: far below NATS's 1 MiB payload).
const CLAIMS_CHUNK: usize = 2000;
/// After (re)connecting, how long a node listens to the others' claims before it claims anything.
const SETTLE: Duration = Duration::from_millis(1000);

tokio::task_local! {
    /// Set while a forwarded stanza is routed on the node it was forwarded to.
    static FORWARDED: bool;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct WireClaim {
    key: String,
    /// When the claim was made (Unix milliseconds on the claiming node): the earliest wins.
    since: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum HomesMsg {
    /// A node (re)connected: everybody answers with their claims at once.
    Hello { node: String, inc: String },
    /// A node's claims, in chunks; the last chunk of a round retires what the round did not list.
    All {
        node: String,
        inc: String,
        seq: u64,
        last: bool,
        claims: Vec<WireClaim>,
    },
    Claim {
        node: String,
        inc: String,
        claim: WireClaim,
    },
    Release {
        node: String,
        inc: String,
        key: String,
    },
}

struct Mine {
    since: u64,
    epoch: u64,
}

struct Theirs {
    node: String,
    inc: String,
    since: u64,
    seq: u64,
}

enum HomesOut {
    Msg(HomesMsg),
    Forward { node: String, stanza: Element },
}

struct PendingForward {
    node: String,
    stanza: Element,
    deadline: Instant,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct HomesMetrics {
    /// Stanzas forwarded to the node serving their key.
    pub forwarded: AtomicU64,
    /// Forwards the other node did not confirm (routed again here).
    pub forward_failures: AtomicU64,
    /// Keys this node started serving.
    pub acquired: AtomicU64,
}

pub(crate) struct Homes {
    mine: Mutex<HashMap<String, Mine>>,
    theirs: RwLock<HashMap<String, Vec<Theirs>>>,
    epoch: AtomicU64,
    round: AtomicU64,
    connected_at: Mutex<Option<Instant>>,
    out: mpsc::UnboundedSender<HomesOut>,
    out_rx: Mutex<Option<mpsc::UnboundedReceiver<HomesOut>>>,
    pending: Mutex<HashMap<u64, PendingForward>>,
    pub(crate) metrics: HomesMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// FNV-1a: stable across builds and platforms (std's hasher is not promised to be), so nodes
/// running different releases during a rolling upgrade still agree on homes.
fn rank(key: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(std::iter::once(0)).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The node rendezvous hashing picks for `key` among `nodes`.
fn pick<'a>(key: &str, nodes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    nodes.max_by_key(|n| (rank(key, n), std::cmp::Reverse(*n)))
}

impl Homes {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Homes {
            mine: Mutex::new(HashMap::new()),
            theirs: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            round: AtomicU64::new(0),
            connected_at: Mutex::new(None),
            out: tx,
            out_rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashMap::new()),
            metrics: HomesMetrics::default(),
        }
    }

    fn theirs_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Theirs>>> {
        self.theirs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn theirs_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Theirs>>> {
        self.theirs.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn served_here(&self) -> usize {
        lock(&self.mine).len()
    }

    fn emit(&self, msg: HomesMsg) {
        let _ = self.out.send(HomesOut::Msg(msg));
    }
}

impl ClusterDirectory {
    /// The best live claim another node holds on `key`: (since, node).
    fn their_claim(&self, key: &str) -> Option<(u64, String)> {
        let theirs = self.homes.theirs_read();
        let r = self.remote_read();
        theirs
            .get(key)?
            .iter()
            .filter(|c| {
                r.nodes
                    .get(&c.node)
                    .is_some_and(|n| n.inc == c.inc && !n.suspect)
            })
            .map(|c| (c.since, c.node.clone()))
            .min()
    }

    fn claim_now(&self, key: &str) -> u64 {
        let epoch = self.homes.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let since = unix_ms();
        lock(&self.homes.mine).insert(key.to_string(), Mine { since, epoch });
        self.homes.metrics.acquired.fetch_add(1, Ordering::Relaxed);
        info!(key, "cluster: this node now serves {key}");
        self.homes.emit(HomesMsg::Claim {
            node: self.node.clone(),
            inc: self.inc.clone(),
            claim: WireClaim {
                key: key.to_string(),
                since,
            },
        });
        epoch
    }

    fn settling(&self) -> bool {
        lock(&self.homes.connected_at).is_none_or(|t| t.elapsed() < SETTLE)
    }

    /// Called when NATS (re)connects: say hello so the others answer with their claims, and repeat ours.
    pub(crate) fn homes_connected(&self) {
        *lock(&self.homes.connected_at) = Some(Instant::now());
        self.homes.emit(HomesMsg::Hello {
            node: self.node.clone(),
            inc: self.inc.clone(),
        });
        self.queue_claims();
    }

    /// Queues every claim of this node (the heartbeat of the homes table).
    pub(crate) fn queue_claims(&self) {
        let round = self.homes.round.fetch_add(1, Ordering::AcqRel) + 1;
        let claims: Vec<WireClaim> = lock(&self.homes.mine)
            .iter()
            .map(|(k, m)| WireClaim {
                key: k.clone(),
                since: m.since,
            })
            .collect();
        let chunks: Vec<Vec<WireClaim>> = if claims.is_empty() {
            vec![Vec::new()]
        } else {
            claims.chunks(CLAIMS_CHUNK).map(<[_]>::to_vec).collect()
        };
        let n = chunks.len();
        for (i, claims) in chunks.into_iter().enumerate() {
            self.homes.emit(HomesMsg::All {
                node: self.node.clone(),
                inc: self.inc.clone(),
                seq: round,
                last: i + 1 == n,
                claims,
            });
        }
    }

    fn on_homes(&self, msg: HomesMsg) {
        let node = match &msg {
            HomesMsg::Hello { node, .. }
            | HomesMsg::All { node, .. }
            | HomesMsg::Claim { node, .. }
            | HomesMsg::Release { node, .. } => node.clone(),
        };
        if node == self.node {
            return;
        }
        match msg {
            HomesMsg::Hello { .. } => self.queue_claims(),
            HomesMsg::All {
                inc,
                seq,
                last,
                claims,
                ..
            } => {
                let mut theirs = self.homes.theirs_write();
                for c in claims {
                    upsert(
                        &mut theirs,
                        c.key,
                        Theirs {
                            node: node.clone(),
                            inc: inc.clone(),
                            since: c.since,
                            seq,
                        },
                    );
                }
                if last {
                    theirs.retain(|_, list| {
                        list.retain(|c| c.node != node || (c.inc == inc && c.seq >= seq));
                        !list.is_empty()
                    });
                }
            }
            HomesMsg::Claim { inc, claim, .. } => {
                let mut theirs = self.homes.theirs_write();
                // A single claim belongs to the node's current round: the next heartbeat lists it.
                let seq = theirs
                    .values()
                    .flatten()
                    .filter(|c| c.node == node)
                    .map(|c| c.seq)
                    .max()
                    .unwrap_or(0);
                upsert(
                    &mut theirs,
                    claim.key,
                    Theirs {
                        node,
                        inc,
                        since: claim.since,
                        seq,
                    },
                );
            }
            HomesMsg::Release { key, .. } => {
                let mut theirs = self.homes.theirs_write();
                if let Some(list) = theirs.get_mut(&key) {
                    list.retain(|c| c.node != node);
                    if list.is_empty() {
                        theirs.remove(&key);
                    }
                }
            }
        }
    }

    fn mark_suspect(&self, node: &str) {
        if let Some(n) = self.remote_write().nodes.get_mut(node) {
            if !n.suspect {
                warn!(node, "cluster node does not take forwarded stanzas: serving its keys elsewhere until it is heard from again");
            }
            n.suspect = true;
        }
    }

    fn forward_failed(&self, seq: u64) {
        let Some(p) = lock(&self.homes.pending).remove(&seq) else {
            return;
        };
        self.homes
            .metrics
            .forward_failures
            .fetch_add(1, Ordering::Relaxed);
        self.mark_suspect(&p.node);
        let Some(server) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        tokio::spawn(async move { server.route(p.stanza).await });
    }

    /// Subscribes to the homes subject and this node's forward inbox, and starts the publisher.
    pub(crate) async fn start_homes(self: &Arc<Self>, client: &Client) -> Result<(), ClusterError> {
        let sub = |subject: String| self.subscribe(client, subject);
        let homes = sub(HOMES_SUBJECT.to_string()).await?;
        let inbox = sub(format!("kabar.route.{}", self.node)).await?;
        let acks = sub(format!("kabar.routeack.{}.*", self.node)).await?;
        let rx = lock(&self.homes.out_rx).take();
        if let Some(rx) = rx {
            tokio::spawn(homes_publisher(self.clone(), client.clone(), rx));
        }
        tokio::spawn(homes_loop(self.clone(), homes));
        tokio::spawn(forward_inbox(self.clone(), client.clone(), inbox));
        tokio::spawn(forward_acks(self.clone(), acks));
        Ok(())
    }

    /// Forwards that were not confirmed in time count as failed (called by the timers).
    pub(crate) fn expire_forwards(&self, now: Instant) {
        let late: Vec<u64> = lock(&self.homes.pending)
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in late {
            self.forward_failed(seq);
        }
    }
}

fn upsert(theirs: &mut HashMap<String, Vec<Theirs>>, key: String, claim: Theirs) {
    let list = theirs.entry(key).or_default();
    list.retain(|c| c.node != claim.node);
    list.push(claim);
}

impl ServiceHomes for ClusterDirectory {
    fn home(&self, key: &str) -> Home {
        let mine = lock(&self.homes.mine).get(key).map(|m| (m.since, m.epoch));
        if !self.is_connected() {
            return mine.map_or(Home::Unreachable, |(_, epoch)| Home::Here { epoch });
        }
        let theirs = self.their_claim(key);
        match (mine, theirs) {
            (Some((since, _)), Some((their_since, node)))
                if (their_since, node.as_str()) < (since, self.node.as_str()) =>
            {
                lock(&self.homes.mine).remove(key);
                info!(key, node = %node, "cluster: an earlier claim wins; {key} is served elsewhere");
                self.homes.emit(HomesMsg::Release {
                    node: self.node.clone(),
                    inc: self.inc.clone(),
                    key: key.to_string(),
                });
                Home::Node(node)
            }
            (Some((_, epoch)), _) => Home::Here { epoch },
            (None, Some((_, node))) => Home::Node(node),
            (None, None) => {
                if self.settling() {
                    return Home::Settling;
                }
                let forwarded = FORWARDED.try_with(|f| *f).unwrap_or(false);
                let target = if forwarded {
                    self.node.clone()
                } else {
                    let r = self.remote_read();
                    let live = r
                        .nodes
                        .iter()
                        .filter(|(_, n)| !n.suspect)
                        .map(|(name, _)| name.as_str());
                    pick(key, live.chain(std::iter::once(self.node.as_str())))
                        .unwrap_or(&self.node)
                        .to_string()
                };
                if target == self.node {
                    Home::Here {
                        epoch: self.claim_now(key),
                    }
                } else {
                    Home::Node(target)
                }
            }
        }
    }

    fn claim(&self, key: &str) -> bool {
        if self.their_claim(key).is_some() {
            return false;
        }
        if !lock(&self.homes.mine).contains_key(key) {
            self.claim_now(key);
        }
        true
    }

    fn release(&self, key: &str) {
        if lock(&self.homes.mine).remove(key).is_some() {
            self.homes.emit(HomesMsg::Release {
                node: self.node.clone(),
                inc: self.inc.clone(),
                key: key.to_string(),
            });
        }
    }

    fn served_elsewhere(&self, key: &str) -> Option<String> {
        if !self.is_connected() {
            return None;
        }
        self.their_claim(key).map(|(_, node)| node)
    }

    fn forward(&self, node: &str, stanza: Element) {
        let _ = self.homes.out.send(HomesOut::Forward {
            node: node.to_string(),
            stanza,
        });
    }
}

async fn homes_publisher(
    dir: Arc<ClusterDirectory>,
    client: Client,
    mut rx: mpsc::UnboundedReceiver<HomesOut>,
) {
    let mut seq: u64 = 0;
    while let Some(item) = rx.recv().await {
        match item {
            HomesOut::Msg(msg) => {
                // Claims missed while NATS is away are repeated on reconnect.
                if !dir.is_connected() {
                    continue;
                }
                match serde_json::to_vec(&msg) {
                    Ok(body) => {
                        if let Err(e) = client.publish(HOMES_SUBJECT, body.into()).await {
                            debug!(error = %e, "cluster: homes publish failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "cluster: cannot encode a homes message"),
                }
            }
            HomesOut::Forward { node, stanza } => {
                let body = match kabar_xml::element_to_bytes(&stanza) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot serialise a forwarded stanza");
                        continue;
                    }
                };
                seq += 1;
                dir.homes.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                let deadline = Instant::now() + dir.delivery_timeout;
                lock(&dir.homes.pending).insert(
                    seq,
                    PendingForward {
                        node: node.clone(),
                        stanza,
                        deadline,
                    },
                );
                if !dir.is_connected() {
                    dir.forward_failed(seq);
                    continue;
                }
                let reply = format!("kabar.routeack.{}.{seq}", dir.node);
                if let Err(e) = client
                    .publish_with_reply(format!("kabar.route.{node}"), reply, body.into())
                    .await
                {
                    debug!(error = %e, "cluster: forward publish failed");
                    dir.forward_failed(seq);
                }
            }
        }
    }
}

async fn homes_loop(dir: Arc<ClusterDirectory>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        match serde_json::from_slice::<HomesMsg>(&msg.payload) {
            Ok(m) => dir.on_homes(m),
            Err(e) => debug!(error = %e, "cluster: unreadable homes message ignored"),
        }
    }
}

/// Stanzas other nodes forward to keys served here: confirmed at once, then routed here in arrival
/// order (so one node's stanzas to one room keep their order).
async fn forward_inbox(
    dir: Arc<ClusterDirectory>,
    client: Client,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply.clone() {
            let _ = client
                .publish(reply, bytes::Bytes::from_static(b"ok"))
                .await;
        }
        let Some(stanza) = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.parse::<Element>().ok())
        else {
            warn!("cluster: unparsable forwarded stanza dropped");
            continue;
        };
        let Some(server) = dir.server.get().and_then(Weak::upgrade) else {
            continue;
        };
        FORWARDED.scope(true, server.route(stanza)).await;
    }
}

async fn forward_acks(dir: Arc<ClusterDirectory>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(seq) = crate::ack_seq(&msg.subject) else {
            continue;
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            dir.forward_failed(seq);
        } else {
            lock(&dir.homes.pending).remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateMsg;

    fn settled_directory() -> Arc<ClusterDirectory> {
        let dir = crate::connected_test_directory();
        *lock(&dir.homes.connected_at) = Instant::now().checked_sub(SETTLE * 2);
        dir
    }

    fn heard(dir: &ClusterDirectory, node: &str) {
        dir.on_state(StateMsg::Beat {
            node: node.into(),
            inc: "i".into(),
            seq: 0,
        });
    }

    fn claims(node: &str, seq: u64, keys: &[(&str, u64)]) -> HomesMsg {
        HomesMsg::All {
            node: node.into(),
            inc: "i".into(),
            seq,
            last: true,
            claims: keys
                .iter()
                .map(|(k, since)| WireClaim {
                    key: (*k).into(),
                    since: *since,
                })
                .collect(),
        }
    }

    #[test]
    fn a_dead_homes_rooms_move_and_the_earliest_claim_wins_when_it_returns() {
        let dir = settled_directory();
        heard(&dir, "n2");
        dir.on_homes(claims("n2", 1, &[("r@conference.x", 100)]));
        assert_eq!(dir.home("r@conference.x"), Home::Node("n2".into()));
        assert!(
            !dir.claim("r@conference.x"),
            "a live node's key was claimed again"
        );
        // n2 stops taking stanzas: its claim no longer counts, and with n2 out only "me" is left.
        dir.mark_suspect("n2");
        let Home::Here { epoch } = dir.home("r@conference.x") else {
            panic!("the room did not move to the surviving node")
        };
        assert_eq!(dir.home("r@conference.x"), Home::Here { epoch });
        // n2 is heard again: its claim is older than ours and wins; ours is withdrawn.
        heard(&dir, "n2");
        assert_eq!(dir.home("r@conference.x"), Home::Node("n2".into()));
        assert_eq!(dir.homes.served_here(), 0);
        // A later round of n2 without the key retires it.
        dir.on_homes(claims("n2", 2, &[]));
        assert_eq!(dir.served_elsewhere("r@conference.x"), None);
    }

    #[test]
    fn a_node_that_just_connected_waits_for_claims_and_a_cut_off_node_serves_only_its_own() {
        let dir = settled_directory();
        *lock(&dir.homes.connected_at) = Some(Instant::now());
        assert_eq!(dir.home("r@conference.x"), Home::Settling);
        *lock(&dir.homes.connected_at) = Instant::now().checked_sub(SETTLE * 2);
        assert!(dir.claim("component:bot.x"));
        dir.connected.store(false, Ordering::Release);
        assert!(matches!(dir.home("component:bot.x"), Home::Here { .. }));
        assert_eq!(dir.home("r@conference.x"), Home::Unreachable);
        dir.release("component:bot.x");
        assert_eq!(dir.home("component:bot.x"), Home::Unreachable);
    }

    #[test]
    fn rendezvous_hashing_moves_only_the_lost_nodes_keys() {
        let all = ["n1", "n2", "n3"];
        let keys: Vec<String> = (0..300)
            .map(|i| format!("room{i}@conference.example.org"))
            .collect();
        let before: Vec<&str> = keys
            .iter()
            .filter_map(|k| pick(k, all.iter().copied()))
            .collect();
        // Every node gets some rooms.
        for n in all {
            assert!(
                before.iter().filter(|h| **h == n).count() > 50,
                "{n} got too few keys"
            );
        }
        let after: Vec<&str> = keys
            .iter()
            .filter_map(|k| pick(k, ["n1", "n3"].into_iter()))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "n2" {
                assert_eq!(b, a, "a key of a surviving node moved");
            } else {
                assert_ne!(*a, "n2");
            }
        }
    }
}
