//! Group commit for the archive's hot path ([`ArchiveStore::archive_append_queued`] and
//! [`ArchiveStore::archive_flush`](kabar_storage::ArchiveStore::archive_flush)).
//!
//! Queued appends go through a channel to one task per store, which takes whatever has queued up
//! (at most [`MAX_BATCH`]) and writes it in one transaction: N messages cost one commit (one WAL
//! flush on the server) instead of N. A flush is a marker in the same channel, answered after the
//! batch holding everything queued before it committed, so "flushed" means durable, in call order.
//!
//! Failures never reach the callers (the trait says the backend logs them): a batch that fails is
//! retried with backoff, then item by item, so one bad row or a short database outage does not drop
//! the rest; an item that still fails is logged with its owner and id.
//!
//! [`ArchiveStore::archive_append_queued`]: kabar_storage::ArchiveStore::archive_append_queued

use std::time::Duration;

use deadpool_postgres::Pool;
use kabar_storage::{ArchiveItem, Result, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::archive::insert_item;
use crate::Ctx;

/// Most appends one transaction takes; bounds how long the first of them waits.
const MAX_BATCH: usize = 256;
/// Appends waiting for the writer task; senders wait beyond this (backpressure, not loss).
const QUEUE: usize = 4096;
/// Pauses before the retries of a failed batch.
const RETRY_BACKOFF: [Duration; 3] = [Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(2)];

enum Job {
    Append { owner: String, item: Box<ArchiveItem> },
    Flush(oneshot::Sender<()>),
}

/// The sending side; the writer task ends when every clone of the store is gone.
#[derive(Clone)]
pub(crate) struct ArchiveQueue {
    tx: mpsc::Sender<Job>,
}

impl ArchiveQueue {
    /// Starts the writer task on the current Tokio runtime.
    pub(crate) fn spawn(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        ArchiveQueue { tx }
    }

    pub(crate) async fn append(&self, owner: &str, item: &ArchiveItem) -> Result<()> {
        self.tx.send(Job::Append { owner: owner.to_owned(), item: Box::new(item.clone()) }).await.map_err(|_| gone())
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Job::Flush(done)).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())
    }
}

fn gone() -> StoreError {
    StoreError::Backend("postgres: the archive writer task has stopped".into())
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<(String, Box<ArchiveItem>)> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append { owner, item } => batch.push((owner, item)),
                Job::Flush(w) => waiters.push(w),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write(&pool, &batch).await;
            batch.clear();
        }
        for w in waiters.drain(..) {
            // The caller may have given up waiting; nothing to tell then.
            let _ = w.send(());
        }
    }
}

async fn write(pool: &Pool, batch: &[(String, Box<ArchiveItem>)]) {
    let mut last = match write_batch(pool, batch).await {
        Ok(()) => return,
        Err(e) => e,
    };
    for pause in RETRY_BACKOFF {
        warn!(error = %last, items = batch.len(), retry_in = ?pause, "postgres: archive batch not stored; retrying");
        tokio::time::sleep(pause).await;
        last = match write_batch(pool, batch).await {
            Ok(()) => return,
            Err(e) => e,
        };
    }
    warn!(error = %last, items = batch.len(), "postgres: archive batch failed; storing its items one by one");
    for (owner, item) in batch {
        let one = async {
            let client = pool.get().await.map_err(|e| StoreError::Backend(format!("postgres: no connection: {e}")))?;
            insert_item(&client, owner, item, None).await
        };
        if let Err(e) = one.await {
            error!(error = %e, owner = %owner, id = %item.id, "postgres: a queued archive append was not stored");
        }
    }
}

async fn write_batch(pool: &Pool, batch: &[(String, Box<ArchiveItem>)]) -> Result<()> {
    let mut client = pool.get().await.map_err(|e| StoreError::Backend(format!("postgres: no connection: {e}")))?;
    let tx = client.transaction().await.ctx("archive batch: begin")?;
    for (owner, item) in batch {
        // An id already taken is not an error: the item is there (ON CONFLICT DO NOTHING).
        insert_item(&tx, owner, item, None).await?;
    }
    tx.commit().await.ctx("archive batch: commit")
}
