//! [`ArchiveStore`] on SQLite: the `archive` table (migration 2) with an external-content FTS5
//! index (`archive_fts`) over the searchable body. [`insert`] adds a new row's terms itself
//! (migration 3 dropped the insert trigger, whose statement savepoint made FTS5 write a new index
//! segment for every message); triggers still follow updates and deletes of `body`.
//!
//! Appends and flushes run on the writer without a savepoint of their own
//! ([`crate::writer::Isolation::Atomic`]), so a batch of messages costs one FTS5 segment, written at
//! its COMMIT.
//!
//! Order is `(ts, id)`, served by the indexes `(owner, ts, id)` and `(owner, peer, ts, id)`; cursors
//! and `after_id`/`before_id` are resolved to their `(ts, id)` position and compared as row values.
//! A query reads in one transaction, so its count and page come from the same snapshot.
//!
//! Full-text terms are never handed to FTS5 as syntax: [`fts_query`] reduces the user's text to
//! quoted strings of letters and digits joined with AND, so no input can make a malformed query.

use async_trait::async_trait;
use kabar_storage::{ArchiveCursor, ArchiveItem, ArchivePage, ArchiveQuery, ArchiveStore, Direction, Result, StoreError};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::writer::Isolation;
use crate::{corrupt, immediate, Ctx, SqliteStore};

/// Most items [`ArchiveStore::archive_find_refs`] returns.
const MAX_REFS: i64 = 1000;
/// Rows one retention transaction deletes, so other writers get the lock in between.
const DELETE_BATCH: i64 = 2000;

const COLUMNS: &str = "id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ArchiveItem, String)> {
    let direction: String = r.get(3)?;
    Ok((
        ArchiveItem {
            id: r.get(0)?,
            with: r.get(1)?,
            with_full: r.get(2)?,
            direction: Direction::In,
            timestamp: r.get(4)?,
            message_id: r.get(5)?,
            origin_id: r.get(6)?,
            replaces: r.get(7)?,
            body: r.get(8)?,
            stanza: r.get(9)?,
            retracted: r.get::<_, i64>(10)? != 0,
        },
        direction,
    ))
}

fn finish_item((mut item, direction): (ArchiveItem, String)) -> Result<ArchiveItem> {
    item.direction = Direction::parse(&direction).ok_or_else(|| corrupt("archive direction"))?;
    Ok(item)
}

fn collect_items(
    rows: impl Iterator<Item = rusqlite::Result<(ArchiveItem, String)>>,
    what: &str,
) -> Result<Vec<ArchiveItem>> {
    let mut out = Vec::new();
    for row in rows {
        out.push(finish_item(row.ctx(what)?)?);
    }
    Ok(out)
}

/// The `(ts, id)` position of `id` in `owner`'s archive.
fn position(conn: &Connection, owner: &str, id: &str) -> Result<Option<(i64, String)>> {
    conn.prepare_cached("SELECT ts FROM archive WHERE owner = ?1 AND id = ?2")
        .ctx("archive: resolving id")?
        .query_row(params![owner, id], |r| r.get::<_, i64>(0))
        .optional()
        .ctx("archive: resolving id")
        .map(|ts| ts.map(|ts| (ts, id.to_owned())))
}

/// Turns the user's search text into an FTS5 query, or `None` when it has no usable term.
///
/// Terms: `"a phrase"` in double quotes, otherwise whitespace-separated words; a word ending in
/// `*` is a prefix. Inside a term only letters and digits count (anything else separates words,
/// as the unicode61 tokenizer does), so each term becomes a quoted FTS5 string holding nothing but
/// alphanumerics and spaces, and the terms are joined with AND.
pub(crate) fn fts_query(text: &str) -> Option<String> {
    fn words(s: &str) -> String {
        s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
    }
    let mut terms = Vec::new();
    for term in kabar_storage::search_terms(text) {
        let w = words(term.text);
        if w.is_empty() {
            continue;
        }
        terms.push(if term.prefix { format!("\"{w}\"*") } else { format!("\"{w}\"") });
    }
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" AND "))
    }
}

fn run_query(conn: &mut Connection, owner: &str, q: &ArchiveQuery) -> Result<Option<ArchivePage>> {
    let tx = conn.savepoint().ctx("archive_query: begin")?;
    let mut filter = String::from("owner = ?");
    let mut args: Vec<Value> = vec![Value::Text(owner.to_owned())];

    if let Some(with) = &q.with {
        filter.push_str(if with.contains('/') { " AND peer_full = ?" } else { " AND peer = ?" });
        args.push(Value::Text(with.clone()));
    }
    if let Some(start) = q.start {
        filter.push_str(" AND ts >= ?");
        args.push(Value::Integer(start));
    }
    if let Some(end) = q.end {
        filter.push_str(" AND ts <= ?");
        args.push(Value::Integer(end));
    }
    if let Some(after) = &q.after_id {
        let Some((ts, id)) = position(&tx, owner, after)? else { return Ok(None) };
        filter.push_str(" AND (ts, id) > (?, ?)");
        args.extend([Value::Integer(ts), Value::Text(id)]);
    }
    if let Some(before) = &q.before_id {
        let Some((ts, id)) = position(&tx, owner, before)? else { return Ok(None) };
        filter.push_str(" AND (ts, id) < (?, ?)");
        args.extend([Value::Integer(ts), Value::Text(id)]);
    }
    if let Some(ids) = &q.ids {
        for id in ids {
            if position(&tx, owner, id)?.is_none() {
                return Ok(None);
            }
        }
        if ids.is_empty() {
            filter.push_str(" AND 0");
        } else {
            filter.push_str(" AND id IN (");
            filter.push_str(&vec!["?"; ids.len()].join(", "));
            filter.push(')');
            args.extend(ids.iter().map(|i| Value::Text(i.clone())));
        }
    }
    // Cursor ids must exist even when the text matches nothing.
    let cursor = match &q.cursor {
        ArchiveCursor::After(id) | ArchiveCursor::Before(id) => match position(&tx, owner, id)? {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        ArchiveCursor::Start | ArchiveCursor::End => None,
    };
    if let Some(text) = &q.text {
        let Some(fts) = fts_query(text) else {
            return Ok(Some(ArchivePage { items: Vec::new(), complete: true, count: 0 }));
        };
        filter.push_str(" AND seq IN (SELECT rowid FROM archive_fts WHERE archive_fts MATCH ?)");
        args.push(Value::Text(fts));
    }

    let count: i64 = tx
        .prepare(&format!("SELECT COUNT(*) FROM archive WHERE {filter}"))
        .ctx("archive_query: count")?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))
        .ctx("archive_query: count")?;
    let count = u64::try_from(count).map_err(|_| corrupt("negative archive count"))?;

    let backward = matches!(q.cursor, ArchiveCursor::End | ArchiveCursor::Before(_));
    let mut page_filter = filter;
    let mut page_args = args;
    if let Some((ts, id)) = cursor {
        page_filter.push_str(if backward { " AND (ts, id) < (?, ?)" } else { " AND (ts, id) > (?, ?)" });
        page_args.extend([Value::Integer(ts), Value::Text(id)]);
    }
    let order = if backward { "ts DESC, id DESC" } else { "ts, id" };
    let limit = i64::try_from(q.max).unwrap_or(i64::MAX - 1).saturating_add(1);
    page_args.push(Value::Integer(limit));
    let mut items = {
        let mut stmt = tx
            .prepare(&format!("SELECT {COLUMNS} FROM archive WHERE {page_filter} ORDER BY {order} LIMIT ?"))
            .ctx("archive_query: page")?;
        let rows = stmt.query_map(params_from_iter(page_args.iter()), item_from_row).ctx("archive_query: page")?;
        collect_items(rows, "archive_query: page")?
    };
    let complete = items.len() <= q.max;
    items.truncate(q.max);
    if backward {
        items.reverse();
    }
    Ok(Some(ArchivePage { items, complete, count }))
}

/// Inserts one row and its index terms; `Ok(0)` when the id (or dedupe key) is taken. When the
/// second statement fails the first has changed the database: the caller's savepoint, or the
/// writer's batch rollback for [`crate::writer::Isolation::Atomic`] writes, takes it back.
fn insert(conn: &Connection, owner: &str, item: &ArchiveItem, dedupe_key: Option<&str>) -> Result<usize> {
    let n = conn.prepare_cached(
        "INSERT INTO archive (owner, id, peer, peer_full, direction, ts, message_id, origin_id,
                              replaces, body, stanza, retracted, dedupe_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT DO NOTHING",
    )
    .ctx("archive_append")?
    .execute(params![
        owner,
        item.id,
        item.with,
        item.with_full,
        item.direction.as_str(),
        item.timestamp,
        item.message_id,
        item.origin_id,
        item.replaces,
        item.body,
        item.stanza,
        i64::from(item.retracted),
        dedupe_key,
    ])
    .ctx("archive_append")?;
    // Every row gets an entry, NULL bodies too: FTS5's integrity check expects one per content row.
    if n == 1 {
        let body = &item.body;
        conn.prepare_cached("INSERT INTO archive_fts (rowid, body) VALUES (?1, ?2)")
            .ctx("archive_append: index")?
            .execute(params![conn.last_insert_rowid(), body])
            .ctx("archive_append: index")?;
    }
    Ok(n)
}

#[async_trait]
impl ArchiveStore for SqliteStore {
    async fn archive_append(&self, owner: &str, item: &ArchiveItem, dedupe_key: Option<&str>) -> Result<bool> {
        let owner = owner.to_owned();
        let item = item.clone();
        let dedupe_key = dedupe_key.map(str::to_owned);
        self.write_isolated(Isolation::Atomic, move |conn| {
            let n = insert(conn, &owner, &item, dedupe_key.as_deref())?;
            Ok(n > 0)
        })
        .await
    }

    async fn archive_append_queued(&self, owner: &str, item: &ArchiveItem) -> Result<()> {
        let owner = owner.to_owned();
        let item = item.clone();
        self.write_queued(Isolation::Atomic, move |conn| {
            let n = insert(conn, &owner, &item, None)?;
            if n == 0 {
                return Err(StoreError::Backend(format!("sqlite: archive id {} of {owner} is taken", item.id)));
            }
            Ok(())
        })
        .await
    }

    async fn archive_flush(&self) -> Result<()> {
        self.write_isolated(Isolation::Atomic, |_| Ok(())).await
    }

    async fn archive_get(&self, owner: &str, id: &str) -> Result<Option<ArchiveItem>> {
        let args = [owner.to_owned(), id.to_owned()];
        self.read(move |conn| {
            let row = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM archive WHERE owner = ?1 AND id = ?2"))
                .ctx("archive_get")?
                .query_row(args, item_from_row)
                .optional()
                .ctx("archive_get")?;
            row.map(finish_item).transpose()
        })
        .await
    }

    async fn archive_query(&self, owner: &str, query: &ArchiveQuery) -> Result<Option<ArchivePage>> {
        let owner = owner.to_owned();
        let query = query.clone();
        self.read(move |conn| run_query(conn, &owner, &query)).await
    }

    async fn archive_find_refs(
        &self,
        owner: &str,
        with: &str,
        direction: Direction,
        message_ref: &str,
    ) -> Result<Vec<ArchiveItem>> {
        let args = (owner.to_owned(), with.to_owned(), direction.as_str(), message_ref.to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM archive
                     WHERE owner = ?1 AND peer = ?2 AND direction = ?3
                       AND (message_id = ?4 OR origin_id = ?4 OR replaces = ?4)
                     ORDER BY ts, id LIMIT ?5"
                ))
                .ctx("archive_find_refs")?;
            let rows = stmt
                .query_map(params![args.0, args.1, args.2, args.3, MAX_REFS], item_from_row)
                .ctx("archive_find_refs")?;
            collect_items(rows, "archive_find_refs")
        })
        .await
    }

    async fn archive_edit(&self, owner: &str, id: &str, body: Option<&str>, stanza: &[u8]) -> Result<bool> {
        let (owner, id, body, stanza) = (owner.to_owned(), id.to_owned(), body.map(str::to_owned), stanza.to_vec());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE archive SET body = ?3, stanza = ?4 WHERE owner = ?1 AND id = ?2 AND retracted = 0",
                )
                .ctx("archive_edit")?
                .execute(params![owner, id, body, stanza])
                .ctx("archive_edit")?;
            Ok(n > 0)
        })
        .await
    }

    async fn archive_retract(&self, owner: &str, id: &str, tombstone: &[u8]) -> Result<bool> {
        let (owner, id, tombstone) = (owner.to_owned(), id.to_owned(), tombstone.to_vec());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE archive SET body = NULL, stanza = ?3, retracted = 1 WHERE owner = ?1 AND id = ?2",
                )
                .ctx("archive_retract")?
                .execute(params![owner, id, tombstone])
                .ctx("archive_retract")?;
            Ok(n > 0)
        })
        .await
    }

    async fn archive_delete_all(&self, owner: &str) -> Result<u64> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let n = tx.execute("DELETE FROM archive WHERE owner = ?1", [&owner]).ctx("archive_delete_all")?;
            tx.commit().ctx("archive_delete_all: commit")?;
            Ok(n as u64)
        })
        .await
    }

    async fn archive_delete_before(&self, timestamp: i64) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self
                .write(move |conn| {
                    let tx = immediate(conn)?;
                    let n = tx
                        .execute(
                            "DELETE FROM archive WHERE seq IN
                                (SELECT seq FROM archive WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                            params![timestamp, DELETE_BATCH],
                        )
                        .ctx("archive_delete_before")?;
                    tx.commit().ctx("archive_delete_before: commit")?;
                    Ok(n)
                })
                .await?;
            total += n as u64;
            if i64::try_from(n).unwrap_or(i64::MAX) < DELETE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// Whether the linked SQLite has FTS5 (the archive's migration needs it).
#[cfg(test)]
fn has_fts5(conn: &Connection) -> bool {
    conn.query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| r.get::<_, i64>(0))
        .map(|v| v == 1)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_every_term() {
        assert_eq!(fts_query("hello world").as_deref(), Some("\"hello\" AND \"world\""));
        assert_eq!(fts_query("  Hello  ").as_deref(), Some("\"Hello\""));
        assert_eq!(fts_query("wor*").as_deref(), Some("\"wor\"*"));
        assert_eq!(fts_query("\"good morning\" sun").as_deref(), Some("\"good morning\" AND \"sun\""));
        assert_eq!(fts_query("don't").as_deref(), Some("\"don t\""));
        assert_eq!(fts_query("\"unterminated phrase").as_deref(), Some("\"unterminated phrase\""));
        assert_eq!(fts_query("a\"b").as_deref(), Some("\"a b\""));
        assert_eq!(
            fts_query("NEAR(x y) OR -z ^w col:v").as_deref(),
            Some("\"NEAR x\" AND \"y\" AND \"OR\" AND \"z\" AND \"w\" AND \"col v\"")
        );
        assert_eq!(fts_query("*"), None);
        assert_eq!(fts_query("\"\" ** !!! ..."), None);
        assert_eq!(fts_query(""), None);
        assert_eq!(fts_query("Ünïcødé 日本語").as_deref(), Some("\"Ünïcødé\" AND \"日本語\""));
    }

    #[test]
    fn bundled_sqlite_has_fts5() {
        let conn = Connection::open_in_memory().expect("open");
        assert!(has_fts5(&conn), "rusqlite's bundled SQLite must be built with FTS5");
    }
}
