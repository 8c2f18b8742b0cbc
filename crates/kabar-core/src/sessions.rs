//! The session directory: which full JIDs are connected, their presence state, and a way to hand
//! them stanzas. [`SessionDirectory`] is the seam a cluster implementation replaces; the local
//! [`LocalSessions`] keeps everything in memory on this node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jid::{BareJid, FullJid};
use kabar_xml::{Element, ElementExt, SharedEncoding};
use tokio::sync::mpsc;

/// What a session task receives.
#[derive(Debug)]
pub enum Outbound {
    /// Boxed so an idle session's queue stays small: tokio allocates its first block of 32 slots
    /// when the channel is made, and an unboxed `Element` made each slot 112 bytes.
    Stanza(Box<Element>),
    /// One recipient's share of a stanza encoded once for many (a room's fan-out).
    Shared(SharedStanza),
    /// End the stream with this stream error condition (e.g. "conflict" when replaced).
    Close { condition: &'static str, text: Option<String> },
}

impl Outbound {
    pub fn stanza(stanza: Element) -> Outbound {
        Outbound::Stanza(Box::new(stanza))
    }

    /// The same item with a shared stanza turned into this recipient's own element, for paths
    /// that need a tree (another node, a component).
    pub fn unshare(self) -> Outbound {
        match self {
            Outbound::Shared(s) => Outbound::stanza(s.to_element()),
            other => other,
        }
    }
}

/// A stanza sent to many sessions unchanged but for `to`: the tree without `to` (for whatever needs
/// to look at it: CSI, XEP-0198 replay and rerouting) and its serialisation, made once.
#[derive(Debug)]
pub struct SharedBody {
    pub stanza: Element,
    /// None when the stanza could not be encoded ahead (then every copy is written from the tree).
    pub encoding: Option<SharedEncoding>,
}

impl SharedBody {
    pub fn new(stanza: Element) -> Arc<SharedBody> {
        let encoding = SharedEncoding::new(&stanza).ok();
        Arc::new(SharedBody { stanza, encoding })
    }
}

/// One recipient's share: the body (reference-counted) and its `to`.
#[derive(Clone, Debug)]
pub struct SharedStanza {
    pub body: Arc<SharedBody>,
    pub to: FullJid,
}

impl SharedStanza {
    /// The element this recipient gets.
    pub fn to_element(&self) -> Element {
        let mut el = self.body.stanza.clone();
        el.set_attr_str("to", self.to.as_str());
        el
    }
}

/// A session's routing-relevant state, as seen by routing and presence.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub jid: FullJid,
    /// Sent initial presence and not yet unavailable (RFC 6121 §4.2).
    pub available: bool,
    pub priority: i8,
    /// Last broadcast presence, for answering probes.
    pub presence: Option<Element>,
    /// Requested the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Full or bare JIDs this session sent directed presence to (RFC 6121 §4.6), so they get
    /// unavailable presence when it goes offline.
    pub directed_to: Vec<String>,
    /// The connection broke and the session waits for XEP-0198 resumption: stanzas queue, nobody
    /// reads them now.
    pub detached: bool,
    /// The client said it is inactive (XEP-0352).
    pub inactive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no such session")]
    NoSession,
    #[error("session queue full")]
    QueueFull,
}

pub trait SessionDirectory: Send + Sync {
    /// Registers a bound session. With `replace`, an existing session of the same full JID is
    /// told to close with <conflict/> and replaced; without it, registration fails (false).
    fn register(&self, jid: FullJid, tx: mpsc::Sender<Outbound>, replace: bool) -> bool;
    /// Removes the session if `tx` is still the one registered (a replaced session must not remove
    /// its successor). Returns its last state.
    fn unregister(&self, jid: &FullJid, tx: &mpsc::Sender<Outbound>) -> Option<SessionInfo>;
    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo>;
    fn get(&self, jid: &FullJid) -> Option<SessionInfo>;
    fn update(&self, jid: &FullJid, f: &mut dyn FnMut(&mut SessionInfo));
    fn send(&self, jid: &FullJid, item: Outbound) -> Result<(), SendError>;
    fn count(&self) -> usize;
    /// Every session, for broadcasts and shutdown.
    fn all(&self) -> Vec<FullJid>;
    /// Stanzas waiting in the outbound queues of all sessions together (for `/metrics`).
    fn queue_depth(&self) -> usize {
        0
    }
    /// Where keyed services (MUC rooms, components) are served in a cluster; `None` on one node.
    fn homes(&self) -> Option<&dyn crate::cluster::ServiceHomes> {
        None
    }
    /// Cluster counters for `/metrics`; `None` on one node.
    fn cluster_stats(&self) -> Option<crate::cluster::ClusterStats> {
        None
    }
    /// Every session of the cluster with the node holding it (this node's under its own name), for
    /// the admin API; `None` on one node.
    fn cluster_sessions(&self) -> Option<Vec<(String, SessionInfo)>> {
        None
    }
}

struct Entry {
    info: SessionInfo,
    tx: mpsc::Sender<Outbound>,
}

#[derive(Default)]
pub struct LocalSessions {
    by_bare: RwLock<HashMap<BareJid, Vec<Entry>>>,
}

impl LocalSessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BareJid, Vec<Entry>>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters
        // more than losing every session, so recover the guard.
        self.by_bare.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<BareJid, Vec<Entry>>> {
        self.by_bare.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionDirectory for LocalSessions {
    fn register(&self, jid: FullJid, tx: mpsc::Sender<Outbound>, replace: bool) -> bool {
        let mut map = self.write();
        let list = map.entry(jid.to_bare()).or_default();
        if let Some(pos) = list.iter().position(|e| e.info.jid == jid) {
            if !replace {
                return false;
            }
            let old = list.remove(pos);
            let _ = old.tx.try_send(Outbound::Close {
                condition: "conflict",
                text: Some("Replaced by a new connection with the same resource".into()),
            });
        }
        // Most accounts have one session: room for exactly one more instead of the four a first
        // push reserves (an idle connection's memory, docs/BENCHMARKS.md).
        list.reserve_exact(1);
        list.push(Entry {
            info: SessionInfo {
                jid,
                available: false,
                priority: 0,
                presence: None,
                interested: false,
                directed_to: Vec::new(),
                detached: false,
                inactive: false,
            },
            tx,
        });
        true
    }

    fn unregister(&self, jid: &FullJid, tx: &mpsc::Sender<Outbound>) -> Option<SessionInfo> {
        let mut map = self.write();
        let bare = jid.to_bare();
        let list = map.get_mut(&bare)?;
        let pos = list.iter().position(|e| &e.info.jid == jid && e.tx.same_channel(tx))?;
        let entry = list.remove(pos);
        if list.is_empty() {
            map.remove(&bare);
        }
        Some(entry.info)
    }

    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.read().get(bare).map(|l| l.iter().map(|e| e.info.clone()).collect()).unwrap_or_default()
    }

    fn get(&self, jid: &FullJid) -> Option<SessionInfo> {
        let map = self.read();
        map.get(&jid.to_bare())?.iter().find(|e| &e.info.jid == jid).map(|e| e.info.clone())
    }

    fn update(&self, jid: &FullJid, f: &mut dyn FnMut(&mut SessionInfo)) {
        let mut map = self.write();
        if let Some(entry) = map.get_mut(&jid.to_bare()).and_then(|l| l.iter_mut().find(|e| &e.info.jid == jid)) {
            f(&mut entry.info);
        }
    }

    fn send(&self, jid: &FullJid, item: Outbound) -> Result<(), SendError> {
        let tx = {
            let map = self.read();
            let entry = map.get(&jid.to_bare()).and_then(|l| l.iter().find(|e| &e.info.jid == jid));
            entry.map(|e| e.tx.clone()).ok_or(SendError::NoSession)?
        };
        tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SendError::NoSession,
        })
    }

    fn count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    fn all(&self) -> Vec<FullJid> {
        self.read().values().flat_map(|l| l.iter().map(|e| e.info.jid.clone())).collect()
    }

    fn queue_depth(&self) -> usize {
        self.read().values().flatten().map(|e| e.tx.max_capacity().saturating_sub(e.tx.capacity())).sum()
    }
}

pub type SharedDirectory = Arc<dyn SessionDirectory>;

#[cfg(test)]
mod tests {
    use super::Outbound;

    /// Every session's queue allocates 32 slots up front, idle or not (docs/BENCHMARKS.md, idle
    /// memory): a variant that grows `Outbound` grows every connection by 32 times as much.
    #[test]
    fn outbound_stays_small_so_idle_session_queues_stay_small() {
        assert!(std::mem::size_of::<Outbound>() <= 64, "Outbound is {} bytes", std::mem::size_of::<Outbound>());
    }
}
