//! Reads run on a few dedicated reader threads, one per read-only connection, that take jobs from
//! one shared queue.
//!
//! Why not `spawn_blocking` plus a connection pool: every read then woke (or, in a burst, created)
//! a blocking-pool thread that in turn waited on the pool's condvar for a connection, so a login
//! storm grew the blocking pool by dozens of threads and paid several context switches per read
//! (measured: ~28 switches and 5 such reads per login; docs/BENCHMARKS.md "Login path (session
//! 5)"). Here a read is one queue push; a reader thread that is already awake takes the queued
//! reads one after another without sleeping in between, and the thread count stays fixed.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use kabar_storage::{Result, StoreError};
use rusqlite::Connection;
use tracing::warn;

use crate::{lock, Ctx};

/// Gets the connection, or why it cannot be used (the caller then gets that error).
type Job = Box<dyn FnOnce(std::result::Result<&mut Connection, StoreError>) + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Reader threads asleep on `ready`: a push wakes one only when there is one to wake.
    sleeping: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The reader threads; dropping this (with the last store clone) lets them finish the queued
/// reads and exit.
pub(crate) struct Readers {
    shared: Arc<Shared>,
    size: usize,
}

impl Readers {
    /// Starts one thread per connection. No connections: `size() == 0` (the caller reads through
    /// the writer instead).
    pub(crate) fn start(conns: Vec<Connection>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                sleeping: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let size = conns.len();
        let readers = Readers {
            shared: Arc::clone(&shared),
            size,
        };
        for (i, conn) in conns.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            // On failure `readers` is dropped, which closes the queue for the threads already started.
            std::thread::Builder::new()
                .name(format!("kabar-sqlite-rd{i}"))
                .spawn(move || run(conn, &shared))?;
        }
        Ok(readers)
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on a reader connection; its result comes back through the returned future.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.submit(f)
            .await
            .map_err(|_| StoreError::Backend("sqlite: the reader threads have stopped".into()))?
    }

    /// Queues `f` at once (not when first polled) and returns where its result will arrive.
    fn submit<T, F>(&self, f: F) -> tokio::sync::oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(
            move |conn: std::result::Result<&mut Connection, StoreError>| {
                let outcome = conn.and_then(|conn| {
                    catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
                        Err(StoreError::Backend("sqlite: a read panicked".into()))
                    })
                });
                // The caller may have given up (its future dropped); nothing to tell then.
                let _ = reply.send(outcome);
            },
        );
        let mut q = lock(&self.shared.queue);
        q.jobs.push_back(job);
        if q.sleeping > 0 {
            self.shared.ready.notify_one();
        }
        result
    }

    /// Runs `f` on every reader connection in turn, waiting for each (tests check their settings).
    #[cfg(test)]
    pub(crate) async fn each<F>(&self, f: F) -> Result<Vec<i64>>
    where
        F: Fn(&mut Connection) -> Result<i64> + Send + Sync + 'static,
    {
        // Holding every reader busy at once guarantees each connection answers exactly once.
        let f = Arc::new(f);
        let gate = Arc::new(std::sync::Barrier::new(self.size));
        let mut pending = Vec::new();
        for _ in 0..self.size {
            let (f, gate) = (Arc::clone(&f), Arc::clone(&gate));
            pending.push(self.submit(move |conn| {
                let v = f(conn);
                gate.wait();
                v
            }));
        }
        let mut out = Vec::new();
        for p in pending {
            out.push(
                p.await
                    .map_err(|_| StoreError::Backend("sqlite: reader gone".into()))??,
            );
        }
        Ok(out)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

fn run(mut conn: Connection, shared: &Shared) {
    batch_policy();
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q.sleeping += 1;
                q = shared
                    .ready
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.sleeping -= 1;
            }
        };
        // A read that panicked inside a transaction leaves it open; it must not pin an old snapshot.
        if !conn.is_autocommit() {
            if let Err(e) = conn
                .execute_batch("ROLLBACK")
                .ctx("rolling back an abandoned read transaction")
            {
                job(Err(e));
                continue;
            }
        }
        job(Ok(&mut conn));
    }
}

/// Puts the calling reader thread under SCHED_BATCH (same nice value): a woken SCHED_BATCH thread
/// does not preempt the running event-loop thread, which therefore keeps serving other connections
/// (queueing more reads) until it parks or its slice ends; the reader then takes the queued reads in
/// one go. Without it, on a busy core, every read cost two extra context switches (the reader
/// preempting the event loop, then the switch back).
#[cfg(target_os = "linux")]
fn batch_policy() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let Ok(p) = ThreadPriorityValue::try_from(47u8) else {
        return;
    };
    if let Err(e) =
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Crossplatform(p), batch)
    {
        if thread_schedule_policy().ok() != Some(batch) {
            warn!(error = ?e, "cannot put the SQLite reader threads under SCHED_BATCH");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_policy() {}
