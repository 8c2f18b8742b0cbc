//! Account management shared by the CLI, in-band registration and (later) the admin API.

use jid::BareJid;
use kabar_sasl::{new_derivation, ScramHash, DEFAULT_ITERATIONS};
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

/// Key derivations allowed at once: one per core, so a registration surge queues here (a bounded
/// worker pool) instead of taking every core from the sessions already running.
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

/// PBKDF2 iterations (of both hashes) run between two yields to the scheduler: about 0.05-0.1 ms of
/// CPU, so chat traffic on the same core waits at most that long behind a registration (the sign-up
/// surge goal).
const DERIVATION_SLICE: u32 = 256;

/// Derives both SCRAM key sets. PBKDF2 is deliberately slow (2 × 4096 HMAC iterations), so it runs in
/// slices on the async runtime, yielding between them, with at most one derivation per core at a
/// time: other tasks interleave with it instead of waiting for whole milliseconds.
pub async fn derive(password: &str) -> Result<AccountCredentials, AccountError> {
    let bad = |e: kabar_sasl::SaslError| AccountError::BadPassword(e.to_string());
    // Validate (SASLprep) before queueing for a slot.
    let mut sha1 = new_derivation(ScramHash::Sha1, password, DEFAULT_ITERATIONS).map_err(bad)?;
    let mut sha256 = new_derivation(ScramHash::Sha256, password, DEFAULT_ITERATIONS).map_err(bad)?;
    DERIVATIONS_WAITING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let permit = derivation_slots().acquire().await;
    DERIVATIONS_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let _permit = permit.map_err(|e| AccountError::Store(StoreError::Backend(format!("key derivation slots closed: {e}"))))?;
    // Both hashes in lockstep: their compression chains overlap on the CPU (kabar_sasl::step_pair).
    while !kabar_sasl::step_pair(&mut sha1, &mut sha256, DERIVATION_SLICE) {
        tokio::task::yield_now().await;
    }
    Ok(AccountCredentials { scram_sha1: sha1.finish(), scram_sha256: sha256.finish() })
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
