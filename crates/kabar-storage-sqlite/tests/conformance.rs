//! The shared conformance suite on in-memory and file databases, plus SQLite-specific checks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kabar_storage::{AccountCredentials, RosterItem, ScramCredentials, SharedStore, Subscription};
use kabar_storage_sqlite::SqliteStore;

/// A store on a fresh file under the temp dir; the database and its WAL files go on drop.
struct TempDb {
    store: Option<SqliteStore>,
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kabar-storage-sqlite-test-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        remove_db_files(&path);
        let store = SqliteStore::open(&path).expect("open temp database");
        TempDb { store: Some(store), path }
    }

    fn store(&self) -> &SqliteStore {
        self.store.as_ref().expect("store is open")
    }

    /// Closes the store (all clones must be gone) and opens the same file again.
    fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(SqliteStore::open(&self.path).expect("reopen temp database"));
    }
}

impl std::ops::Deref for TempDb {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        self.store()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        drop(self.store.take());
        remove_db_files(&self.path);
    }
}

fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

mod in_memory {
    use super::*;
    kabar_storage::conformance_tests!(Box::new(SqliteStore::open_in_memory().expect("open in-memory store")));
}

mod file {
    use super::*;
    kabar_storage::conformance_tests!(TempDb::new());
}

mod shared_dyn {
    use super::*;
    // Through the `dyn Store` the server uses.
    kabar_storage::conformance_tests!({
        let s: SharedStore = Arc::new(SqliteStore::open_in_memory().expect("open in-memory store"));
        s
    });
}

#[tokio::test]
async fn run_all_in_memory() {
    let s = SqliteStore::open_in_memory().expect("open");
    kabar_storage::conformance::run_all(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_file() {
    let db = TempDb::new();
    kabar_storage::conformance::run_all(db.store()).await;
}

fn creds(n: u8) -> AccountCredentials {
    let c = ScramCredentials {
        salt: vec![n; 16],
        iterations: 4096,
        stored_key: vec![n; 20],
        server_key: vec![n ^ 1; 20],
    };
    AccountCredentials {
        scram_sha1: c.clone(),
        scram_sha256: ScramCredentials {
            stored_key: vec![n; 32],
            server_key: vec![n ^ 1; 32],
            ..c
        },
    }
}

#[tokio::test]
async fn data_persists_across_reopen() {
    use kabar_storage::{AccountStore, KvStore, OfflineStore, RosterStore};
    let mut db = TempDb::new();
    let u = "persist@example.org";
    let item = RosterItem {
        jid: "friend@example.org".into(),
        name: Some("Friend ✓".into()),
        subscription: Subscription::Both,
        ask: false,
        approved: true,
        groups: vec!["B".into(), "A".into()],
    };
    db.create_account(u, &creds(9)).await.expect("create");
    let version = db.put_roster_item(u, &item).await.expect("put roster");
    let id = db.push_offline(u, b"<message/>", 10).await.expect("push");
    db.kv_put(u, "vcard", "", b"\x00\x01vcard").await.expect("kv_put");
    assert_eq!(db.schema_version().await.expect("schema version"), SqliteStore::SCHEMA_VERSION);

    db.reopen();

    assert_eq!(db.credentials(u).await.expect("credentials"), Some(creds(9)), "account survives");
    assert_eq!(db.roster(u).await.expect("roster"), (vec![item], version), "roster and version survive");
    assert_eq!(
        db.offline_messages(u).await.expect("offline"),
        vec![(id, b"<message/>".to_vec())],
        "offline queue survives"
    );
    assert_eq!(db.kv_get(u, "vcard", "").await.expect("kv_get").as_deref(), Some(&b"\x00\x01vcard"[..]));
    assert_eq!(
        db.schema_version().await.expect("schema version"),
        SqliteStore::SCHEMA_VERSION,
        "reopen applies no migration twice"
    );
    let next = db.push_offline(u, b"<later/>", 10).await.expect("push after reopen");
    assert!(next > id, "offline ids continue after reopen");
    let v2 = db.remove_roster_item(u, "friend@example.org").await.expect("remove").expect("existed");
    assert!(v2 > version, "roster version continues after reopen");
}

#[tokio::test]
async fn file_is_in_wal_mode() {
    let db = TempDb::new();
    drop(db.store().clone()); // clones share the connections
    let wal = {
        let mut p = db.path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    };
    use kabar_storage::KvStore;
    db.kv_put("wal@example.org", "s", "k", b"v").await.expect("kv_put");
    assert!(wal.exists(), "a write to a file store goes through the WAL ({})", wal.display());
}

#[tokio::test]
async fn refuses_newer_schema() {
    let db = TempDb::new();
    {
        // A later kabar applied migration 999.
        let conn = rusqlite::Connection::open(&db.path).expect("raw open");
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 0)", [])
            .expect("record future migration");
    }
    let err = SqliteStore::open(&db.path).expect_err("opening a newer schema must fail");
    assert!(err.to_string().contains("newer"), "error explains the version problem: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_offline_pushes_all_land() {
    concurrent_pushes(SqliteStore::open_in_memory().expect("open")).await;
    let db = TempDb::new();
    concurrent_pushes(db.store().clone()).await;
}

async fn concurrent_pushes(store: SqliteStore) {
    use kabar_storage::{KvStore, OfflineStore};
    const TASKS: usize = 20;
    const PER_TASK: usize = 10;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_TASK {
                let user = format!("user{}@example.org", (t + i) % 3);
                let stanza = format!("<message task='{t}' n='{i}'/>");
                ids.push(s.push_offline(&user, stanza.as_bytes(), 10_000).await.expect("push"));
                // Interleave reads so readers and the writer run at the same time.
                s.kv_put(&user, "count", &format!("{t}-{i}"), b"").await.expect("kv_put");
                let _ = s.offline_messages(&user).await.expect("read");
            }
            ids
        }));
    }
    let mut all_ids = Vec::new();
    for h in handles {
        all_ids.extend(h.await.expect("task"));
    }
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), TASKS * PER_TASK, "every push got a distinct id");

    let mut stored = Vec::new();
    for u in 0..3 {
        let user = format!("user{u}@example.org");
        let msgs = store.offline_messages(&user).await.expect("offline");
        assert!(msgs.windows(2).all(|w| w[0].0 < w[1].0), "each queue is in id order");
        // Within one task, pushes for the same user keep their order.
        for t in 0..TASKS {
            let prefix = format!("<message task='{t}' ");
            let ns: Vec<usize> = msgs
                .iter()
                .filter_map(|(_, st)| std::str::from_utf8(st).ok())
                .filter(|st| st.starts_with(&prefix))
                .filter_map(|st| st.split("n='").nth(1)?.split('\'').next()?.parse().ok())
                .collect();
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "per-task order kept for {user}: {ns:?}");
        }
        stored.extend(msgs.into_iter().map(|(id, _)| id));
        assert_eq!(store.kv_list(&user, "count").await.expect("kv_list").len(), msgs_for(u, TASKS, PER_TASK));
    }
    stored.sort_unstable();
    assert_eq!(stored, all_ids, "exactly the acknowledged messages are stored");
}

fn msgs_for(u: usize, tasks: usize, per_task: usize) -> usize {
    (0..tasks).flat_map(|t| (0..per_task).map(move |i| (t + i) % 3)).filter(|&x| x == u).count()
}

/// The external-content FTS index matches the archive table after every kind of change, and the
/// archive survives a reopen.
#[tokio::test]
async fn archive_fts_index_consistent_and_durable() {
    use kabar_storage::{AccountStore, ArchiveItem, ArchiveQuery, ArchiveStore, Direction};
    let mut db = TempDb::new();
    let owner = "fts@example.org";
    db.create_account(owner, &creds(3)).await.expect("create");
    let item = |n: i64, body: Option<&str>| ArchiveItem {
        id: format!("id{n:03}"),
        with: "peer@example.org".into(),
        direction: if n % 2 == 0 { Direction::In } else { Direction::Out },
        timestamp: 1_000_000 * n,
        body: body.map(str::to_owned),
        stanza: format!("<message n='{n}'/>").into_bytes(),
        ..ArchiveItem::default()
    };
    for n in 0..200 {
        let body = (n % 7 != 0).then(|| format!("word{} common text {n}", n % 5));
        assert!(db.archive_append(owner, &item(n, body.as_deref()), None).await.expect("append"));
        db.archive_append("other@example.org", &item(n, Some("other common")), None).await.expect("append");
    }
    for n in (0..200).step_by(3) {
        db.archive_edit(owner, &format!("id{n:03}"), (n % 2 == 0).then_some("edited common"), b"<e/>")
            .await
            .expect("edit");
    }
    for n in (0..200).step_by(11) {
        db.archive_retract(owner, &format!("id{n:03}"), b"<t/>").await.expect("retract");
    }
    assert_eq!(db.archive_delete_before(20_000_000).await.expect("retention"), 40);
    let check = |path: &Path| {
        let conn = rusqlite::Connection::open(path).expect("raw open");
        conn.execute("INSERT INTO archive_fts (archive_fts, rank) VALUES ('integrity-check', 1)", [])
            .expect("FTS index matches the archive table");
        let indexed: i64 = conn
            .query_row("SELECT COUNT(*) FROM archive_fts WHERE archive_fts MATCH 'common'", [], |r| r.get(0))
            .expect("fts count");
        let expected: i64 =
            conn.query_row("SELECT COUNT(*) FROM archive WHERE body LIKE '%common%'", [], |r| r.get(0)).expect("count");
        assert_eq!(indexed, expected, "every searchable body is indexed, and nothing else");
    };
    check(&db.path);
    let q = ArchiveQuery { text: Some("common".into()), max: 1000, ..ArchiveQuery::default() };
    let before = db.archive_query(owner, &q).await.expect("query").expect("page");
    db.reopen();
    let after = db.archive_query(owner, &q).await.expect("query").expect("page");
    assert_eq!(before, after, "archive and index survive a reopen");
    assert!(after.count > 50, "{}", after.count);

    assert!(db.delete_account(owner).await.expect("delete"));
    check(&db.path);
    assert_eq!(db.archive_query(owner, &q).await.expect("query").expect("page").count, 0);
    assert_eq!(
        db.archive_query("other@example.org", &q).await.expect("query").expect("page").count,
        180,
        "the other archive keeps its items (200 minus the 20 retention took from it)"
    );
}

/// Queries use the archive indexes, not a scan of every owner's rows.
/// Live chat's archive writes (queued appends from many tasks at once, committed in shared batches
/// without a savepoint each, interleaved with awaited appends whose id is already taken) index every
/// searchable body exactly once: FTS5's integrity check passes, before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_batched_appends_index_every_body_once() {
    use kabar_storage::{ArchiveItem, ArchiveQuery, ArchiveStore, Direction};
    let mut db = TempDb::new();
    let item = |t: usize, n: usize| ArchiveItem {
        id: format!("t{t}-{n:03}"),
        with: "peer@example.org".into(),
        direction: Direction::In,
        timestamp: i64::try_from(t * 1000 + n).expect("small"),
        // Every fifth message has no searchable text (a retraction's fallback, a bare receipt).
        body: (!n.is_multiple_of(5)).then(|| format!("batched common word{t}")),
        stanza: format!("<message n='{n}'/>").into_bytes(),
        ..ArchiveItem::default()
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = db.store().clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("owner{}@example.org", t % 2);
            for n in 0..100 {
                s.archive_append_queued(&owner, &item(t, n)).await.expect("queued");
                if n % 10 == 9 {
                    // Same owner, same id: refused, and must leave no index entry behind.
                    let taken = s.archive_append(&owner, &item(t, n), None).await.expect("append");
                    assert!(!taken, "id {} was already stored", item(t, n).id);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    db.archive_flush().await.expect("flush");
    let check = |path: &Path| {
        let conn = rusqlite::Connection::open(path).expect("raw open");
        conn.execute("INSERT INTO archive_fts (archive_fts, rank) VALUES ('integrity-check', 1)", [])
            .expect("FTS index matches the archive table");
        let indexed: i64 = conn
            .query_row("SELECT COUNT(*) FROM archive_fts WHERE archive_fts MATCH 'common'", [], |r| r.get(0))
            .expect("fts count");
        assert_eq!(indexed, 8 * 80, "every searchable body indexed once");
    };
    check(&db.path);
    let q = ArchiveQuery { text: Some("word3".into()), max: 1000, ..ArchiveQuery::default() };
    let page = db.archive_query("owner1@example.org", &q).await.expect("query").expect("page");
    assert_eq!(page.count, 80);
    db.reopen();
    check(&db.path);
}

#[tokio::test]
async fn archive_queries_use_indexes() {
    let db = TempDb::new();
    let conn = rusqlite::Connection::open(&db.path).expect("raw open");
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).expect("plan");
        rows.map(|r| r.expect("row")).collect::<Vec<_>>().join(" | ")
    };
    for (sql, index) in [
        (
            "SELECT * FROM archive WHERE owner = 'a' AND (ts, id) > (1, 'x') ORDER BY ts, id LIMIT 11",
            "archive_owner_ts",
        ),
        ("SELECT * FROM archive WHERE owner = 'a' ORDER BY ts DESC, id DESC LIMIT 11", "archive_owner_ts"),
        ("SELECT * FROM archive WHERE owner = 'a' AND peer = 'b' ORDER BY ts, id LIMIT 11", "archive_owner_peer_ts"),
        ("SELECT ts FROM archive WHERE owner = 'a' AND id = 'x'", "archive_owner_id"),
        ("SELECT seq FROM archive WHERE ts < 5 ORDER BY ts LIMIT 10", "archive_ts"),
    ] {
        let p = plan(sql);
        assert!(p.contains(index), "{sql}\n  plan: {p}");
        assert!(!p.contains("TEMP B-TREE"), "no sort step: {sql}\n  plan: {p}");
    }
}

/// Group commit: concurrent writes share transactions, yet each keeps its own outcome. Here many
/// tasks create accounts at once and half of them collide on a name: every collision fails alone
/// with `AlreadyExists`, every other account is created, and all of it is on disk after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_isolates_failed_writes_from_their_batch() {
    use kabar_storage::{AccountStore, StoreError};
    let mut db = TempDb::new();
    const N: u8 = 200;
    let mut handles = Vec::new();
    for n in 0..N {
        let s = db.store().clone();
        handles.push(tokio::spawn(async move {
            // Even n and n+1 share a name, so one of each pair must fail.
            let user = format!("user{}@example.org", n / 2);
            (n, s.create_account(&user, &creds(n)).await)
        }));
    }
    let mut created = 0;
    let mut collided = 0;
    for h in handles {
        match h.await.expect("task").1 {
            Ok(()) => created += 1,
            Err(StoreError::AlreadyExists) => collided += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((created, collided), (usize::from(N / 2), usize::from(N / 2)));
    db.reopen();
    for u in 0..N / 2 {
        let user = format!("user{u}@example.org");
        assert!(db.store().credentials(&user).await.expect("read").is_some(), "{user} is on disk");
    }
}
