//! Where the clients of a draining node go (docs/CLUSTER.md, "Rolling restart").
//!
//! Each node announces its public c2s address (`[cluster] public_address`), its session count and
//! whether it is draining on `kabar.cluster.nodes`, once per heartbeat and whenever a newcomer asks.
//! A draining node sends each client to the live, non-draining peer with the fewest sessions
//! (counting the clients it already sent there), so a drain spreads its clients over the cluster
//! instead of piling them on one node. Liveness is the directory's: a peer whose lease ran out, or
//! that stopped taking stanzas, is not a target even if its last announcement is recent.
//!
//! It has its own NATS connection so that the directory's subjects and tasks stay as they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kabar_core::sessions::SessionDirectory;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{ClusterDirectory, ClusterError};

const NODES_SUBJECT: &str = "kabar.cluster.nodes";
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct NodeInfo {
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    sessions: u64,
    draining: bool,
    /// A node that just connected asks the others to announce themselves at once.
    #[serde(default)]
    ask: bool,
}

struct Peer {
    address: Option<String>,
    sessions: u64,
    draining: bool,
    heard: Instant,
    /// Clients this node sent there during its drain.
    sent: u64,
}

/// This node's view of the other nodes' public addresses, and its own announcements.
pub struct Redirects {
    dir: Arc<ClusterDirectory>,
    address: Option<String>,
    draining: AtomicBool,
    peers: Mutex<HashMap<String, Peer>>,
    client: Mutex<Option<async_nats::Client>>,
}

impl ClusterDirectory {
    /// Stanzas published to other nodes and not yet confirmed (a drain waits for these before the
    /// node exits: an unconfirmed one is rerouted by this node, which must still be running).
    pub fn pending_deliveries(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether `node` is a live member as the directory sees it (heard within the lease, taking
    /// stanzas).
    fn is_live_peer(&self, node: &str) -> bool {
        self.is_connected()
            && self
                .remote_read()
                .nodes
                .get(node)
                .is_some_and(|n| !n.suspect)
    }
}

/// A valid `<see-other-host/>` value (RFC 6120 §4.9.3.19): `host`, `host:port` or `[v6]:port`,
/// nothing that could break out of the element or name another scheme.
pub fn valid_address(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

impl Redirects {
    /// Connects (in the background, retrying like the directory) and starts announcing.
    pub async fn start(
        dir: Arc<ClusterDirectory>,
        address: Option<String>,
    ) -> Result<Arc<Redirects>, ClusterError> {
        // The binary refuses to start with an invalid one; this keeps a bad value off the wire.
        let address = address
            .map(|a| a.trim().to_string())
            .filter(|a| valid_address(a));
        let me = Arc::new(Redirects {
            dir: dir.clone(),
            address,
            draining: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            client: Mutex::new(None),
        });
        let weak = Arc::downgrade(&me);
        let options = async_nats::ConnectOptions::new()
            .name(format!("kabar {} nodes", dir.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let weak = weak.clone();
                async move {
                    if let (async_nats::Event::Connected, Some(me)) = (event, weak.upgrade()) {
                        me.announce(true).await;
                    }
                }
            });
        let url = dir.nats_url.clone();
        let client = options
            .connect(url.as_str())
            .await
            .map_err(|e| ClusterError::Nats {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let sub = client
            .subscribe(NODES_SUBJECT)
            .await
            .map_err(|e| ClusterError::Nats {
                url,
                reason: e.to_string(),
            })?;
        *me.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        tokio::spawn(listen(Arc::downgrade(&me), sub));
        tokio::spawn(beat(Arc::downgrade(&me), dir.heartbeat));
        me.announce(true).await;
        Ok(me)
    }

    fn info(&self, ask: bool) -> NodeInfo {
        NodeInfo {
            node: self.dir.node.clone(),
            address: self.address.clone(),
            sessions: self.dir.local.count() as u64,
            draining: self.draining.load(Ordering::Acquire),
            ask,
        }
    }

    async fn announce(&self, ask: bool) {
        let client = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(client) = client else { return };
        let body = match serde_json::to_vec(&self.info(ask)) {
            Ok(body) => body,
            Err(e) => return warn!(error = %e, "cluster: cannot encode the node announcement"),
        };
        // Bounded: with NATS away a flush would wait for the reconnection, and a drain must not.
        let sent = tokio::time::timeout(ANNOUNCE_TIMEOUT, async {
            client.publish(NODES_SUBJECT, body.into()).await?;
            // The drain relies on peers hearing "draining" before its clients reconnect.
            client
                .flush()
                .await
                .map_err(|e| async_nats::Error::from(e.to_string()))
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "cluster: node announcement not sent"),
            Err(_) => debug!("cluster: node announcement not confirmed by NATS in time"),
        }
    }

    /// From now on this node is no redirect target; tells the others at once.
    pub async fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.announce(false).await;
    }

    fn on_info(&self, info: NodeInfo) {
        if info.node == self.dir.node {
            return;
        }
        let address = info.address.filter(|a| valid_address(a));
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(info.node.clone()).or_insert_with(|| Peer {
            address: None,
            sessions: 0,
            draining: false,
            heard: Instant::now(),
            sent: 0,
        });
        if peer.draining != info.draining && info.draining {
            info!(node = %info.node, "cluster node is draining: no longer a redirect target");
        }
        peer.address = address;
        peer.sessions = info.sessions;
        peer.draining = info.draining;
        peer.heard = Instant::now();
        // What it reports now includes the clients sent there so far.
        peer.sent = 0;
    }

    /// The address of the peer that should take the next client of this node, if any.
    pub fn pick(&self) -> Option<String> {
        let fresh = self.dir.lease;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let (_, best) = peers
            .iter_mut()
            .filter(|(name, p)| {
                !p.draining
                    && p.address.is_some()
                    && p.heard.elapsed() <= fresh
                    && self.dir.is_live_peer(name)
            })
            .min_by(|(a, pa), (b, pb)| {
                (pa.sessions + pa.sent, a.as_str()).cmp(&(pb.sessions + pb.sent, b.as_str()))
            })?;
        best.sent += 1;
        best.address.clone()
    }

    /// Peers that could take clients now (for status output).
    pub fn targets(&self) -> Vec<String> {
        let fresh = self.dir.lease;
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = peers
            .iter()
            .filter(|(name, p)| {
                !p.draining && p.heard.elapsed() <= fresh && self.dir.is_live_peer(name)
            })
            .filter_map(|(_, p)| p.address.clone())
            .collect();
        v.sort();
        v
    }
}

async fn listen(me: std::sync::Weak<Redirects>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(me) = me.upgrade() else { return };
        match serde_json::from_slice::<NodeInfo>(&msg.payload) {
            Ok(info) => {
                let ask = info.ask && info.node != me.dir.node;
                me.on_info(info);
                if ask {
                    me.announce(false).await;
                }
            }
            Err(e) => debug!(error = %e, "cluster: unreadable node announcement ignored"),
        }
    }
}

async fn beat(me: std::sync::Weak<Redirects>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(me) = me.upgrade() else { return };
        me.announce(false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirects() -> Arc<Redirects> {
        Arc::new(Redirects {
            dir: crate::connected_test_directory(),
            address: Some("me.example:5222".into()),
            draining: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            client: Mutex::new(None),
        })
    }

    fn info(node: &str, address: Option<&str>, sessions: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            node: node.into(),
            address: address.map(Into::into),
            sessions,
            draining,
            ask: false,
        }
    }

    fn alive(r: &Redirects, node: &str) {
        r.dir.on_state(crate::StateMsg::Beat {
            node: node.into(),
            inc: "i".into(),
            seq: 0,
        });
    }

    #[test]
    fn rfc6120_4_9_3_19_drain_spreads_clients_over_live_non_draining_peers() {
        let r = redirects();
        for n in ["a", "b", "c", "d"] {
            alive(&r, n);
        }
        r.on_info(info("a", Some("a.example:5222"), 10, false));
        r.on_info(info("b", Some("b.example:5222"), 12, false));
        r.on_info(info("c", Some("c.example:5222"), 0, true)); // draining too
        r.on_info(info("d", None, 0, false)); // no public address
        r.on_info(info("ghost", Some("ghost.example:5222"), 0, false)); // not in the directory
        r.on_info(info("me", Some("me.example:5222"), 0, false)); // ourselves
        let picks: Vec<String> = (0..6).filter_map(|_| r.pick()).collect();
        // a first (10 sessions) until it has as many as b, then alternating.
        assert_eq!(
            picks,
            [
                "a.example:5222",
                "a.example:5222",
                "a.example:5222",
                "b.example:5222",
                "a.example:5222",
                "b.example:5222"
            ]
        );
        assert_eq!(r.targets(), ["a.example:5222", "b.example:5222"]);
        // A peer that stops taking stanzas is no target any more.
        r.dir
            .remote_write()
            .nodes
            .get_mut("a")
            .map(|n| n.suspect = true);
        assert_eq!(r.pick().as_deref(), Some("b.example:5222"));
        // Cut off from NATS: nobody is known to be alive.
        r.dir.connected.store(false, Ordering::Release);
        assert_eq!(r.pick(), None);
    }

    #[test]
    fn see_other_host_values_are_host_and_port_only() {
        assert!(valid_address("chat-2.example.org:5222"));
        assert!(valid_address("[2001:db8::1]:5222"));
        assert!(valid_address("localhost"));
        assert!(!valid_address(""));
        assert!(!valid_address("a b"));
        assert!(!valid_address("x</see-other-host>"));
        assert!(!valid_address("xmpp://host"));
    }
}
