//! The other nodes' sessions as this node knows them (docs/CLUSTER.md "Directory").
//!
//! Every node keeps a copy of every remote session, because routing reads it on every stanza:
//! a bare JID goes to all of a user's resources cluster-wide (RFC 6121 §8.5.2), presence is
//! broadcast to every resource of every contact, and probes are answered from the last presence.
//! Asking the cluster on a cache miss would turn each of those into a scatter-gather round trip.
//! What makes the copy affordable is its size: an entry is the full JID (one string, the bare JID
//! is a prefix of it), its node as a shared `Arc<str>`, flags, and the presence as the XML text it
//! arrived as (parsed only when a reader asks for it). Entries are grouped by a hash of the bare
//! JID (random keys per process, so crafted account names cannot pile up in one bucket).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use jid::{BareJid, FullJid};
use kabar_core::sessions::SessionInfo;
use kabar_core::stanza;
use kabar_xml::Element;
use serde::{Deserialize, Serialize};
use tracing::info;

const AVAILABLE: u8 = 1;
const INTERESTED: u8 = 2;
const DETACHED: u8 = 4;
const INACTIVE: u8 = 8;

/// A session as other nodes see it on the wire (deltas and snapshots).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireSession {
    pub(crate) jid: String,
    pub(crate) available: bool,
    pub(crate) priority: i8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) presence: Option<String>,
    pub(crate) interested: bool,
    #[serde(default)]
    pub(crate) directed_to: Vec<String>,
    pub(crate) detached: bool,
    pub(crate) inactive: bool,
}

impl WireSession {
    pub(crate) fn from_info(info: &SessionInfo) -> Self {
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
}

/// One remote session, kept small: see the module comment.
pub(crate) struct RemoteEntry {
    pub(crate) node: Arc<str>,
    jid: FullJid,
    priority: i8,
    flags: u8,
    presence: Option<Box<str>>,
    directed_to: Box<[Box<str>]>,
}

impl RemoteEntry {
    /// `None` for a JID that does not parse as a full JID (another node's bug, or a forged message).
    pub(crate) fn from_wire(node: Arc<str>, w: WireSession) -> Option<Self> {
        let jid = stanza::parse_jid(&w.jid).ok()?.try_into_full().ok()?;
        let flags = (if w.available { AVAILABLE } else { 0 })
            | (if w.interested { INTERESTED } else { 0 })
            | (if w.detached { DETACHED } else { 0 })
            | (if w.inactive { INACTIVE } else { 0 });
        Some(RemoteEntry {
            node,
            jid,
            priority: w.priority,
            flags,
            presence: w.presence.map(String::into_boxed_str),
            directed_to: w
                .directed_to
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        })
    }

    pub(crate) fn jid(&self) -> &FullJid {
        &self.jid
    }

    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo {
            jid: self.jid.clone(),
            available: self.flags & AVAILABLE != 0,
            priority: self.priority,
            presence: self
                .presence
                .as_deref()
                .and_then(|p| p.parse::<Element>().ok()),
            interested: self.flags & INTERESTED != 0,
            directed_to: self.directed_to.iter().map(|s| s.to_string()).collect(),
            detached: self.flags & DETACHED != 0,
            inactive: self.flags & INACTIVE != 0,
        }
    }
}

fn bare_part(jid: &FullJid) -> &str {
    let s = jid.as_str();
    s.split_once('/').map_or(s, |(bare, _)| bare)
}

/// A snapshot being received in chunks.
pub(crate) struct Incoming {
    pub(crate) seq: u64,
    pub(crate) next_part: u32,
    pub(crate) entries: Vec<RemoteEntry>,
}

pub(crate) struct NodeState {
    pub(crate) name: Arc<str>,
    pub(crate) inc: String,
    pub(crate) last_seen: Instant,
    /// The node's change sequence this copy is complete up to; `None` until a snapshot arrived.
    pub(crate) applied: Option<u64>,
    /// When a snapshot was last asked for (not yet received).
    pub(crate) wanted: Option<Instant>,
    pub(crate) incoming: Option<Incoming>,
    /// Did not take a stanza (no subscriber, or no answer in time): its sessions are hidden from
    /// routing until it is heard from again, and forgotten when its lease runs out.
    pub(crate) suspect: bool,
}

#[derive(Default)]
pub(crate) struct Remote {
    pub(crate) nodes: HashMap<String, NodeState>,
    buckets: HashMap<u64, Vec<RemoteEntry>>,
    hasher: RandomState,
    len: usize,
    /// Sessions of a previous incarnation of a restarted node, to be ended by `closed_elsewhere`.
    pub(crate) stale: Vec<SessionInfo>,
}

impl Remote {
    fn key(&self, bare: &str) -> u64 {
        self.hasher.hash_one(bare)
    }

    /// Remote sessions held in this copy (routable or not).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Forgets a node and its sessions; returns the sessions.
    pub(crate) fn drop_node(&mut self, node: &str) -> Vec<SessionInfo> {
        self.nodes.remove(node);
        self.drop_entries_of(node)
    }

    fn drop_entries_of(&mut self, node: &str) -> Vec<SessionInfo> {
        let mut gone = Vec::new();
        self.buckets.retain(|_, list| {
            list.retain(|e| {
                if &*e.node == node {
                    gone.push(e.info());
                    false
                } else {
                    true
                }
            });
            !list.is_empty()
        });
        self.len -= gone.len();
        gone
    }

    pub(crate) fn routable(&self, e: &RemoteEntry) -> bool {
        self.nodes.get(&*e.node).is_some_and(|n| !n.suspect)
    }

    pub(crate) fn find(&self, jid: &FullJid) -> Option<&RemoteEntry> {
        self.buckets
            .get(&self.key(bare_part(jid)))?
            .iter()
            .find(|e| &e.jid == jid && self.routable(e))
    }

    /// Routable sessions of `bare`.
    pub(crate) fn of_bare<'a>(
        &'a self,
        bare: &'a BareJid,
    ) -> impl Iterator<Item = &'a RemoteEntry> + 'a {
        self.buckets
            .get(&self.key(bare.as_str()))
            .into_iter()
            .flatten()
            .filter(move |e| bare_part(&e.jid) == bare.as_str() && self.routable(e))
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &RemoteEntry> + '_ {
        self.buckets.values().flatten()
    }

    pub(crate) fn remove(&mut self, jid: &FullJid, node: Option<&str>) {
        let key = self.key(bare_part(jid));
        if let Some(list) = self.buckets.get_mut(&key) {
            let before = list.len();
            list.retain(|e| !(&e.jid == jid && node.is_none_or(|n| n == &*e.node)));
            self.len -= before - list.len();
            if list.is_empty() {
                self.buckets.remove(&key);
            }
        }
    }

    pub(crate) fn upsert(&mut self, entry: RemoteEntry) {
        let key = self.key(bare_part(&entry.jid));
        let list = self.buckets.entry(key).or_default();
        // A full JID lives on one node: the latest announcement wins (a login on another node
        // replaced it).
        let before = list.len();
        list.retain(|e| e.jid != entry.jid);
        list.push(entry);
        self.len = self.len + list.len() - before;
    }

    /// Replaces everything known about `node` with a complete snapshot.
    pub(crate) fn replace_node(&mut self, node: &str, entries: Vec<RemoteEntry>) {
        self.drop_entries_of(node);
        for e in entries {
            self.upsert(e);
        }
    }

    /// Learns that `node` (incarnation `inc`) is alive; forgets a previous incarnation's sessions.
    pub(crate) fn touch(&mut self, node: &str, inc: &str, now: Instant) -> &mut NodeState {
        if self.nodes.get(node).is_some_and(|n| n.inc != inc) {
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
                name: Arc::from(node),
                inc: inc.to_string(),
                last_seen: now,
                applied: None,
                wanted: None,
                incoming: None,
                suspect: false,
            }
        });
        state.last_seen = now;
        state.suspect = false;
        state
    }
}

/// An available session with nothing else set, for the crate's unit tests.
#[cfg(test)]
pub(crate) fn test_wire(jid: &str) -> WireSession {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &Arc<str>, jid: &str) -> RemoteEntry {
        RemoteEntry::from_wire(node.clone(), test_wire(jid))
            .unwrap_or_else(|| panic!("test JID {jid}"))
    }

    #[test]
    fn entries_are_found_by_bare_and_full_jid_and_counted() {
        let mut r = Remote::default();
        let n2 = r.touch("n2", "i", Instant::now()).name.clone();
        r.upsert(entry(&n2, "a@x/1"));
        r.upsert(entry(&n2, "a@x/2"));
        r.upsert(entry(&n2, "ab@x/1"));
        r.upsert(entry(&n2, "a@x/1"));
        assert_eq!(r.len(), 3);
        let bare = stanza::parse_bare("a@x").unwrap_or_else(|e| panic!("{e}"));
        let mut found: Vec<String> = r.of_bare(&bare).map(|e| e.jid().to_string()).collect();
        found.sort();
        assert_eq!(found, ["a@x/1", "a@x/2"]);
        let full = stanza::parse_jid("ab@x/1")
            .ok()
            .and_then(|j| j.try_into_full().ok())
            .unwrap_or_else(|| panic!("test JID"));
        assert!(r.find(&full).is_some());
        r.remove(&full, Some("n3"));
        assert!(r.find(&full).is_some());
        r.remove(&full, Some("n2"));
        assert!(r.find(&full).is_none());
        assert_eq!(r.len(), 2);
        assert_eq!(r.drop_node("n2").len(), 2);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn remote_entry_keeps_presence_and_routing_state() {
        let presence =
            "<presence xmlns='jabber:client'><show>away</show><x xmlns='urn:x'/></presence>";
        let w = WireSession {
            jid: "a@example.org/r".into(),
            available: true,
            priority: -3,
            presence: Some(presence.into()),
            interested: true,
            directed_to: vec!["b@example.org".into()],
            detached: false,
            inactive: true,
        };
        let json = serde_json::to_string(&w).unwrap_or_default();
        let back: WireSession = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        let e = RemoteEntry::from_wire(Arc::from("n2"), back).unwrap_or_else(|| panic!("lost"));
        let info = e.info();
        assert_eq!(info.jid.to_string(), "a@example.org/r");
        assert!(info.available && info.interested && info.inactive && !info.detached);
        assert_eq!(info.priority, -3);
        let expected: Element = presence.parse().unwrap_or_else(|_| panic!("test presence"));
        assert_eq!(info.presence, Some(expected));
        assert_eq!(info.directed_to, vec!["b@example.org".to_string()]);
        // And back to the wire unchanged (a snapshot of a snapshot).
        let again = WireSession::from_info(&info);
        assert_eq!(
            again
                .presence
                .as_deref()
                .map(|p| p.parse::<Element>().is_ok()),
            Some(true)
        );
    }
}
