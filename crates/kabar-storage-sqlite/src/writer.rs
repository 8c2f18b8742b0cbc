//! Group commit: every write runs on one writer thread, and the writes that queue up while a commit
//! is being fsynced share the next transaction, so N concurrent writers cost one fsync instead of N.
//!
//! Each write runs inside its own SAVEPOINT, so a write that fails (or panics) is rolled back alone
//! and the others in its batch still commit. Writes marked [`Isolation::Atomic`] skip that savepoint
//! inside a batch: one that fails after changing something aborts the whole batch instead. The
//! archive's appends and flushes are such writes, because every savepoint makes FTS5 write its
//! pending terms out as a new index segment (and SQLite journal each touched page into the
//! sub-journal), which cost more than the insert itself; without them a batch's new terms are
//! written once, at its COMMIT. A caller gets its result only after the COMMIT that
//! holds its change has returned, so "Ok" still means "on disk" (synchronous=FULL), exactly as with
//! one transaction per write. If SQLite aborts the whole transaction mid-batch (I/O error, disk
//! full), every write of that batch so far is reported failed and the rest start a new batch.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kabar_storage::{Result, StoreError};
use rusqlite::Connection;
use tracing::{error, warn};

/// Most writes one transaction takes; bounds how long the first of them waits for its commit.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer thread; senders wait (asynchronously) beyond this.
pub(crate) const QUEUE: usize = 4096;

/// Finishes one write once its batch's fate is known: `Ok` when committed.
type Completion = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// One write: runs against the writer connection (inside a savepoint), returns its completion.
pub(crate) type Job = Box<dyn FnOnce(&mut Connection) -> Completion + Send>;

/// How one write is kept apart from the others in its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Its own SAVEPOINT: a failure rolls back this write alone.
    Savepoint,
    /// No savepoint when a batch transaction is open: if it fails or panics after changing a row,
    /// the whole batch is rolled back (and reported failed). For writes that usually cannot fail
    /// half-way, where a savepoint's cost shows (the archive's appends).
    Atomic,
}

/// Wraps `f` so its result reaches `reply` only after its transaction committed.
pub(crate) fn job<T, F>(isolation: Isolation, f: F, reply: tokio::sync::oneshot::Sender<Result<T>>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    Box::new(move |conn: &mut Connection| {
        let outcome = isolated(conn, isolation, f);
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
pub(crate) fn queued_job<F>(isolation: Isolation, f: F) -> Job
where
    F: FnOnce(&mut Connection) -> Result<()> + Send + 'static,
{
    Box::new(move |conn: &mut Connection| {
        let outcome = isolated(conn, isolation, f);
        Box::new(move |commit: std::result::Result<(), String>| {
            if let Err(e) = outcome.map_err(|e| e.to_string()).and(commit) {
                error!(error = %e, "sqlite: a queued write was not stored");
            }
        })
    })
}

fn isolated<T>(conn: &mut Connection, isolation: Isolation, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    // Outside a batch transaction a write must be its own transaction: the savepoint is that.
    if isolation == Isolation::Savepoint || conn.is_autocommit() {
        return in_savepoint(conn, f);
    }
    let before = conn.total_changes();
    let (outcome, panicked) = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(r) => (r, false),
        Err(_) => (Err(StoreError::Backend("sqlite: a write panicked; its batch was rolled back".into())), true),
    };
    // A failed statement changes nothing (SQLite undoes it, or the whole transaction on I/O
    // errors), so a change counted here is an earlier statement of this write: without a
    // savepoint only the whole batch can take it back. `run_batch` then reports the batch failed.
    if (panicked || (outcome.is_err() && conn.total_changes() != before)) && !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            error!(error = %e, "sqlite: rolling back a batch after a failed write failed");
        }
    }
    outcome
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

pub(crate) fn spawn(conn: Connection) -> std::io::Result<tokio::sync::mpsc::Sender<Job>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    std::thread::Builder::new().name("kabar-sqlite-writer".into()).spawn(move || run(conn, rx))?;
    Ok(tx)
}

/// Runs until every sender is gone (the store was dropped).
fn run(mut conn: Connection, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").expect("schema");
        conn
    }

    fn insert(k: i64) -> impl FnOnce(&mut Connection) -> Result<()> + Send + 'static {
        move |c: &mut Connection| {
            c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])
                .map(|_| ())
                .map_err(|e| StoreError::Backend(e.to_string()))
        }
    }

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.map(|r| r.expect("row")).collect()
    }

    /// An atomic write whose only statement fails changed nothing, so its batch still commits.
    #[test]
    fn atomic_write_failing_whole_leaves_its_batch_committed() {
        let mut conn = db();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        run_batch(
            &mut conn,
            vec![
                job(Isolation::Atomic, insert(1), tx1),
                job(Isolation::Atomic, insert(1), tx2),
                job(Isolation::Savepoint, insert(2), tx3),
            ],
        );
        assert!(rx1.try_recv().expect("reply").is_ok());
        assert!(rx2.try_recv().expect("reply").is_err(), "the duplicate key fails");
        assert!(rx3.try_recv().expect("reply").is_ok());
        assert_eq!(rows(&conn), vec![1, 2]);
    }

    /// An atomic write that fails after changing a row cannot be undone alone: the whole batch
    /// is rolled back and every write in it reported failed, never half-stored and reported done.
    #[test]
    fn atomic_write_failing_half_way_fails_its_whole_batch() {
        let mut conn = db();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        let half = |c: &mut Connection| -> Result<()> {
            insert(10)(c)?;
            insert(1)(c)
        };
        run_batch(
            &mut conn,
            vec![
                job(Isolation::Savepoint, insert(1), tx1),
                job(Isolation::Atomic, half, tx2),
                job(Isolation::Atomic, insert(3), tx3),
            ],
        );
        assert!(rx1.try_recv().expect("reply").is_err(), "rolled back with its batch");
        assert!(rx2.try_recv().expect("reply").is_err());
        // The write after the rollback starts a new batch and commits.
        assert!(rx3.try_recv().expect("reply").is_ok());
        assert_eq!(rows(&conn), vec![3]);
    }

    /// Outside a batch transaction an atomic write is still all-or-nothing (its own savepoint).
    #[test]
    fn atomic_write_outside_a_batch_is_its_own_transaction() {
        let mut conn = db();
        let half = |c: &mut Connection| -> Result<()> {
            insert(10)(c)?;
            insert(10)(c)
        };
        assert!(conn.is_autocommit());
        assert!(isolated(&mut conn, Isolation::Atomic, half).is_err());
        assert!(isolated(&mut conn, Isolation::Atomic, insert(4)).is_ok());
        assert_eq!(rows(&conn), vec![4]);
    }
}
