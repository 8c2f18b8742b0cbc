//! MUC in a cluster (docs/MUC.md "Cluster", docs/CLUSTER.md "Homes"): each room is served by one
//! node at a time, its **home**. A stanza for `room@service[/nick]` that reaches any other node is
//! forwarded there unchanged; the home runs the room exactly as a single node does and fans out to
//! occupants' full JIDs through the cluster-aware session directory. Stanzas for the service itself
//! (disco, ping) are answered by whichever node gets them.
//!
//! When the home dies, the next stanza for the room picks a new home, which loads the room from the
//! shared store (`muc-rooms`: configuration, affiliations, subject; history from the room archive).
//! Occupants are memory-only, so they are not carried over: each client finds out with its next
//! XEP-0410 self-ping (`not-acceptable`) or message (`not-acceptable`, "you are not in this room")
//! and joins again. A temporary room (not stored) starts afresh with whoever joins first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kabar_core::cluster::Home;
use kabar_core::stanza::{self, StanzaError};
use kabar_core::Server;
use kabar_xml::Element;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, warn};

use super::{lock, MucModule, STORE};

/// How long a node that just joined the cluster waits to learn the others' claims before it serves
/// or forwards a room stanza (beyond it, the stanza is refused with a temporary error).
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// The tenure under which this node's in-memory copy of each room is current.
#[derive(Default)]
pub struct Tenures {
    epochs: AsyncMutex<HashMap<String, u64>>,
}

impl MucModule {
    /// Routes a stanza for the service to the room's home. Returns it when this node serves it.
    pub(super) async fn cluster_home(&self, server: &Server, stanza: Element) -> Option<Element> {
        // Without a cluster every room is served here.
        let Some(homes) = server.sessions.homes() else {
            return Some(stanza);
        };
        let room = match stanza::to_jid(&stanza) {
            Ok(Some(to)) => to
                .node()
                .map(|n| (n.as_str().to_string(), to.to_bare().to_string())),
            _ => None,
        };
        // The service's own JID is answered anywhere; malformed stanzas are answered by dispatch.
        let Some((name, key)) = room else {
            return Some(stanza);
        };
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            match homes.home(&key) {
                Home::Here { epoch } => {
                    self.adopt(server, &name, epoch).await;
                    return Some(stanza);
                }
                Home::Node(node) => {
                    debug!(room = %key, node = %node, "forwarding to the room's home node");
                    homes.forward(&node, stanza);
                    return None;
                }
                Home::Settling if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Home::Settling | Home::Unreachable => {
                    let err = StanzaError::service_unavailable().with_text(
                        "the node serving this room cannot be reached now; try again shortly",
                    );
                    server.bounce(&stanza, err).await;
                    return None;
                }
            }
        }
    }

    /// At the start of a tenure the in-memory copy (if any) may be stale: another node may have
    /// served the room meanwhile. The room is read again from the shared store.
    async fn adopt(&self, server: &Server, name: &str, epoch: u64) {
        let mut epochs = self.tenures.epochs.lock().await;
        if epochs.get(name) == Some(&epoch) {
            return;
        }
        let old = lock(&self.rooms).remove(name);
        let had_copy = old.is_some();
        if let Some(old) = old {
            old.lock().await.gone = true;
        }
        match server.store.kv_get(&self.domain, STORE, name).await {
            Ok(Some(bytes)) => {
                if let Some(room) = self.room_from_stored(server, name, &bytes).await {
                    if !had_copy {
                        if let Some(c) = &room.creator {
                            *lock(&self.owned).entry(c.clone()).or_default() += 1;
                        }
                    }
                    lock(&self.rooms).insert(name.to_string(), Arc::new(AsyncMutex::new(room)));
                }
            }
            Ok(None) => {}
            // The room then behaves as not existing; persistent rooms come back with the store.
            Err(e) => warn!(room = %name, error = %e, "cannot read the room this node now serves"),
        }
        epochs.insert(name.to_string(), epoch);
    }
}
