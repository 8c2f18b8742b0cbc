//! Group commit: every write runs on one writer thread, and the writes that queue up while a commit
//! is being fsynced share the next transaction, so N concurrent writers cost one fsync instead of N.
//!
//! Each write runs inside its own SAVEPOINT, so a write that fails (or panics) is rolled back alone
//! and the others in its batch still commit. A caller gets its result only after the COMMIT that
//! holds its change has returned, so "Ok" still means "on disk" (synchronous=FULL), exactly as with
//! one transaction per write. If SQLite aborts the whole transaction mid-batch (I/O error, disk
//! full), every write of that batch so far is reported failed and the rest start a new batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender};

use kabar_storage::{Result, StoreError};
use rusqlite::Connection;
use tracing::{error, warn};

/// Most writes one transaction takes; bounds how long the first of them waits for its commit.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer thread; senders block (on the blocking pool) beyond this.
pub(crate) const QUEUE: usize = 4096;

/// Finishes one write once its batch's fate is known: `Ok` when committed.
type Completion = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// One write: runs against the writer connection (inside a savepoint), returns its completion.
pub(crate) type Job = Box<dyn FnOnce(&mut Connection) -> Completion + Send>;

/// Wraps `f` so its result reaches `reply` only after its transaction committed.
pub(crate) fn job<T, F>(f: F, reply: tokio::sync::oneshot::Sender<Result<T>>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    Box::new(move |conn: &mut Connection| {
        let outcome = in_savepoint(conn, f);
        Box::new(move |commit: std::result::Result<(), String>| {
            let result = match (outcome, commit) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(StoreError::Backend(e)),
                (Ok(v), Ok(())) => Ok(v),
            };
            // The caller may have given up (its future dropped); nothing to tell then.
            let _ = reply.send(result);
        })
    })
}

/// A write nobody waits for: its failure (or its batch's) is logged.
pub(crate) fn queued_job<F>(f: F) -> Job
where
    F: FnOnce(&mut Connection) -> Result<()> + Send + 'static,
{
    Box::new(move |conn: &mut Connection| {
        let outcome = in_savepoint(conn, f);
        Box::new(move |commit: std::result::Result<(), String>| {
            if let Err(e) = outcome.map_err(|e| e.to_string()).and(commit) {
                error!(error = %e, "sqlite: a queued write was not stored");
            }
        })
    })
}

fn in_savepoint<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT kabar_write")
        .map_err(|e| StoreError::Backend(format!("sqlite: savepoint: {e}")))?;
    let outcome = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(r) => r,
        Err(_) => Err(StoreError::Backend("sqlite: a write panicked; it was rolled back".into())),
    };
    let end = if outcome.is_ok() {
        "RELEASE kabar_write"
    } else {
        "ROLLBACK TO kabar_write; RELEASE kabar_write"
    };
    if let Err(e) = conn.execute_batch(end) {
        // The transaction is gone (SQLite rolled it back itself); the batch loop notices.
        warn!(error = %e, "sqlite: ending a write's savepoint failed");
        return outcome.and(Err(StoreError::Backend(format!("sqlite: {end}: {e}"))));
    }
    outcome
}

pub(crate) fn spawn(conn: Connection) -> std::io::Result<SyncSender<Job>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new().name("kabar-sqlite-writer".into()).spawn(move || run(conn, rx))?;
    Ok(tx)
}

/// Runs until every sender is gone (the store was dropped).
fn run(mut conn: Connection, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
}

fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    let mut pending: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut in_tx = begin(conn);
    for job in batch {
        let completion = job(conn);
        if in_tx && conn.is_autocommit() {
            // SQLite rolled the batch's transaction back: nothing before this write is on disk.
            let why = "sqlite: the transaction was rolled back by an error in the same batch".to_string();
            for c in pending.drain(..) {
                c(Err(why.clone()));
            }
            completion(Err(why));
            in_tx = begin(conn);
            continue;
        }
        if in_tx {
            pending.push(completion);
        } else {
            // No batch transaction: the savepoint was its own transaction and is already committed.
            completion(Ok(()));
        }
    }
    if in_tx {
        let commit = conn.execute_batch("COMMIT").map_err(|e| format!("sqlite: commit: {e}"));
        if let Err(e) = &commit {
            error!(error = %e, writes = pending.len(), "sqlite: group commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for c in pending {
            c(commit.clone());
        }
    }
}

/// Starts the batch's transaction; `false` (logged) means each write commits on its own.
fn begin(conn: &mut Connection) -> bool {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "sqlite: could not begin a batch transaction; committing writes one by one");
            false
        }
    }
}
