//! XEP-0160 offline message storage (RFC 6121 §8.5.2.1.1: a message for an account without an
//! available resource "SHOULD" be stored for later delivery).
//!
//! * [`Event::MessageUndelivered`]: a `normal` or `chat` message (no type = normal) is stored with a
//!   XEP-0203 `<delay/>` stamped by the server, up to `limits.max_offline_messages` per account;
//!   beyond that the sender gets `<service-unavailable/>` (XEP-0160 §3 / RFC 6121 §8.5.2.1.1).
//!   A message carrying nothing but chat state notifications (XEP-0085) means nothing once the
//!   conversation is over, so it is dropped rather than stored; XEP-0334 `<no-store/>` leaves the
//!   message to the core (which bounces it), `<store/>` stores even a content-less one.
//! * [`Event::InitialPresence`]: when a resource with non-negative priority becomes available, every
//!   held message goes to it, oldest first, and is forgotten only once handed to the session.
//! * [`Event::ClusterRejoined`]: while a cluster node was cut off from the others, messages for users
//!   online on the other side were stored here; each node now hands them to its own available
//!   sessions exactly as at initial presence (one resource per account takes them, as when two
//!   resources of one account come online together).
//!
//! Storage: the backend's [`OfflineStore`](kabar_storage::OfflineStore), one serialised stanza per
//! message (the `jabber:client` tree as [`element_to_bytes`] writes it).

use async_trait::async_trait;
use jid::{BareJid, FullJid};
use kabar_core::metrics::StoreOp;
use kabar_core::sessions::{Outbound, SendError};
use kabar_core::stanza::{self, StanzaError};
use kabar_core::{time, Event, Flow, Module, Server};
use kabar_storage::StoreError;
use kabar_xml::{element_to_bytes, Element};
use tracing::{debug, info, warn};

use crate::rostermanager::parse_stanza;

const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const NS_HINTS: &str = "urn:xmpp:hints";

pub struct OfflineModule {
    /// One hand-over after a cluster heal at a time: our own reconnection and the peers' hellos come
    /// together, and two passes reading the store at once would both deliver what they read.
    rejoin: tokio::sync::Mutex<()>,
}

impl OfflineModule {
    pub fn new() -> Self {
        OfflineModule { rejoin: tokio::sync::Mutex::new(()) }
    }
}

impl Default for OfflineModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for OfflineModule {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_MESSAGE_UNDELIVERED | H::ON_INITIAL_PRESENCE | H::ON_CLUSTER_REJOINED
    }

    /// XEP-0160's service discovery feature.
    fn server_features(&self) -> Vec<&'static str> {
        vec!["msgoffline"]
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::MessageUndelivered { to, stanza } => store(server, to, stanza).await,
            Event::InitialPresence { jid } => {
                flush(server, jid).await;
                Flow::Continue
            }
            Event::ClusterRejoined => {
                let _one_at_a_time = self.rejoin.lock().await;
                flush_available(server).await;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

enum Verdict {
    Store,
    /// Nothing worth keeping: drop silently.
    Drop,
    /// Not ours to store: let the core answer as without offline storage.
    Pass,
}

fn verdict(stanza: &Element) -> Verdict {
    match stanza::stanza_type(stanza).unwrap_or("normal") {
        "normal" | "chat" => {}
        _ => return Verdict::Pass,
    }
    if stanza.has_child("no-store", NS_HINTS) {
        return Verdict::Pass;
    }
    if stanza.has_child("store", NS_HINTS) {
        return Verdict::Store;
    }
    let content = stanza.children().any(|c| c.ns() != NS_CHATSTATES && c.ns() != NS_HINTS && c.name() != "thread");
    if content {
        Verdict::Store
    } else {
        Verdict::Drop
    }
}

async fn store(server: &Server, to: &BareJid, stanza: &Element) -> Flow {
    match verdict(stanza) {
        Verdict::Pass => return Flow::Continue,
        Verdict::Drop => {
            debug!(to = %to, "content-less message for offline user dropped");
            return Flow::Handled;
        }
        Verdict::Store => {}
    }
    let mut held = stanza.clone();
    // XEP-0203: stamp when the server received it, so the client can show the original time.
    held.append_child(stanza::delay(&server.domain, time::unix_now()));
    let bytes = match element_to_bytes(&held) {
        Ok(b) => b,
        Err(e) => {
            warn!(to = %to, error = %e, "cannot serialise message for offline storage");
            return Flow::Reject(StanzaError::internal_server_error());
        }
    };
    let pushed = {
        let _timer = server.metrics.store(StoreOp::OfflinePush).start_timer();
        server.store.push_offline(to.as_str(), &bytes, server.config.limits.max_offline_messages).await
    };
    match pushed {
        Ok(id) => {
            debug!(to = %to, id, "message stored offline");
            Flow::Handled
        }
        Err(StoreError::QuotaExceeded) => {
            info!(to = %to, limit = server.config.limits.max_offline_messages, "offline quota reached; message bounced");
            Flow::Reject(StanzaError::service_unavailable())
        }
        Err(e) => {
            warn!(to = %to, error = %e, "offline storage failed");
            Flow::Reject(StanzaError::internal_server_error())
        }
    }
}

/// Every local session that sent initial presence gets what is held for its account. Sessions one
/// after another, so the first resource of an account takes everything and the next finds nothing.
async fn flush_available(server: &Server) {
    for jid in server.sessions.all() {
        if server.sessions.get(&jid).is_some_and(|s| s.available) {
            flush(server, &jid).await;
        }
    }
}

/// XEP-0160 §3: deliver held messages to the newly available resource, if it may receive messages
/// for the bare JID (non-negative priority, RFC 6121 §8.5.2.1.1).
async fn flush(server: &Server, jid: &FullJid) {
    match server.sessions.get(jid) {
        Some(s) if s.priority >= 0 => {}
        _ => return,
    }
    let user = jid.to_bare();
    let fetched = {
        let _timer = server.metrics.store(StoreOp::OfflineFetch).start_timer();
        server.store.offline_messages(user.as_str()).await
    };
    let held = match fetched {
        Ok(h) => h,
        Err(e) => {
            warn!(user = %user, error = %e, "cannot read offline messages");
            return;
        }
    };
    if held.is_empty() {
        return;
    }
    let mut done = Vec::with_capacity(held.len());
    for (id, bytes) in held {
        let Some(message) = parse_stanza(&bytes) else {
            warn!(user = %user, id, "unreadable offline message discarded");
            done.push(id);
            continue;
        };
        match server.sessions.send(jid, Outbound::stanza(message)) {
            Ok(()) => done.push(id),
            Err(SendError::NoSession) => break,
            Err(SendError::QueueFull) => {
                // Keep the rest for the next time; the core closes sessions that fall this far behind.
                warn!(to = %jid, "session queue full while flushing offline messages");
                break;
            }
        }
    }
    let delivered = done.len();
    if let Err(e) = server.store.remove_offline(user.as_str(), &done).await {
        warn!(user = %user, error = %e, "cannot forget delivered offline messages (they may be delivered again)");
    }
    debug!(to = %jid, delivered, "offline messages delivered");
}
