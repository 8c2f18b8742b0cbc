//! Account management shared by the CLI, in-band registration and (later) the admin API.

use jid::BareJid;
use kabar_sasl::{new_credentials, ScramHash, DEFAULT_ITERATIONS};
use kabar_storage::{AccountCredentials, SharedStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("'{0}' is not a valid username or address (RFC 7622)")]
    InvalidJid(String),
    #[error("'{0}' is on another domain; this server serves '{1}'")]
    WrongDomain(String, String),
    #[error("the password is not acceptable: {0}")]
    BadPassword(String),
    #[error("the account already exists")]
    Exists,
    #[error("no such account")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Accepts `alice` or `alice@domain` and returns the normalised bare JID on `domain`.
pub fn parse_account(input: &str, domain: &str) -> Result<BareJid, AccountError> {
    let full = if input.contains('@') { input.to_string() } else { format!("{input}@{domain}") };
    let jid = crate::stanza::parse_jid(&full)
        .ok()
        .and_then(|j| j.try_into_full().err())
        .ok_or_else(|| AccountError::InvalidJid(input.to_string()))?;
    if jid.node().is_none() {
        return Err(AccountError::InvalidJid(input.to_string()));
    }
    if jid.domain().as_str() != domain {
        return Err(AccountError::WrongDomain(input.to_string(), domain.to_string()));
    }
    Ok(jid)
}

/// Key derivations allowed at once: one per core, so a registration surge queues here instead of
/// taking every core from the sessions already running (their work stays on the async threads).
fn derivation_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    })
}

static DERIVATIONS_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Key derivations waiting for a slot now (an admission-control signal).
pub fn derivations_waiting() -> usize {
    DERIVATIONS_WAITING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Derives both SCRAM key sets. PBKDF2 is deliberately slow, so this runs off the async threads,
/// at most one derivation per core at a time.
pub async fn derive(password: &str) -> Result<AccountCredentials, AccountError> {
    let password = password.to_string();
    DERIVATIONS_WAITING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let permit = derivation_slots().acquire().await;
    DERIVATIONS_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let _permit = permit.map_err(|e| AccountError::Store(StoreError::Backend(format!("key derivation slots closed: {e}"))))?;
    let result = tokio::task::spawn_blocking(move || {
        let sha1 = new_credentials(ScramHash::Sha1, &password, DEFAULT_ITERATIONS)?;
        let sha256 = new_credentials(ScramHash::Sha256, &password, DEFAULT_ITERATIONS)?;
        Ok::<_, kabar_sasl::SaslError>(AccountCredentials { scram_sha1: sha1, scram_sha256: sha256 })
    })
    .await
    .map_err(|e| AccountError::Store(StoreError::Backend(format!("key derivation task failed: {e}"))))?;
    result.map_err(|e| AccountError::BadPassword(e.to_string()))
}

pub async fn create(store: &SharedStore, jid: &BareJid, password: &str) -> Result<(), AccountError> {
    let creds = derive(password).await?;
    match store.create_account(jid.as_str(), &creds).await {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists) => Err(AccountError::Exists),
        Err(e) => Err(e.into()),
    }
}

pub async fn set_password(store: &SharedStore, jid: &BareJid, password: &str) -> Result<(), AccountError> {
    let creds = derive(password).await?;
    if store.set_credentials(jid.as_str(), &creds).await? {
        Ok(())
    } else {
        Err(AccountError::NotFound)
    }
}

pub async fn delete(store: &SharedStore, jid: &BareJid) -> Result<(), AccountError> {
    if store.delete_account(jid.as_str()).await? {
        Ok(())
    } else {
        Err(AccountError::NotFound)
    }
}
