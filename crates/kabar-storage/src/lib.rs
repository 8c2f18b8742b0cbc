//! Storage traits for kabar.
//!
//! Every store is domain-shaped (accounts, rosters, offline queue, per-user key-value, message
//! archive) so a backend is a new crate implementing these traits, checked by [`conformance`].
//! Users are addressed by their bare JID as a normalised string (`alice@localhost`); the core
//! normalises before calling in.
//!
//! Backends must make every successful write durable before returning: the server acknowledges
//! stanzas only after the store said yes.

use std::sync::Arc;

use async_trait::async_trait;
pub use kabar_sasl::ScramCredentials;

pub mod conformance;

/// Errors a backend may return. Callers map these to XMPP errors; the message is for logs only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("storage backend failure: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// SCRAM keys for one account, one set per hash function. No plaintext or reversible form exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountCredentials {
    pub scram_sha1: ScramCredentials,
    pub scram_sha256: ScramCredentials,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account; `AlreadyExists` if it does.
    async fn create_account(&self, user: &str, creds: &AccountCredentials) -> Result<()>;
    async fn credentials(&self, user: &str) -> Result<Option<AccountCredentials>>;
    /// Replaces the credentials; returns false when there is no such account.
    async fn set_credentials(&self, user: &str, creds: &AccountCredentials) -> Result<bool>;
    /// Deletes the account and every piece of data any store holds for it.
    /// Returns false when there was no such account.
    async fn delete_account(&self, user: &str) -> Result<bool>;
    /// All accounts, sorted.
    async fn list_accounts(&self) -> Result<Vec<String>>;
}

/// RFC 6121 §2.1.2.5 subscription state of a roster item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
}

/// One contact of a user's roster (RFC 6121 §2.1). Unanswered inbound subscription requests are not
/// roster items (§3.1.3); the presence module keeps them in its own key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RosterItem {
    /// Bare JID of the contact.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// We asked the contact for a subscription and wait for the answer ("Pending Out").
    pub ask: bool,
    /// The user pre-approved an inbound subscription (RFC 6121 §3.4).
    pub approved: bool,
    pub groups: Vec<String>,
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    /// The whole roster and its current version (XEP-0237).
    async fn roster(&self, user: &str) -> Result<(Vec<RosterItem>, u64)>;
    async fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces the item; returns the roster's new version. Versions only grow.
    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> Result<u64>;
    /// Removes the item; returns the new version, or `None` if there was no such item.
    async fn remove_roster_item(&self, user: &str, contact: &str) -> Result<Option<u64>>;
}

/// Messages held for a user with no available session (XEP-0160), in arrival order.
#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Appends a serialised stanza; `QuotaExceeded` when the user already has `limit` messages.
    async fn push_offline(&self, user: &str, stanza: &[u8], limit: usize) -> Result<u64>;
    /// Every held stanza, oldest first, with its id.
    async fn offline_messages(&self, user: &str) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Forgets delivered messages. Called only after they were written to a session.
    async fn remove_offline(&self, user: &str, ids: &[u64]) -> Result<()>;
}

/// Small per-user documents, addressed by (store name, key). Feature modules own their store names
/// (e.g. "vcard", "blocklist") and never read another module's.
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn kv_get(&self, user: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>>;
    async fn kv_put(&self, user: &str, store: &str, key: &str, value: &[u8]) -> Result<()>;
    /// Returns whether the key existed.
    async fn kv_delete(&self, user: &str, store: &str, key: &str) -> Result<bool>;
    /// All (key, value) pairs of one store, sorted by key.
    async fn kv_list(&self, user: &str, store: &str) -> Result<Vec<(String, Vec<u8>)>>;
}

/// Which way an archived message went, seen from the archive's owner (XEP-0313 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Received by the owner.
    #[default]
    In,
    /// Sent by the owner.
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            _ => None,
        }
    }
}

/// One message in a user's archive (XEP-0313). Items are ordered by `(timestamp, id)`
/// ("chronological order"); ids are opaque strings, unique within one owner's archive.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchiveItem {
    /// The archive id (the XEP-0359 `<stanza-id/>` the server stamped). Unique per owner, never
    /// reused by the server (ids of deleted items included).
    pub id: String,
    /// The peer's bare JID (the `to` of an outgoing message, the `from` of an incoming one).
    pub with: String,
    /// The peer's address as written in the stanza, when it had a resource.
    pub with_full: Option<String>,
    pub direction: Direction,
    /// When the server received (or, for imports, the original sender sent) it: Unix microseconds.
    pub timestamp: i64,
    /// The stanza's `id` attribute and XEP-0359 `<origin-id/>`: what XEP-0308 corrections and
    /// XEP-0424 retractions refer to.
    pub message_id: Option<String>,
    pub origin_id: Option<String>,
    /// For a XEP-0308 correction: the id of the message it corrects.
    pub replaces: Option<String>,
    /// Text indexed for full-text search (normally the `<body/>`); `None` is not searchable.
    pub body: Option<String>,
    /// The whole serialised stanza (the `jabber:client` tree).
    pub stanza: Vec<u8>,
    /// The item is a XEP-0424 tombstone: `stanza` no longer holds the original content.
    pub retracted: bool,
}

/// Where a page starts (XEP-0059 result set management over the filtered set).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ArchiveCursor {
    /// The first `max` items.
    #[default]
    Start,
    /// The first `max` items after this id.
    After(String),
    /// The last `max` items (XEP-0059 empty `<before/>`).
    End,
    /// The last `max` items before this id.
    Before(String),
}

/// A filter over one owner's archive plus a page position. Every filter is optional; all that are
/// given must hold.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchiveQuery {
    /// A bare JID matches items whose `with` is it; a JID with a resource matches `with_full`.
    pub with: Option<String>,
    /// Unix microseconds, inclusive.
    pub start: Option<i64>,
    /// Unix microseconds, inclusive.
    pub end: Option<i64>,
    /// Only items after (exclusive) this one.
    pub after_id: Option<String>,
    /// Only items before (exclusive) this one.
    pub before_id: Option<String>,
    /// Only these items.
    pub ids: Option<Vec<String>>,
    /// Full-text search: whitespace-separated words, all of which must occur in the item's `body`
    /// (case- and diacritics-insensitive, whole words); a word ending in `*` matches as a prefix,
    /// and `"several words"` in double quotes must occur as a phrase. Punctuation separates words.
    /// Terms with no letters or digits are ignored; a search with no usable term matches nothing.
    pub text: Option<String>,
    pub cursor: ArchiveCursor,
    /// Page size; 0 asks for the count only.
    pub max: usize,
}

/// One term of [`ArchiveQuery::text`]: a word or a `"quoted phrase"` as the user typed it (backends
/// split it into words with their own normalisation), and whether it ended in `*` (a prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchTerm<'a> {
    pub text: &'a str,
    pub prefix: bool,
}

/// Splits [`ArchiveQuery::text`] into its terms, so every backend reads the query language alike.
pub fn search_terms(text: &str) -> Vec<SearchTerm<'_>> {
    let mut terms = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return terms;
        }
        let (term, next) = if let Some(after_quote) = rest.strip_prefix('"') {
            match after_quote.find('"') {
                Some(end) => (SearchTerm { text: &after_quote[..end], prefix: false }, &after_quote[end + 1..]),
                None => (SearchTerm { text: after_quote, prefix: false }, ""),
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..end];
            let term = match word.strip_suffix('*') {
                Some(stem) => SearchTerm { text: stem, prefix: true },
                None => SearchTerm { text: word, prefix: false },
            };
            (term, &rest[end..])
        };
        terms.push(term);
        rest = next;
    }
}

/// One page of a query, in chronological order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchivePage {
    pub items: Vec<ArchiveItem>,
    /// No matching item lies beyond this page in the paging direction (after the last item when
    /// paging forward from `Start`/`After`, before the first when paging back from `End`/`Before`).
    pub complete: bool,
    /// How many items match the filter, whatever the cursor and page size.
    pub count: u64,
}

impl ArchivePage {
    pub fn first_id(&self) -> Option<&str> {
        self.items.first().map(|i| i.id.as_str())
    }
    pub fn last_id(&self) -> Option<&str> {
        self.items.last().map(|i| i.id.as_str())
    }
}

/// Per-user message archives (XEP-0313), with full-text search, XEP-0308/0424 edits, and deletion
/// for retention and account removal. `AccountStore::delete_account` also removes the archive.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends `item` to `owner`'s archive. Idempotent: returns false, changing nothing, when the
    /// archive already holds an item with the same id or, if `dedupe_key` is given, one appended
    /// with the same key (so an import run twice adds nothing the second time).
    async fn archive_append(&self, owner: &str, item: &ArchiveItem, dedupe_key: Option<&str>) -> Result<bool>;
    /// Queues an append without waiting for it to be durable: the message hot path archives this
    /// way and lets [`ArchiveStore::archive_flush`] (before an XEP-0198 ack, a MAM query, a
    /// correction lookup) wait for durability, so one commit covers many messages. Returns once the
    /// write is queued, in call order; a failure or an id already taken is logged by the backend.
    /// Backends without a write queue append and wait, which this default does.
    async fn archive_append_queued(&self, owner: &str, item: &ArchiveItem) -> Result<()> {
        self.archive_append(owner, item, None).await.map(|_| ())
    }
    /// Waits until every archive write queued before this call is durable (and visible to reads).
    async fn archive_flush(&self) -> Result<()> {
        Ok(())
    }
    async fn archive_get(&self, owner: &str, id: &str) -> Result<Option<ArchiveItem>>;
    /// One page of the items matching `query`. `Ok(None)` when an id the query names (cursor,
    /// `after_id`, `before_id`, any of `ids`) is not in the archive (XEP-0313 item-not-found).
    async fn archive_query(&self, owner: &str, query: &ArchiveQuery) -> Result<Option<ArchivePage>>;
    /// The items exchanged with the bare JID `with` in `direction` whose `message_id` or
    /// `origin_id` is `message_ref`, or that correct it (`replaces`), oldest first (at most 1000):
    /// what a XEP-0308 correction or XEP-0424 retraction from that sender may touch.
    async fn archive_find_refs(
        &self,
        owner: &str,
        with: &str,
        direction: Direction,
        message_ref: &str,
    ) -> Result<Vec<ArchiveItem>>;
    /// Replaces an item's stanza and searchable text (a XEP-0308 correction applied). Returns
    /// false when there is no such item or it is a tombstone (tombstones are final).
    async fn archive_edit(&self, owner: &str, id: &str, body: Option<&str>, stanza: &[u8]) -> Result<bool>;
    /// Turns an item into a tombstone: the stanza becomes `tombstone`, the searchable text is
    /// dropped and `retracted` is set; id, timestamp and peer stay. Returns false when there is no
    /// such item.
    async fn archive_retract(&self, owner: &str, id: &str, tombstone: &[u8]) -> Result<bool>;
    /// Empties `owner`'s archive; returns how many items went.
    async fn archive_delete_all(&self, owner: &str) -> Result<u64>;
    /// Removes every item (of every owner) older than `timestamp` (Unix microseconds, exclusive);
    /// returns how many went. Retention: only the oldest items go, so archives keep no holes.
    async fn archive_delete_before(&self, timestamp: i64) -> Result<u64>;
}

/// One backend providing every store. The binary picks the backend; everything else sees this.
pub trait Store: AccountStore + RosterStore + OfflineStore + KvStore + ArchiveStore {}
impl<T: AccountStore + RosterStore + OfflineStore + KvStore + ArchiveStore> Store for T {}

pub type SharedStore = Arc<dyn Store>;

#[cfg(test)]
mod tests {
    use super::{search_terms, SearchTerm};

    #[test]
    fn search_terms_split_words_prefixes_and_quoted_phrases() {
        let t = |text, prefix| SearchTerm { text, prefix };
        assert_eq!(
            search_terms(r#"  hello wor* "new york" "unclosed phrase"#),
            vec![t("hello", false), t("wor", true), t("new york", false), t("unclosed phrase", false)]
        );
        assert_eq!(search_terms("   "), vec![]);
        assert_eq!(search_terms(r#""" *"#), vec![t("", false), t("", true)]);
    }
}
