//! Keeping every node's copy of the directory in step (docs/CLUSTER.md "Directory protocol").
//!
//! Each node numbers its own session changes (1, 2, 3 …, per incarnation) and publishes each as a
//! delta (`up`/`down`) carrying its number. The heartbeat (`beat`) carries only the latest number:
//! it renews the lease and tells the others whether they missed anything. A receiver applies a
//! delta only if it is the next number; a gap (NATS core delivery is at most once, or NATS was
//! away) or a beat ahead of its copy makes it ask that node for a snapshot (`want`), which comes
//! back addressed to it alone (header `Kabar-For`; the others skip it unparsed). A snapshot says
//! which number it is complete up to, so the deltas after it apply on top. A node that (re)joins
//! says `hello` with its number: everybody sends it their snapshot, and asks for its own if their
//! copy is behind. A node whose number is 0 has never had a session: nothing to ask for.
//!
//! One publisher task sends everything a node says, and each change is numbered and queued under
//! the directory's order lock, so a node's messages arrive in the order they were numbered; a
//! snapshot's chunks are queued together under that lock, so no delta falls between them.

use std::time::{Duration, Instant};

use kabar_core::sessions::SessionDirectory;
use kabar_core::stanza;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::remote::{Incoming, NodeState, RemoteEntry, WireSession};
use crate::{ClusterDirectory, Out};

/// Sessions per snapshot message: keeps each well under NATS's default 1 MiB max_payload.
const SNAPSHOT_CHUNK: usize = 500;

/// What nodes tell each other on `kabar.cluster.state`. `inc` (incarnation) is random per process,
/// so a node restarted under the same name replaces what its previous life announced; `seq` is the
/// sender's change number (see the module comment).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum StateMsg {
    Hello {
        node: String,
        inc: String,
        seq: u64,
    },
    Beat {
        node: String,
        inc: String,
        seq: u64,
    },
    /// `node` asks `of` for its snapshot.
    Want {
        node: String,
        inc: String,
        of: String,
    },
    Snapshot {
        node: String,
        inc: String,
        seq: u64,
        part: u32,
        last: bool,
        sessions: Vec<WireSession>,
    },
    Up {
        node: String,
        inc: String,
        seq: u64,
        session: WireSession,
    },
    Down {
        node: String,
        inc: String,
        seq: u64,
        jid: String,
    },
    Bye {
        node: String,
        inc: String,
    },
}

impl StateMsg {
    fn origin(&self) -> (&str, &str) {
        match self {
            StateMsg::Hello { node, inc, .. }
            | StateMsg::Beat { node, inc, .. }
            | StateMsg::Want { node, inc, .. }
            | StateMsg::Snapshot { node, inc, .. }
            | StateMsg::Up { node, inc, .. }
            | StateMsg::Down { node, inc, .. }
            | StateMsg::Bye { node, inc } => (node, inc),
        }
    }
}

/// Whether this node's copy of `node`'s sessions is behind the change number it announced (and a
/// snapshot must be asked for now).
fn behind(node: &str, st: &mut NodeState, seq: u64, now: Instant, retry: Duration) -> bool {
    if st.applied.is_none() && seq == 0 {
        // Never had a session in this incarnation: the empty copy is complete.
        st.applied = Some(0);
    }
    if st.applied.is_some_and(|a| a >= seq) {
        // In step (a wait for the answer to our hello included): deltas apply from here on.
        st.wanted = None;
        return false;
    }
    resync(node, st, now, retry)
}

/// Marks a snapshot as asked for; false if one was asked for recently (still on its way).
fn ask(st: &mut NodeState, now: Instant, retry: Duration) -> bool {
    if st
        .wanted
        .is_some_and(|t| now.saturating_duration_since(t) < retry)
    {
        return false;
    }
    st.wanted = Some(now);
    st.incoming = None;
    true
}

enum Delta {
    Apply,
    Skip,
    Resync,
}

fn delta_order(st: &NodeState, seq: u64) -> Delta {
    if st.wanted.is_some() {
        // A snapshot is on its way; it covers this change or the deltas after it follow it.
        return Delta::Skip;
    }
    match st.applied {
        Some(a) if seq <= a => Delta::Skip,
        Some(a) if seq == a + 1 => Delta::Apply,
        _ => Delta::Resync,
    }
}

impl ClusterDirectory {
    /// How long a snapshot asked for may take before it is asked for again.
    fn resync_after(&self) -> Duration {
        (self.lease / 2).max(self.heartbeat)
    }

    pub(crate) fn emit(&self, msg: StateMsg) {
        let _ = self.out.send(Out::State { msg, to: None });
    }

    fn emit_to(&self, to: &str, msg: StateMsg) {
        let _ = self.out.send(Out::State {
            msg,
            to: Some(to.to_string()),
        });
    }

    /// Numbers and queues one change of a local session. The caller holds the order lock.
    pub(crate) fn emit_up(&self, info: &kabar_core::sessions::SessionInfo) {
        let seq = self.next_seq();
        self.emit(StateMsg::Up {
            node: self.node.clone(),
            inc: self.inc.clone(),
            seq,
            session: WireSession::from_info(info),
        });
    }

    /// See [`Self::emit_up`].
    pub(crate) fn emit_down(&self, jid: &jid::FullJid) {
        let seq = self.next_seq();
        self.emit(StateMsg::Down {
            node: self.node.clone(),
            inc: self.inc.clone(),
            seq,
            jid: jid.to_string(),
        });
    }

    fn next_seq(&self) -> u64 {
        self.change_seq
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }

    fn current_seq(&self) -> u64 {
        self.change_seq.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Announces this node after a (re)connection to NATS.
    pub(crate) fn hello(&self) {
        *self.hello_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.announce(|node, inc, seq| StateMsg::Hello { node, inc, seq });
    }

    /// The heartbeat: lease renewal plus the latest change number, nothing else.
    pub(crate) fn beat(&self) {
        self.announce(|node, inc, seq| StateMsg::Beat { node, inc, seq });
    }

    /// Queues a message carrying the latest change number; under the order lock, so that no change
    /// numbered before it is queued after it.
    fn announce(&self, make: impl FnOnce(String, String, u64) -> StateMsg) {
        let _g = self.ordered();
        self.emit(make(
            self.node.clone(),
            self.inc.clone(),
            self.current_seq(),
        ));
    }

    /// Sends this node's whole session list (in chunks) to node `to`.
    pub(crate) fn queue_snapshot(&self, to: &str) {
        let _g = self.ordered();
        let seq = self.current_seq();
        let all: Vec<WireSession> = self
            .local
            .all()
            .iter()
            .filter_map(|j| self.local.get(j))
            .map(|i| WireSession::from_info(&i))
            .collect();
        let n = all.len().div_ceil(SNAPSHOT_CHUNK).max(1);
        let mut chunks = all.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec);
        for part in 0..n {
            self.emit_to(
                to,
                StateMsg::Snapshot {
                    node: self.node.clone(),
                    inc: self.inc.clone(),
                    seq,
                    part: part as u32,
                    last: part + 1 == n,
                    sessions: chunks.next().unwrap_or_default(),
                },
            );
        }
        debug!(to, sessions = all.len(), seq, "cluster: snapshot sent");
    }

    pub(crate) fn on_state(&self, msg: StateMsg) {
        let (node, inc) = msg.origin();
        if node == self.node {
            if inc != self.inc {
                tracing::warn!(node = %node, "cluster: another process uses this node name; give each node its own [cluster] node");
            }
            return;
        }
        let (node, inc) = (node.to_string(), inc.to_string());
        // A peer back from its own NATS outage (or just started) may have stored messages for our
        // users while it could not see them.
        let peer_rejoined = matches!(msg, StateMsg::Hello { .. });
        let (want, reply) = self.apply_state(&node, &inc, msg);
        if want {
            self.emit_to(
                &node,
                StateMsg::Want {
                    node: self.node.clone(),
                    inc: self.inc.clone(),
                    of: node.clone(),
                },
            );
        }
        if reply {
            self.queue_snapshot(&node);
        }
        if peer_rejoined {
            self.rejoined();
        }
        let stale = std::mem::take(&mut self.remote_write().stale);
        self.closed_elsewhere(stale);
    }

    /// Applies one message; returns (ask `node` for its snapshot, send it ours).
    fn apply_state(&self, node: &str, inc: &str, msg: StateMsg) -> (bool, bool) {
        let now = Instant::now();
        let retry = self.resync_after();
        let hello_at = *self.hello_at.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = self.remote_write();
        if matches!(msg, StateMsg::Down { .. } | StateMsg::Want { .. })
            && !r.nodes.contains_key(node)
        {
            // Sessions closing after a node's `bye` must not bring the node back; a request is
            // not a sign of sessions either (its beat will follow).
            if let StateMsg::Want { of, .. } = &msg {
                return (false, of == &self.node);
            }
            return (false, false);
        }
        if let StateMsg::Bye { .. } = msg {
            let n = r.drop_node(node).len();
            info!(node = %node, sessions = n, "cluster node left");
            return (false, false);
        }
        let is_hello = matches!(msg, StateMsg::Hello { .. });
        let st = r.touch(node, inc, now);
        if st.applied.is_none() && st.wanted.is_none() && !is_hello {
            // Just (re)joined ourselves: its answer to our hello is on its way. (Not so for a node
            // saying hello itself: it may have connected after our hello went out.)
            if let Some(h) = hello_at.filter(|h| now.saturating_duration_since(*h) < retry) {
                st.wanted = Some(h);
            }
        }
        match msg {
            StateMsg::Hello { seq, .. } => (behind(node, st, seq, now, retry), true),
            StateMsg::Beat { seq, .. } => (behind(node, st, seq, now, retry), false),
            StateMsg::Want { of, .. } => (false, of == self.node),
            StateMsg::Snapshot {
                seq,
                part,
                last,
                sessions,
                ..
            } => {
                if part == 0 {
                    st.incoming = Some(Incoming {
                        seq,
                        next_part: 0,
                        entries: Vec::with_capacity(sessions.len()),
                    });
                }
                let name = st.name.clone();
                match st.incoming.as_mut() {
                    Some(i) if i.seq == seq && i.next_part == part => {
                        i.next_part += 1;
                        i.entries.extend(
                            sessions
                                .into_iter()
                                .filter_map(|w| RemoteEntry::from_wire(name.clone(), w)),
                        );
                    }
                    _ => {
                        debug!(node = %node, "cluster: snapshot chunk out of order; asking again");
                        st.wanted = None;
                        return (ask(st, now, retry), false);
                    }
                }
                if !last {
                    return (false, false);
                }
                let Some(done) = st.incoming.take() else {
                    return (false, false);
                };
                if st.applied.is_some_and(|a| a > seq) {
                    return (false, false);
                }
                st.applied = Some(seq);
                st.wanted = None;
                let count = done.entries.len();
                r.replace_node(node, done.entries);
                debug!(node = %node, sessions = count, seq, "cluster: snapshot applied");
                (false, false)
            }
            StateMsg::Up { seq, session, .. } => match delta_order(st, seq) {
                Delta::Skip => (false, false),
                Delta::Resync => (resync(node, st, now, retry), false),
                Delta::Apply => {
                    st.applied = Some(seq);
                    let name = st.name.clone();
                    if let Some(e) = RemoteEntry::from_wire(name, session) {
                        r.upsert(e);
                    }
                    (false, false)
                }
            },
            StateMsg::Down { seq, jid, .. } => match delta_order(st, seq) {
                Delta::Skip => (false, false),
                Delta::Resync => (resync(node, st, now, retry), false),
                Delta::Apply => {
                    st.applied = Some(seq);
                    if let Some(full) = stanza::parse_jid(&jid)
                        .ok()
                        .and_then(|j| j.try_into_full().ok())
                    {
                        r.remove(&full, Some(node));
                    }
                    (false, false)
                }
            },
            StateMsg::Bye { .. } => (false, false),
        }
    }
}

fn resync(node: &str, st: &mut NodeState, now: Instant, retry: Duration) -> bool {
    let asked = ask(st, now, retry);
    if asked && st.applied.is_some() {
        info!(node = %node, "cluster: missed directory changes of this node; asking for its snapshot");
    }
    asked
}
