//! The seam between routing and a cluster for things that live on one node at a time (docs/CLUSTER.md
//! "Homes"): a MUC room's in-memory state, an external component's connection. A [`ServiceHomes`]
//! implementation (kabar-cluster) knows which node serves each key; whoever gets a stanza for a key
//! served elsewhere forwards it unchanged, and the serving node routes it as if it had arrived there.
//! A single node has no homes (the directory answers `None`), so everything is served locally.

use kabar_xml::Element;

/// Where a key (a room's bare JID, `component:<domain>`) is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// This node serves it. `epoch` changes each time this node (re)acquires the key, so a caller
    /// holding state from an earlier tenure knows to reload it from the shared store.
    Here { epoch: u64 },
    /// Another node serves it: forward the stanza there.
    Node(String),
    /// This node just joined the cluster and has not heard everybody's claims yet; ask again shortly.
    Settling,
    /// The cluster cannot be reached, and the key is not served here.
    Unreachable,
}

pub trait ServiceHomes: Send + Sync {
    /// Which node serves `key`; when nobody does, the cluster picks one (rendezvous hashing over the
    /// live nodes), which claims it as it gets the first stanza.
    fn home(&self, key: &str) -> Home;
    /// Claims `key` for this node whatever the hashing says (a component connected here). False
    /// when a live node already serves it.
    fn claim(&self, key: &str) -> bool;
    /// This node stops serving `key`.
    fn release(&self, key: &str);
    /// The node serving `key` if it is another live node, without claiming anything.
    fn served_elsewhere(&self, key: &str) -> Option<String>;
    /// Hands `stanza` (its `from` already trustworthy) to `node`, which routes it again there. When
    /// that node does not take it, the cluster treats it as gone and routes the stanza again here.
    fn forward(&self, node: &str, stanza: Element);
}

/// What a cluster node reports on `/metrics` (docs/ADMIN.md).
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    pub node: String,
    /// Other nodes heard from now (suspect ones included).
    pub nodes_seen: usize,
    /// Other nodes that did not take a stanza and are skipped until heard from.
    pub nodes_suspect: usize,
    /// Sessions of other nodes in this node's directory.
    pub remote_sessions: usize,
    pub nats_connected: bool,
    /// NATS connections made since start (the first one included).
    pub nats_connects: u64,
    /// Stanzas published to sessions on other nodes.
    pub remote_routes: u64,
    /// Stanzas another node did not take, routed again here (another resource, offline storage).
    pub reroutes: u64,
    /// Keys (rooms, components) this node serves.
    pub homes_served: usize,
    /// Stanzas forwarded to the node serving their room or component.
    pub forwarded: u64,
    pub forward_failures: u64,
}
