//! The shared conformance suite on PostgreSQL, plus PostgreSQL-specific checks.
//!
//! Needs a server: `KABAR_TEST_POSTGRES_URL` (scripts/pg start prints it; scripts/test sets it).
//! Each test works in its own fresh schema, dropped afterwards, so nextest's parallel processes
//! share one database without seeing each other. Without the URL the tests skip (they pass after
//! printing why), unless `KABAR_REQUIRE_POSTGRES=1` (scripts/test sets it): then they fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kabar_storage::{AccountStore, ArchiveStore, KvStore, OfflineStore, SharedStore, StoreError};
use kabar_storage_postgres::{PgOptions, PgStore};

/// The database URL, or `None` to skip (panics when PostgreSQL is required).
fn url() -> Option<String> {
    match std::env::var("KABAR_TEST_POSTGRES_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            if std::env::var("KABAR_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!(
                    "KABAR_REQUIRE_POSTGRES=1 but KABAR_TEST_POSTGRES_URL is not set: start a test cluster with \
                     `eval \"$(scripts/pg start)\"` (scripts/test does this) or point the variable at a database"
                );
            }
            eprintln!("SKIPPED: KABAR_TEST_POSTGRES_URL is not set (see scripts/pg); PostgreSQL tests do nothing");
            None
        }
    }
}

fn fresh_schema_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("kabar_test_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A store in a schema of its own; the schema goes on drop.
struct TempSchema {
    store: Option<PgStore>,
    url: String,
    schema: String,
}

impl TempSchema {
    async fn new(url: String) -> Self {
        Self::with_options(url, PgOptions::default()).await
    }

    async fn with_options(url: String, mut opts: PgOptions) -> Self {
        let schema = fresh_schema_name();
        opts.schema = Some(schema.clone());
        let store = PgStore::open(&url, &opts).await.expect("open PostgreSQL store");
        TempSchema { store: Some(store), url, schema }
    }
}

impl std::ops::Deref for TempSchema {
    type Target = PgStore;
    fn deref(&self) -> &PgStore {
        self.store.as_ref().expect("store is open")
    }
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        drop(self.store.take());
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime: clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                let task = tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
                drop(client);
                let _ = task.await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

mod pg {
    use super::*;
    kabar_storage::conformance_tests!(match url() {
        Some(u) => TempSchema::new(u).await,
        None => return,
    });
}

/// A store seen as the `dyn Store` the server uses, with the schema guard alive beside it.
struct DynFixture {
    store: SharedStore,
    _schema: TempSchema,
}

impl std::ops::Deref for DynFixture {
    type Target = dyn kabar_storage::Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

mod pg_shared_dyn {
    use super::*;
    // On a pool of one connection: every call must give its connection back.
    kabar_storage::conformance_tests!({
        let Some(u) = url() else { return };
        let t = TempSchema::with_options(u, PgOptions { pool_size: 1, ..PgOptions::default() }).await;
        DynFixture { store: Arc::new((*t).clone()), _schema: t }
    });
}

#[tokio::test]
async fn migrations_are_recorded_and_reopening_is_idempotent() {
    let Some(u) = url() else { return };
    let t = TempSchema::new(u.clone()).await;
    assert_eq!(t.schema_version().await.expect("version"), PgStore::SCHEMA_VERSION);
    t.create_account("keep@pg.example", &creds()).await.expect("create");
    t.kv_put("keep@pg.example", "s", "k", b"v").await.expect("kv_put");
    // A second node (or a restart) opening the same schema applies nothing and sees the data.
    let again =
        PgStore::open(&u, &PgOptions { schema: Some(t.schema.clone()), ..PgOptions::default() }).await.expect("reopen");
    assert_eq!(again.schema_version().await.expect("version"), PgStore::SCHEMA_VERSION);
    assert!(again.credentials("keep@pg.example").await.expect("credentials").is_some());
    assert_eq!(again.kv_get("keep@pg.example", "s", "k").await.expect("kv_get").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let Some(u) = url() else { return };
    let schema = fresh_schema_name();
    let opts = PgOptions { schema: Some(schema.clone()), ..PgOptions::default() };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (u, opts) = (u.clone(), opts.clone());
            tokio::spawn(async move { PgStore::open(&u, &opts).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.expect("join").expect("every concurrent open succeeds"));
    }
    let guard = TempSchema { store: Some(stores[0].clone()), url: u, schema };
    let (client, conn) = tokio_postgres::connect(&guard.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let rows = client
        .query(&format!("SELECT version FROM {}.kabar_migrations ORDER BY version", guard.schema), &[])
        .await
        .expect("read migrations");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=PgStore::SCHEMA_VERSION as i32).collect::<Vec<_>>(), "each migration recorded once");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(u) = url() else { return };
    let t = TempSchema::new(u.clone()).await;
    let (client, conn) = tokio_postgres::connect(&u, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
        .execute(&format!("INSERT INTO {}.kabar_migrations (version, applied_at) VALUES (999, 0)", t.schema), &[])
        .await
        .expect("fake a future migration");
    let r = PgStore::open(&u, &PgOptions { schema: Some(t.schema.clone()), ..PgOptions::default() }).await;
    match r {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("newer than this kabar supports"), "{msg}"),
        other => panic!("opening a schema from a newer kabar must fail, got {other:?}"),
    }
}

/// The quota holds under concurrent pushes from many connections (as from several nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_quota_holds_under_concurrent_pushes() {
    let Some(u) = url() else { return };
    let t = TempSchema::with_options(u, PgOptions { pool_size: 8, ..PgOptions::default() }).await;
    let store = (*t).clone();
    let pushes: Vec<_> = (0..40)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.push_offline("race@pg.example", format!("<m n='{i}'/>").as_bytes(), 10).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for p in pushes {
        match p.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::QuotaExceeded) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, refused), (10, 30), "exactly the limit is admitted");
    assert_eq!(store.offline_messages("race@pg.example").await.expect("list").len(), 10);
}

#[tokio::test]
async fn an_unreachable_database_fails_open_with_a_clear_error() {
    // No server needed: a closed loopback port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("postgres://kabar:secret-password@127.0.0.1:{port}/kabar");
    let r = PgStore::open(&url, &PgOptions::default()).await;
    match r {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains(&format!("127.0.0.1:{port}/kabar")), "names the target: {msg}");
            assert!(!msg.contains("secret-password"), "never shows the password: {msg}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

fn creds() -> kabar_storage::AccountCredentials {
    let s = kabar_storage::ScramCredentials {
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 32],
        server_key: vec![3; 32],
    };
    kabar_storage::AccountCredentials { scram_sha1: s.clone(), scram_sha256: s }
}

fn queued_item(id: &str, ts: i64, body: &str) -> kabar_storage::ArchiveItem {
    kabar_storage::ArchiveItem {
        id: id.to_owned(),
        with: "peer@pg.example".to_owned(),
        timestamp: ts,
        body: Some(body.to_owned()),
        stanza: format!("<message id='{id}'/>").into_bytes(),
        ..kabar_storage::ArchiveItem::default()
    }
}

async fn archive_ids(s: &PgStore, owner: &str) -> Vec<String> {
    let q = kabar_storage::ArchiveQuery { max: 100, ..kabar_storage::ArchiveQuery::default() };
    let page = s.archive_query(owner, &q).await.expect("query").expect("no unknown ids");
    page.items.into_iter().map(|i| i.id).collect()
}

/// One batch holds a repeated id and a row PostgreSQL refuses (a NUL in text): the batch fails,
/// is retried, then stored item by item — every good item lands, the repeat stays single.
#[tokio::test]
async fn queued_archive_batch_survives_a_bad_item() {
    let Some(u) = url() else { return };
    let t = TempSchema::new(u).await;
    let owner = "queue@pg.example";
    assert!(t.archive_append(owner, &queued_item("q1", 1, "first"), None).await.expect("append"));
    for item in [
        queued_item("q2", 2, "second"),
        queued_item("q1", 1, "repeated id"),
        queued_item("q3", 3, "bad \0 text"),
        queued_item("q4", 4, "fourth"),
    ] {
        t.archive_append_queued(owner, &item).await.expect("queued");
    }
    t.archive_flush().await.expect("flush");
    assert_eq!(archive_ids(&t, owner).await, ["q1", "q2", "q4"]);
    let q1 = t.archive_get(owner, "q1").await.expect("get").expect("q1");
    assert_eq!(q1.body.as_deref(), Some("first"), "a repeated id changes nothing");
}

/// Many tasks queueing at once: after each task's own flush, its items are all readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_archive_appends_from_many_tasks_are_durable_after_flush() {
    let Some(u) = url() else { return };
    let t = TempSchema::new(u).await;
    let store = (*t).clone();
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let s = store.clone();
            tokio::spawn(async move {
                let owner = format!("q{n}@pg.example");
                for i in 0..100i64 {
                    s.archive_append_queued(&owner, &queued_item(&format!("i{i:03}"), i, "hello"))
                        .await
                        .expect("queued");
                }
                s.archive_flush().await.expect("flush");
                archive_ids(&s, &owner).await.len()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join"), 100);
    }
}
