//! SQLite backend for kabar's storage traits.
//!
//! Durability: WAL journal with `synchronous=FULL` (plus `fullfsync` where the OS has it), so every
//! commit is fsynced before the call returns Ok and survives kill -9 and power loss.
//! Threading: rusqlite is blocking. All writes go to one writer thread (SQLite admits one writer
//! anyway) that commits them in groups: writes queued while a commit is being fsynced share the
//! next transaction, each in its own savepoint (see [`writer`]). Reads run on a few reader threads,
//! each owning a read-only connection (see [`readers`]), so they never queue behind a slow write
//! (WAL lets readers proceed during a write). No lock is held across an `.await`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kabar_storage::{
    AccountCredentials, AccountStore, KvStore, OfflineStore, Result, RosterItem, RosterStore,
    ScramCredentials, StoreError, Subscription,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Savepoint, TransactionBehavior};

/// Reader connections opened for a file database.
const READERS: usize = 4;
/// The writer connection's page cache, KiB (allocated as pages are used).
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// How long a statement waits for a lock held by another connection (or process) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations, applied in order at open; migration `n` (1-based) is recorded as version `n`
/// in `schema_version`. Never edit an existing entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "
    CREATE TABLE accounts (
        user              TEXT    NOT NULL PRIMARY KEY,
        sha1_salt         BLOB    NOT NULL,
        sha1_iterations   INTEGER NOT NULL,
        sha1_stored_key   BLOB    NOT NULL,
        sha1_server_key   BLOB    NOT NULL,
        sha256_salt       BLOB    NOT NULL,
        sha256_iterations INTEGER NOT NULL,
        sha256_stored_key BLOB    NOT NULL,
        sha256_server_key BLOB    NOT NULL,
        created_at        INTEGER NOT NULL
    );

    CREATE TABLE roster (
        user         TEXT    NOT NULL,
        contact      TEXT    NOT NULL,
        name         TEXT,
        subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
        ask          INTEGER NOT NULL,
        approved     INTEGER NOT NULL,
        PRIMARY KEY (user, contact)
    );

    -- Groups of a roster item, in the order the client gave them.
    CREATE TABLE roster_groups (
        user     TEXT    NOT NULL,
        contact  TEXT    NOT NULL,
        position INTEGER NOT NULL,
        name     TEXT    NOT NULL,
        PRIMARY KEY (user, contact, position),
        FOREIGN KEY (user, contact) REFERENCES roster (user, contact) ON DELETE CASCADE
    );

    -- Per-user roster version (XEP-0237), bumped in the same transaction as every roster change.
    CREATE TABLE roster_version (
        user    TEXT    NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL
    );

    CREATE TABLE offline (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        user      TEXT    NOT NULL,
        stanza    BLOB    NOT NULL,
        stored_at INTEGER NOT NULL
    );
    CREATE INDEX offline_user_id ON offline (user, id);

    CREATE TABLE kv (
        user  TEXT NOT NULL,
        store TEXT NOT NULL,
        key   TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (user, store, key)
    );

    -- Small integer settings. 'roster_version_floor' is the highest roster version any deleted
    -- account reached; a fresh per-user counter starts above it, so a re-created account never
    -- reuses a version a client may still have cached.
    CREATE TABLE meta (
        key   TEXT    NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('roster_version_floor', 0);
    ",
    // 2: message archive (XEP-0313) with full-text search over bodies. See archive.rs.
    "
    -- One row per archived message. `seq` orders nothing visible; it is the FTS rowid (AUTOINCREMENT,
    -- so a deleted row's number is never reused by the index). Items are ordered by (ts, id).
    CREATE TABLE archive (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        owner      TEXT    NOT NULL,
        id         TEXT    NOT NULL,
        peer       TEXT    NOT NULL,
        peer_full  TEXT,
        direction  TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
        ts         INTEGER NOT NULL,
        message_id TEXT,
        origin_id  TEXT,
        replaces   TEXT,
        body       TEXT,
        stanza     BLOB    NOT NULL,
        retracted  INTEGER NOT NULL DEFAULT 0,
        dedupe_key TEXT
    );
    CREATE UNIQUE INDEX archive_owner_id ON archive (owner, id);
    CREATE UNIQUE INDEX archive_owner_dedupe ON archive (owner, dedupe_key) WHERE dedupe_key IS NOT NULL;
    CREATE INDEX archive_owner_ts ON archive (owner, ts, id);
    CREATE INDEX archive_owner_peer_ts ON archive (owner, peer, ts, id);
    CREATE INDEX archive_ts ON archive (ts);
    CREATE INDEX archive_message_id ON archive (owner, peer, message_id) WHERE message_id IS NOT NULL;
    CREATE INDEX archive_origin_id ON archive (owner, peer, origin_id) WHERE origin_id IS NOT NULL;
    CREATE INDEX archive_replaces ON archive (owner, peer, replaces) WHERE replaces IS NOT NULL;

    -- External-content FTS5 index over archive.body, kept in step by the triggers below. Every row
    -- is indexed (FTS5 expects that of its content table); a NULL body indexes no words.
    CREATE VIRTUAL TABLE archive_fts USING fts5(
        body, content = 'archive', content_rowid = 'seq', tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER archive_fts_insert AFTER INSERT ON archive BEGIN
        INSERT INTO archive_fts (rowid, body) VALUES (new.seq, new.body);
    END;
    CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive BEGIN
        INSERT INTO archive_fts (archive_fts, rowid, body) VALUES ('delete', old.seq, old.body);
    END;
    CREATE TRIGGER archive_fts_update AFTER UPDATE OF body ON archive BEGIN
        INSERT INTO archive_fts (archive_fts, rowid, body) VALUES ('delete', old.seq, old.body);
        INSERT INTO archive_fts (rowid, body) VALUES (new.seq, new.body);
    END;
    ",
    // 3: archive inserts index their body themselves (archive.rs `insert`): a trigger runs in a
    // statement savepoint, at whose end FTS5 writes its pending terms as a new segment, one per
    // archived message. Updates and deletes keep their triggers (rare, and they need old.body).
    "
    DROP TRIGGER archive_fts_insert;
    ",
];

mod archive;
mod readers;
mod writer;

/// A kabar store in one SQLite database. Cheap to clone (all clones share the connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread's queue ([`writer`]).
    writer: tokio::sync::mpsc::Sender<writer::Job>,
    /// No threads for in-memory databases (a private in-memory database has exactly one
    /// connection); reads then use the writer.
    readers: readers::Readers,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable: an open transaction was rolled
    // back by its Drop (and `writer()` double-checks), so poisoning carries no information here.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Attaches context to rusqlite errors.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| StoreError::Backend(format!("sqlite: {what}: {e}")))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("sqlite: corrupt data: {what}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(&format!("negative {what} {v}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(path, flags)
            .ctx(&format!("opening {}", path.display()))?;
        configure(&writer, true)?;
        migrate(&mut writer)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .ctx(&format!("opening reader for {}", path.display()))?;
            configure(&r, false)?;
            readers.push(r);
        }
        Self::from_parts(writer, readers, Some(path.to_owned()))
    }

    /// A private, empty in-memory database (for tests). Not durable; reads share the writer.
    pub fn open_in_memory() -> Result<Self> {
        let mut conn = Connection::open_in_memory().ctx("opening in-memory database")?;
        configure(&conn, true)?;
        migrate(&mut conn)?;
        Self::from_parts(conn, Vec::new(), None)
    }

    fn from_parts(writer: Connection, readers: Vec<Connection>, path: Option<PathBuf>) -> Result<Self> {
        let writer = writer::spawn(writer)
            .map_err(|e| StoreError::Backend(format!("sqlite: starting the writer thread: {e}")))?;
        let readers = readers::Readers::start(readers)
            .map_err(|e| StoreError::Backend(format!("sqlite: starting the reader threads: {e}")))?;
        Ok(SqliteStore { inner: Arc::new(Inner { writer, readers, path }) })
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The schema version this build creates and understands (the number of migrations).
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// The schema version of the open database (the number of applied migrations).
    pub async fn schema_version(&self) -> Result<u32> {
        self.read(|conn| {
            let v: i64 = conn
                .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))
                .ctx("reading schema version")?;
            u32::try_from(v).map_err(|_| corrupt("schema version out of range"))
        })
        .await
    }

    /// Runs `f` on the writer thread, inside a savepoint of a group-committed transaction; the
    /// result comes back once that transaction is durable.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.write_isolated(writer::Isolation::Savepoint, f).await
    }

    /// [`Self::write`] with the given isolation from the other writes of its batch.
    async fn write_isolated<T, F>(&self, isolation: writer::Isolation, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.enqueue(writer::job(isolation, f, reply)).await?;
        result.await.map_err(|_| writer_gone())?
    }

    /// Hands `job` to the writer thread; when its queue is full, waits (asynchronously: a full
    /// queue is the normal state while the writer is the bottleneck, so waiting must not cost a
    /// blocking-pool thread per write) for room. Waiting senders get room in arrival order.
    async fn enqueue(&self, job: writer::Job) -> Result<()> {
        self.inner.writer.send(job).await.map_err(|_| writer_gone())
    }

    /// Queues `f` for the writer thread without waiting for it to run; returns once it is queued
    /// (waiting for room when the queue is full), so queued writes keep their call order.
    async fn write_queued<F>(&self, isolation: writer::Isolation, f: F) -> Result<()>
    where
        F: FnOnce(&mut Connection) -> Result<()> + Send + 'static,
    {
        self.enqueue(writer::queued_job(isolation, f)).await
    }

    /// Runs `f` on a reader thread's connection (the writer for in-memory stores).
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if self.inner.readers.size() == 0 {
            return self.write(f).await;
        }
        self.inner.readers.read(f).await
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend("sqlite: the writer thread has stopped".into())
}

/// Per-connection settings. `journal_mode` is persistent in the file; the rest is per connection.
fn configure(conn: &Connection, writer: bool) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT).ctx("setting busy_timeout")?;
    conn.pragma_update(None, "foreign_keys", true).ctx("enabling foreign keys")?;
    if writer {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .ctx("enabling WAL")?;
        let is_memory = conn.path().is_none_or(str::is_empty);
        if !is_memory && !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "sqlite: could not enable WAL journal mode (got {mode:?}); is the file on a network filesystem?"
            )));
        }
        // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
        conn.pragma_update(None, "synchronous", "FULL").ctx("setting synchronous=FULL")?;
        // macOS: fsync does not flush the drive cache; F_FULLFSYNC does. No-op elsewhere.
        conn.pragma_update(None, "fullfsync", true).ctx("setting fullfsync")?;
        conn.pragma_update(None, "checkpoint_fullfsync", true).ctx("setting checkpoint_fullfsync")?;
        // The pages every archived message touches (one leaf per index and owner, FTS segments)
        // outgrow the default 2 MiB within seconds of busy chat; misses then cost a read each.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB.saturating_neg()).ctx("setting cache_size")?;
    } else {
        conn.pragma_update(None, "query_only", true).ctx("setting query_only")?;
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting migration")?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER NOT NULL PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .ctx("creating schema_version")?;
    let current: i64 = tx
        .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))
        .ctx("reading schema version")?;
    let current = usize::try_from(current).map_err(|_| corrupt("negative schema version"))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "sqlite: database schema version {current} is newer than this kabar supports ({}); refusing to open",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i + 1;
        tx.execute_batch(sql).ctx(&format!("applying migration {version}"))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![i64::try_from(version).unwrap_or(i64::MAX), now()],
        )
        .ctx(&format!("recording migration {version}"))?;
    }
    tx.commit().ctx("committing migrations")
}

/// A nested unit of a write: on the writer thread every write already runs inside the batch
/// transaction, so multi-statement writes group their statements in a savepoint.
fn immediate(conn: &mut Connection) -> Result<Savepoint<'_>> {
    conn.savepoint().ctx("starting write savepoint")
}

fn is_primary_key_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

// ---------------------------------------------------------------------------------------------
// Accounts

fn scram_from_row(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<(Vec<u8>, i64, Vec<u8>, Vec<u8>)> {
    Ok((row.get(base)?, row.get(base + 1)?, row.get(base + 2)?, row.get(base + 3)?))
}

fn scram(parts: (Vec<u8>, i64, Vec<u8>, Vec<u8>)) -> Result<ScramCredentials> {
    let (salt, iterations, stored_key, server_key) = parts;
    Ok(ScramCredentials {
        salt,
        iterations: u32::try_from(iterations).map_err(|_| corrupt("SCRAM iteration count out of range"))?,
        stored_key,
        server_key,
    })
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, user: &str, creds: &AccountCredentials) -> Result<()> {
        let user = user.to_owned();
        let c = creds.clone();
        self.write(move |conn| {
            let r = conn.execute(
                "INSERT INTO accounts (user,
                    sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                    sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
                    created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    user,
                    c.scram_sha1.salt,
                    c.scram_sha1.iterations,
                    c.scram_sha1.stored_key,
                    c.scram_sha1.server_key,
                    c.scram_sha256.salt,
                    c.scram_sha256.iterations,
                    c.scram_sha256.stored_key,
                    c.scram_sha256.server_key,
                    now(),
                ],
            );
            match r {
                Ok(_) => Ok(()),
                Err(e) if is_primary_key_violation(&e) => Err(StoreError::AlreadyExists),
                Err(e) => Err(e).ctx("create_account"),
            }
        })
        .await
    }

    async fn credentials(&self, user: &str) -> Result<Option<AccountCredentials>> {
        let user = user.to_owned();
        self.read(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                            sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
                     FROM accounts WHERE user = ?1",
                )
                .ctx("credentials")?
                .query_row([&user], |r| Ok((scram_from_row(r, 0)?, scram_from_row(r, 4)?)))
                .optional()
                .ctx("credentials")?;
            match row {
                None => Ok(None),
                Some((sha1, sha256)) => Ok(Some(AccountCredentials {
                    scram_sha1: scram(sha1)?,
                    scram_sha256: scram(sha256)?,
                })),
            }
        })
        .await
    }

    async fn set_credentials(&self, user: &str, creds: &AccountCredentials) -> Result<bool> {
        let user = user.to_owned();
        let c = creds.clone();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE accounts SET
                        sha1_salt = ?2, sha1_iterations = ?3, sha1_stored_key = ?4, sha1_server_key = ?5,
                        sha256_salt = ?6, sha256_iterations = ?7, sha256_stored_key = ?8, sha256_server_key = ?9
                     WHERE user = ?1",
                    params![
                        user,
                        c.scram_sha1.salt,
                        c.scram_sha1.iterations,
                        c.scram_sha1.stored_key,
                        c.scram_sha1.server_key,
                        c.scram_sha256.salt,
                        c.scram_sha256.iterations,
                        c.scram_sha256.stored_key,
                        c.scram_sha256.server_key,
                    ],
                )
                .ctx("set_credentials")?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_account(&self, user: &str) -> Result<bool> {
        let user = user.to_owned();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            // Remember how far this user's roster version got, so a re-created account continues
            // above it (see the `meta` table).
            tx.execute(
                "UPDATE meta SET value = MAX(value, COALESCE(
                     (SELECT version FROM roster_version WHERE user = ?1), 0))
                 WHERE key = 'roster_version_floor'",
                [&user],
            )
            .ctx("delete_account: raising roster version floor")?;
            // roster_groups rows go with their roster rows (ON DELETE CASCADE).
            for (table, sql) in [
                ("roster", "DELETE FROM roster WHERE user = ?1"),
                ("roster_version", "DELETE FROM roster_version WHERE user = ?1"),
                ("offline", "DELETE FROM offline WHERE user = ?1"),
                ("kv", "DELETE FROM kv WHERE user = ?1"),
                // The FTS rows go with them (archive_fts_delete trigger).
                ("archive", "DELETE FROM archive WHERE owner = ?1"),
            ] {
                tx.execute(sql, [&user]).ctx(&format!("delete_account: clearing {table}"))?;
            }
            let n = tx
                .execute("DELETE FROM accounts WHERE user = ?1", [&user])
                .ctx("delete_account: deleting account")?;
            tx.commit().ctx("delete_account: commit")?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT user FROM accounts ORDER BY user").ctx("list_accounts")?;
            let rows = stmt.query_map([], |r| r.get(0)).ctx("list_accounts")?;
            rows.collect::<rusqlite::Result<Vec<String>>>().ctx("list_accounts")
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Roster

/// Current roster version of `user` (0 when the user never had a roster change).
fn roster_version(conn: &Connection, user: &str) -> Result<u64> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT version FROM roster_version WHERE user = ?1")
        .ctx("reading roster version")?
        .query_row([user], |r| r.get(0))
        .optional()
        .ctx("reading roster version")?;
    to_u64(v.unwrap_or(0), "roster version")
}

/// Increments the user's roster version inside `tx` and returns the new value.
fn bump_roster_version(tx: &Connection, user: &str) -> Result<u64> {
    let v: i64 = tx
        .prepare_cached(
            "INSERT INTO roster_version (user, version)
             VALUES (?1, (SELECT value FROM meta WHERE key = 'roster_version_floor') + 1)
             ON CONFLICT (user) DO UPDATE SET version = version + 1
             RETURNING version",
        )
        .ctx("bumping roster version")?
        .query_row([user], |r| r.get(0))
        .ctx("bumping roster version")?;
    to_u64(v, "roster version")
}

type RosterRow = (String, Option<String>, String, bool, bool);

fn roster_item_from(row: RosterRow, groups: Vec<String>) -> Result<RosterItem> {
    let (jid, name, sub, ask, approved) = row;
    let subscription =
        Subscription::parse(&sub).ok_or_else(|| corrupt(&format!("roster subscription {sub:?}")))?;
    Ok(RosterItem {
        jid,
        name,
        subscription,
        ask,
        approved,
        groups,
    })
}

fn load_roster_item(conn: &Connection, user: &str, contact: &str) -> Result<Option<RosterItem>> {
    let row: Option<RosterRow> = conn
        .prepare_cached(
            "SELECT contact, name, subscription, ask, approved FROM roster WHERE user = ?1 AND contact = ?2",
        )
        .ctx("roster_item")?
        .query_row([user, contact], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()
        .ctx("roster_item")?;
    let Some(row) = row else { return Ok(None) };
    let mut stmt = conn
        .prepare_cached("SELECT name FROM roster_groups WHERE user = ?1 AND contact = ?2 ORDER BY position")
        .ctx("roster_item groups")?;
    let groups = stmt
        .query_map([user, contact], |r| r.get(0))
        .ctx("roster_item groups")?
        .collect::<rusqlite::Result<Vec<String>>>()
        .ctx("roster_item groups")?;
    roster_item_from(row, groups).map(Some)
}

#[async_trait]
impl RosterStore for SqliteStore {
    async fn roster(&self, user: &str) -> Result<(Vec<RosterItem>, u64)> {
        let user = user.to_owned();
        self.read(move |conn| {
            // One read transaction: items and version come from the same snapshot.
            let tx = conn.savepoint().ctx("roster: begin")?;
            let rows: Vec<RosterRow> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT contact, name, subscription, ask, approved FROM roster
                         WHERE user = ?1 ORDER BY contact",
                    )
                    .ctx("roster")?;
                let rows = stmt
                    .query_map([&user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .ctx("roster")?;
                rows.collect::<rusqlite::Result<_>>().ctx("roster")?
            };
            let mut groups: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT contact, name FROM roster_groups WHERE user = ?1 ORDER BY contact, position",
                    )
                    .ctx("roster groups")?;
                let rows = stmt.query_map([&user], |r| Ok((r.get(0)?, r.get(1)?))).ctx("roster groups")?;
                rows.collect::<rusqlite::Result<_>>().ctx("roster groups")?
            };
            let version = roster_version(&tx, &user)?;
            tx.finish().ctx("roster: end")?;

            // Both lists are ordered by contact: hand each item its groups.
            groups.reverse();
            let mut items = Vec::with_capacity(rows.len());
            for row in rows {
                let mut item_groups = Vec::new();
                while groups.last().is_some_and(|(c, _)| *c == row.0) {
                    if let Some((_, g)) = groups.pop() {
                        item_groups.push(g);
                    }
                }
                items.push(roster_item_from(row, item_groups)?);
            }
            Ok((items, version))
        })
        .await
    }

    async fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>> {
        let user = user.to_owned();
        let contact = contact.to_owned();
        self.read(move |conn| {
            let tx = conn.savepoint().ctx("roster_item: begin")?;
            let item = load_roster_item(&tx, &user, &contact)?;
            tx.finish().ctx("roster_item: end")?;
            Ok(item)
        })
        .await
    }

    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> Result<u64> {
        let user = user.to_owned();
        let item = item.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            tx.prepare_cached(
                "INSERT INTO roster (user, contact, name, subscription, ask, approved)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user, contact) DO UPDATE SET
                    name = excluded.name, subscription = excluded.subscription,
                    ask = excluded.ask, approved = excluded.approved",
            )
            .ctx("put_roster_item")?
            .execute(params![user, item.jid, item.name, item.subscription.as_str(), item.ask, item.approved])
            .ctx("put_roster_item")?;
            tx.prepare_cached("DELETE FROM roster_groups WHERE user = ?1 AND contact = ?2")
                .ctx("put_roster_item: clearing groups")?
                .execute([&user, &item.jid])
                .ctx("put_roster_item: clearing groups")?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO roster_groups (user, contact, position, name) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .ctx("put_roster_item: groups")?;
                for (position, group) in item.groups.iter().enumerate() {
                    let position = i64::try_from(position).unwrap_or(i64::MAX);
                    insert
                        .execute(params![user, item.jid, position, group])
                        .ctx("put_roster_item: groups")?;
                }
            }
            let version = bump_roster_version(&tx, &user)?;
            tx.commit().ctx("put_roster_item: commit")?;
            Ok(version)
        })
        .await
    }

    async fn remove_roster_item(&self, user: &str, contact: &str) -> Result<Option<u64>> {
        let user = user.to_owned();
        let contact = contact.to_owned();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let n = tx
                .prepare_cached("DELETE FROM roster WHERE user = ?1 AND contact = ?2")
                .ctx("remove_roster_item")?
                .execute([&user, &contact])
                .ctx("remove_roster_item")?;
            if n == 0 {
                // Nothing changed; dropping the transaction rolls it back.
                return Ok(None);
            }
            let version = bump_roster_version(&tx, &user)?;
            tx.commit().ctx("remove_roster_item: commit")?;
            Ok(Some(version))
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Offline messages

#[async_trait]
impl OfflineStore for SqliteStore {
    async fn push_offline(&self, user: &str, stanza: &[u8], limit: usize) -> Result<u64> {
        let user = user.to_owned();
        let stanza = stanza.to_vec();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let held: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM offline WHERE user = ?1")
                .ctx("push_offline: counting")?
                .query_row([&user], |r| r.get(0))
                .ctx("push_offline: counting")?;
            let held = to_u64(held, "offline count")?;
            if held >= u64::try_from(limit).unwrap_or(u64::MAX) {
                return Err(StoreError::QuotaExceeded);
            }
            let id: i64 = tx
                .prepare_cached("INSERT INTO offline (user, stanza, stored_at) VALUES (?1, ?2, ?3) RETURNING id")
                .ctx("push_offline")?
                .query_row(params![user, stanza, now()], |r| r.get(0))
                .ctx("push_offline")?;
            tx.commit().ctx("push_offline: commit")?;
            to_u64(id, "offline id")
        })
        .await
    }

    async fn offline_messages(&self, user: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let user = user.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, stanza FROM offline WHERE user = ?1 ORDER BY id")
                .ctx("offline_messages")?;
            let rows = stmt
                .query_map([&user], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .ctx("offline_messages")?;
            let mut out = Vec::new();
            for row in rows {
                let (id, stanza) = row.ctx("offline_messages")?;
                out.push((to_u64(id, "offline id")?, stanza));
            }
            Ok(out)
        })
        .await
    }

    async fn remove_offline(&self, user: &str, ids: &[u64]) -> Result<()> {
        // Ids beyond i64 were never handed out, so they cannot match anything.
        let ids: Vec<i64> = ids.iter().filter_map(|&id| i64::try_from(id).ok()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let user = user.to_owned();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM offline WHERE user = ?1 AND id = ?2")
                    .ctx("remove_offline")?;
                for id in ids {
                    stmt.execute(params![user, id]).ctx("remove_offline")?;
                }
            }
            tx.commit().ctx("remove_offline: commit")
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Key-value

#[async_trait]
impl KvStore for SqliteStore {
    async fn kv_get(&self, user: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let args = [user.to_owned(), store.to_owned(), key.to_owned()];
        self.read(move |conn| {
            conn.prepare_cached("SELECT value FROM kv WHERE user = ?1 AND store = ?2 AND key = ?3")
                .ctx("kv_get")?
                .query_row(args, |r| r.get(0))
                .optional()
                .ctx("kv_get")
        })
        .await
    }

    async fn kv_put(&self, user: &str, store: &str, key: &str, value: &[u8]) -> Result<()> {
        let (user, store, key, value) = (user.to_owned(), store.to_owned(), key.to_owned(), value.to_vec());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO kv (user, store, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user, store, key) DO UPDATE SET value = excluded.value",
            )
            .ctx("kv_put")?
            .execute(params![user, store, key, value])
            .ctx("kv_put")?;
            Ok(())
        })
        .await
    }

    async fn kv_delete(&self, user: &str, store: &str, key: &str) -> Result<bool> {
        let args = [user.to_owned(), store.to_owned(), key.to_owned()];
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM kv WHERE user = ?1 AND store = ?2 AND key = ?3")
                .ctx("kv_delete")?
                .execute(args)
                .ctx("kv_delete")?;
            Ok(n > 0)
        })
        .await
    }

    async fn kv_list(&self, user: &str, store: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let args = [user.to_owned(), store.to_owned()];
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT key, value FROM kv WHERE user = ?1 AND store = ?2 ORDER BY key")
                .ctx("kv_list")?;
            let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?))).ctx("kv_list")?;
            rows.collect::<rusqlite::Result<_>>().ctx("kv_list")
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_configured_for_durability() {
        let path = std::env::temp_dir().join(format!("kabar-storage-sqlite-unit-{}.db", std::process::id()));
        let store = SqliteStore::open(&path).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let pragmas = rt
            .block_on(store.write(|w| {
                let q = |p: &str| -> Result<String> {
                    w.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, rusqlite::types::Value>(0))
                        .map(|v| format!("{v:?}"))
                        .ctx(p)
                };
                Ok([q("journal_mode")?, q("synchronous")?, q("foreign_keys")?, q("busy_timeout")?])
            }))
            .expect("pragmas");
        assert_eq!(pragmas[0], "Text(\"wal\")");
        assert_eq!(pragmas[1], "Integer(2)", "synchronous=FULL");
        assert_eq!(pragmas[2], "Integer(1)");
        assert_eq!(pragmas[3], "Integer(10000)");
        assert_eq!(store.inner.readers.size(), READERS);
        let query_only = rt
            .block_on(store.inner.readers.each(|r| {
                assert!(r.execute("DELETE FROM kv", []).is_err(), "readers cannot write");
                r.query_row("PRAGMA query_only", [], |r| r.get(0)).ctx("query_only")
            }))
            .expect("reader pragmas");
        assert_eq!(query_only, vec![1; READERS], "readers are query_only");
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}
