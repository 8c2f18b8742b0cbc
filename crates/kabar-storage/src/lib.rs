//! Storage traits for kabar.
//!
//! Every store is domain-shaped (accounts, rosters, offline queue, per-user key-value) so a backend is
//! a new crate implementing these traits, checked by [`conformance`]. Users are addressed by their
//! bare JID as a normalised string (`alice@localhost`); the core normalises before calling in.
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

/// One backend providing every store. The binary picks the backend; everything else sees this.
pub trait Store: AccountStore + RosterStore + OfflineStore + KvStore {}
impl<T: AccountStore + RosterStore + OfflineStore + KvStore> Store for T {}

pub type SharedStore = Arc<dyn Store>;
