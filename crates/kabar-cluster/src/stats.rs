//! What a node reports about the cluster: counters for `/metrics` and the cluster-wide session
//! list for the admin API (docs/ADMIN.md).

use std::sync::atomic::{AtomicU64, Ordering};

use kabar_core::cluster::ClusterStats;
use kabar_core::sessions::{SessionDirectory, SessionInfo};

use crate::ClusterDirectory;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) nats_connects: AtomicU64,
    pub(crate) remote_routes: AtomicU64,
    pub(crate) reroutes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl ClusterDirectory {
    pub(crate) fn stats(&self) -> ClusterStats {
        let (nodes_seen, nodes_suspect, remote_sessions) = {
            let r = self.remote_read();
            (
                r.nodes.len(),
                r.nodes.values().filter(|n| n.suspect).count(),
                r.len(),
            )
        };
        let c = &self.counters;
        let h = &self.homes.metrics;
        ClusterStats {
            node: self.node.clone(),
            nodes_seen,
            nodes_suspect,
            remote_sessions,
            nats_connected: self.is_connected(),
            nats_connects: c.nats_connects.load(Ordering::Relaxed),
            remote_routes: c.remote_routes.load(Ordering::Relaxed),
            reroutes: c.reroutes.load(Ordering::Relaxed),
            homes_served: self.homes.served_here(),
            forwarded: h.forwarded.load(Ordering::Relaxed),
            forward_failures: h.forward_failures.load(Ordering::Relaxed),
        }
    }

    /// This node's sessions and every routable session other nodes announced.
    pub(crate) fn sessions_everywhere(&self) -> Vec<(String, SessionInfo)> {
        let mut out: Vec<(String, SessionInfo)> = self
            .local
            .all()
            .iter()
            .filter_map(|j| self.local.get(j))
            .map(|i| (self.node.clone(), i))
            .collect();
        if self.is_connected() {
            let r = self.remote_read();
            for e in r.all().filter(|e| r.routable(e)) {
                out.push((e.node.to_string(), e.info()));
            }
        }
        out
    }
}
