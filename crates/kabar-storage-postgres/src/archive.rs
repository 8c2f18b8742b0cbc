//! [`ArchiveStore`] on PostgreSQL: the `archive` table (migration 2) with a GIN-indexed `tsvector`
//! over the searchable body (see search.rs).
//!
//! Order is `(ts, id)`, served by the indexes `(owner, ts, id)` and `(owner, peer, ts, id)`; cursors
//! and `after_id`/`before_id` are resolved to their `(ts, id)` position and compared as row values,
//! which a btree index answers as one range scan. A query reads in one REPEATABLE READ snapshot, so
//! its count and page agree. docs/STORAGE.md shows the plans.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use kabar_storage::{ArchiveCursor, ArchiveItem, ArchivePage, ArchiveQuery, ArchiveStore, Direction, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use crate::search::{index_text, tsquery};
use crate::{corrupt, Ctx, PgStore};

/// Most items [`ArchiveStore::archive_find_refs`] returns.
const MAX_REFS: i64 = 1000;
/// Rows one retention transaction deletes, so no transaction grows without bound.
const DELETE_BATCH: i64 = 2000;

const COLUMNS: &str = "id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted";

fn item_from(row: &tokio_postgres::Row) -> Result<ArchiveItem> {
    let what = "archive: reading item";
    let direction: String = row.try_get(3).ctx(what)?;
    Ok(ArchiveItem {
        id: row.try_get(0).ctx(what)?,
        with: row.try_get(1).ctx(what)?,
        with_full: row.try_get(2).ctx(what)?,
        direction: Direction::parse(&direction).ok_or_else(|| corrupt("archive direction"))?,
        timestamp: row.try_get(4).ctx(what)?,
        message_id: row.try_get(5).ctx(what)?,
        origin_id: row.try_get(6).ctx(what)?,
        replaces: row.try_get(7).ctx(what)?,
        body: row.try_get(8).ctx(what)?,
        stanza: row.try_get(9).ctx(what)?,
        retracted: row.try_get(10).ctx(what)?,
    })
}

/// A WHERE clause under construction with its bind parameters (`$1`, `$2`, … in push order).
#[derive(Default)]
struct Filter {
    sql: String,
    args: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Filter {
    /// Adds a parameter and returns its placeholder.
    fn arg<T: ToSql + Sync + Send + 'static>(&mut self, v: T) -> String {
        self.args.push(Box::new(v));
        format!("${}", self.args.len())
    }

    fn and(&mut self, clause: &str) {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
        self.sql.push_str(clause);
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// The `(ts, id)` position of `id` in `owner`'s archive.
async fn position(tx: &tokio_postgres::Transaction<'_>, owner: &str, id: &str) -> Result<Option<(i64, String)>> {
    let row = tx
        .query_opt("SELECT ts FROM archive WHERE owner = $1 AND id = $2", &[&owner, &id])
        .await
        .ctx("archive: resolving id")?;
    row.map(|r| r.try_get::<_, i64>(0).ctx("archive: resolving id").map(|ts| (ts, id.to_owned()))).transpose()
}

async fn run_query(tx: &tokio_postgres::Transaction<'_>, owner: &str, q: &ArchiveQuery) -> Result<Option<ArchivePage>> {
    let mut f = Filter::default();
    let p = f.arg(owner.to_owned());
    f.and(&format!("owner = {p}"));

    if let Some(with) = &q.with {
        match with.split_once('/') {
            Some((bare, _)) => {
                // The bare part too, so the (owner, peer, ts, id) index serves full-JID queries.
                let (b, full) = (f.arg(bare.to_owned()), f.arg(with.clone()));
                f.and(&format!("peer = {b} AND peer_full = {full}"));
            }
            None => {
                let b = f.arg(with.clone());
                f.and(&format!("peer = {b}"));
            }
        }
    }
    if let Some(start) = q.start {
        let p = f.arg(start);
        f.and(&format!("ts >= {p}"));
    }
    if let Some(end) = q.end {
        let p = f.arg(end);
        f.and(&format!("ts <= {p}"));
    }
    if let Some(after) = &q.after_id {
        let Some((ts, id)) = position(tx, owner, after).await? else { return Ok(None) };
        let (a, b) = (f.arg(ts), f.arg(id));
        f.and(&format!("(ts, id) > ({a}, {b})"));
    }
    if let Some(before) = &q.before_id {
        let Some((ts, id)) = position(tx, owner, before).await? else { return Ok(None) };
        let (a, b) = (f.arg(ts), f.arg(id));
        f.and(&format!("(ts, id) < ({a}, {b})"));
    }
    if let Some(ids) = &q.ids {
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        let found: i64 = tx
            .query_one("SELECT COUNT(*) FROM archive WHERE owner = $1 AND id = ANY($2)", &[&owner, &distinct])
            .await
            .ctx("archive_query: resolving ids")?
            .try_get(0)
            .ctx("archive_query: resolving ids")?;
        if usize::try_from(found).ok() != Some(distinct.len()) {
            return Ok(None);
        }
        let p = f.arg(distinct);
        f.and(&format!("id = ANY({p})"));
    }
    // Cursor ids must exist even when the text matches nothing.
    let cursor = match &q.cursor {
        ArchiveCursor::After(id) | ArchiveCursor::Before(id) => match position(tx, owner, id).await? {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        ArchiveCursor::Start | ArchiveCursor::End => None,
    };
    if let Some(text) = &q.text {
        let Some(query) = tsquery(text) else {
            return Ok(Some(ArchivePage { items: Vec::new(), complete: true, count: 0 }));
        };
        let p = f.arg(query);
        f.and(&format!("search @@ to_tsquery('simple', {p}::TEXT)"));
    }

    let count: i64 = tx
        .query_one(&format!("SELECT COUNT(*) FROM archive WHERE {}", f.sql), &f.params())
        .await
        .ctx("archive_query: count")?
        .try_get(0)
        .ctx("archive_query: count")?;
    let count = u64::try_from(count).map_err(|_| corrupt("negative archive count"))?;

    let backward = matches!(q.cursor, ArchiveCursor::End | ArchiveCursor::Before(_));
    if let Some((ts, id)) = cursor {
        let (a, b) = (f.arg(ts), f.arg(id));
        f.and(&format!("(ts, id) {} ({a}, {b})", if backward { "<" } else { ">" }));
    }
    let order = if backward { "ts DESC, id DESC" } else { "ts, id" };
    let limit = f.arg(i64::try_from(q.max).unwrap_or(i64::MAX - 1).saturating_add(1));
    let rows = tx
        .query(&format!("SELECT {COLUMNS} FROM archive WHERE {} ORDER BY {order} LIMIT {limit}", f.sql), &f.params())
        .await
        .ctx("archive_query: page")?;
    let mut items = rows.iter().map(item_from).collect::<Result<Vec<_>>>()?;
    let complete = items.len() <= q.max;
    items.truncate(q.max);
    if backward {
        items.reverse();
    }
    Ok(Some(ArchivePage { items, complete, count }))
}

/// Inserts one item through `c` (a pooled connection or a transaction); false when its id or
/// dedupe key is already taken.
pub(crate) async fn insert_item<C: GenericClient>(
    c: &C,
    owner: &str,
    item: &ArchiveItem,
    dedupe_key: Option<&str>,
) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO archive (owner, id, peer, peer_full, direction, ts, message_id, origin_id,
                                  replaces, body, stanza, retracted, dedupe_key, search)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, to_tsvector('simple', $14::TEXT))
             ON CONFLICT DO NOTHING",
        )
        .await
        .ctx("archive_append")?;
    let search = item.body.as_deref().map(index_text);
    let n = c
        .execute(
            &stmt,
            &[
                &owner,
                &item.id,
                &item.with,
                &item.with_full,
                &item.direction.as_str(),
                &item.timestamp,
                &item.message_id,
                &item.origin_id,
                &item.replaces,
                &item.body,
                &item.stanza,
                &item.retracted,
                &dedupe_key,
                &search,
            ],
        )
        .await
        .ctx("archive_append")?;
    Ok(n > 0)
}

#[async_trait]
impl ArchiveStore for PgStore {
    async fn archive_append(&self, owner: &str, item: &ArchiveItem, dedupe_key: Option<&str>) -> Result<bool> {
        let client = self.client().await?;
        insert_item(&client, owner, item, dedupe_key).await
    }

    async fn archive_append_queued(&self, owner: &str, item: &ArchiveItem) -> Result<()> {
        self.queue.append(owner, item).await
    }

    async fn archive_flush(&self) -> Result<()> {
        self.queue.flush().await
    }

    async fn archive_get(&self, owner: &str, id: &str) -> Result<Option<ArchiveItem>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM archive WHERE owner = $1 AND id = $2"))
            .await
            .ctx("archive_get")?;
        client.query_opt(&stmt, &[&owner, &id]).await.ctx("archive_get")?.as_ref().map(item_from).transpose()
    }

    async fn archive_query(&self, owner: &str, query: &ArchiveQuery) -> Result<Option<ArchivePage>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("archive_query: begin")?;
        let page = run_query(&tx, owner, query).await?;
        tx.commit().await.ctx("archive_query: end")?;
        Ok(page)
    }

    async fn archive_find_refs(
        &self,
        owner: &str,
        with: &str,
        direction: Direction,
        message_ref: &str,
    ) -> Result<Vec<ArchiveItem>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM archive
                 WHERE owner = $1 AND peer = $2 AND direction = $3
                   AND (message_id = $4 OR origin_id = $4 OR replaces = $4)
                 ORDER BY ts, id LIMIT $5"
            ))
            .await
            .ctx("archive_find_refs")?;
        let rows = client
            .query(&stmt, &[&owner, &with, &direction.as_str(), &message_ref, &MAX_REFS])
            .await
            .ctx("archive_find_refs")?;
        rows.iter().map(item_from).collect()
    }

    async fn archive_edit(&self, owner: &str, id: &str, body: Option<&str>, stanza: &[u8]) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE archive SET body = $3, stanza = $4, search = to_tsvector('simple', $5::TEXT)
                 WHERE owner = $1 AND id = $2 AND NOT retracted",
            )
            .await
            .ctx("archive_edit")?;
        let search = body.map(index_text);
        Ok(client.execute(&stmt, &[&owner, &id, &body, &stanza, &search]).await.ctx("archive_edit")? > 0)
    }

    async fn archive_retract(&self, owner: &str, id: &str, tombstone: &[u8]) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE archive SET body = NULL, search = NULL, stanza = $3, retracted = TRUE
                 WHERE owner = $1 AND id = $2",
            )
            .await
            .ctx("archive_retract")?;
        Ok(client.execute(&stmt, &[&owner, &id, &tombstone]).await.ctx("archive_retract")? > 0)
    }

    async fn archive_delete_all(&self, owner: &str) -> Result<u64> {
        let client = self.client().await?;
        client.execute("DELETE FROM archive WHERE owner = $1", &[&owner]).await.ctx("archive_delete_all")
    }

    async fn archive_delete_before(&self, timestamp: i64) -> Result<u64> {
        let client = self.client().await?;
        // Portable batched delete (PostgreSQL has no DELETE … LIMIT): oldest first, through the
        // `archive_ts` index, so an interrupted run leaves no holes.
        let stmt = client
            .prepare_cached(
                "DELETE FROM archive WHERE (owner, id) IN
                    (SELECT owner, id FROM archive WHERE ts < $1 ORDER BY ts LIMIT $2)",
            )
            .await
            .ctx("archive_delete_before")?;
        let mut total = 0u64;
        loop {
            let n = client.execute(&stmt, &[&timestamp, &DELETE_BATCH]).await.ctx("archive_delete_before")?;
            total += n;
            if i64::try_from(n).unwrap_or(i64::MAX) < DELETE_BATCH {
                return Ok(total);
            }
        }
    }
}
