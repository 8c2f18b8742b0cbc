//! XEP-0363: HTTP File Upload, the XMPP half: slot requests to the server's own domain.
//!
//! The server advertises `urn:xmpp:http:upload:0` with the `store/file` identity and the XEP-0128
//! `max-file-size` form in its disco#info. A local account sends
//! `<request xmlns='urn:xmpp:http:upload:0' filename size content-type/>` and gets a slot: a GET
//! URL (`<base>/upload/<id>/<filename>`, the id is 128 random bits and is the only capability a
//! downloader needs) and a PUT URL, the same with `?owner&size&expires&sig`, where `sig` is
//! HMAC-SHA256 over (id, owner, filename, size, content type, expiry) with a secret generated into
//! `<data_dir>/upload-secret`. The HTTPS side (`kabar/src/http/upload.rs`) recomputes the MAC from
//! the URL and the request's `Content-Length` and `Content-Type`, so a slot cannot be stretched
//! to another size, type, owner or time, and nothing about slots is stored until a file arrives.
//!
//! Metadata lives in the key-value store rather than in sidecar files: the per-account quota is
//! one `kv_list` of the owner's records (no directory walk), admin paging and the expiry sweep
//! read one index, and a record and the file it names cannot be half-written by a crash in a way
//! the sweep does not repair. Two stores:
//! * `upload` (user = owner's bare JID, key = id): the owner's files, summed for the quota;
//! * `upload-index` (user = "", key = id): every file, for downloads, the sweep and the admin API.
//!
//! Errors follow XEP-0363 §4: too large → `<not-acceptable/>` with `<file-too-large>` and
//! `<max-file-size>`; over quota → `<resource-constraint/>` (wait) with a `<retry stamp>` when
//! the owner's oldest file will expire; requests from anyone but a local account → `<not-allowed/>`.

// `StanzaError` is what the IQ helpers here return; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kabar_core::config::UploadConfig;
use kabar_core::module::IqResult;
use kabar_core::stanza::ErrorType;
use kabar_core::time::{unix_now, xep0082};
use kabar_core::{Config, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_storage::SharedStore;
use kabar_xml::{elem, Element, ElementExt};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::{info, warn};

pub const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const NS_DATA: &str = "jabber:x:data";
/// The owner's records (user = owner's bare JID): what the quota sums.
pub const STORE: &str = "upload";
/// Every record (user = ""): downloads, the sweep, the admin API.
pub const INDEX_STORE: &str = "upload-index";
/// Where uploaded files go under the data folder unless `[upload] dir` says otherwise.
pub const DEFAULT_DIR: &str = "uploads";
const SECRET_FILE: &str = "upload-secret";
const MAX_FILENAME_BYTES: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 255;
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Length of a file id: 16 random bytes in unpadded base64url.
const ID_LEN: usize = 22;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload secret {}: {source}", path.display())]
    Secret { path: PathBuf, source: std::io::Error },
    #[error("upload secret {} is not 64 hex digits; delete it to have a new one generated", .0.display())]
    BadSecret(PathBuf),
    #[error("store: {0}")]
    Store(#[from] kabar_storage::StoreError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
}

/// What the server knows about one stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: String,
    /// Bare JID of the uploader.
    pub owner: String,
    pub filename: String,
    pub size: u64,
    pub content_type: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the file is gone; `None`: kept until deleted.
    pub expires: Option<u64>,
}

/// Everything a PUT URL vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotClaim<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub filename: &'a str,
    pub size: u64,
    pub content_type: &'a str,
    /// Unix seconds after which the PUT URL is refused.
    pub expires: u64,
}

impl SlotClaim<'_> {
    /// Each field length-prefixed, so no choice of filename or type can make two different
    /// claims produce the same bytes.
    fn signing_input(&self) -> Vec<u8> {
        let mut out = b"kabar-upload-put-v1".to_vec();
        let size = self.size.to_string();
        let expires = self.expires.to_string();
        for field in [self.id, self.owner, self.filename, &size, self.content_type, &expires] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

/// HMAC-SHA256 over [`SlotClaim`]s.
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// The signature, unpadded base64url.
    pub fn sign(&self, claim: &SlotClaim<'_>) -> String {
        let mut mac = self.mac();
        mac.update(&claim.signing_input());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a presented signature.
    pub fn verify(&self, claim: &SlotClaim<'_>, sig: &str) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else { return false };
        let mut mac = self.mac();
        mac.update(&claim.signing_input());
        mac.verify_slice(&bytes).is_ok()
    }
}

/// Reads the 32-byte secret (64 hex digits) from `path`, creating it (mode 0600) when missing.
/// Two callers racing to create it both end up with the winner's secret.
pub fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, UploadError> {
    let err = |source| UploadError::Secret { path: path.to_path_buf(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return decode_hex(text.trim())
                .filter(|k| k.len() == 32)
                .ok_or_else(|| UploadError::BadSecret(path.to_path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    use rand::RngCore;
    use std::io::Write;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut f) => {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(format!("{hex}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(err)?;
            info!(file = %path.display(), "generated the upload signing secret");
            Ok(key.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(path),
        Err(e) => Err(err(e)),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (safe in a path segment and in
/// a query value).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A fresh file id: 128 random bits.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `id` has the shape [`new_id`] produces (so it is safe as a file name).
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The file name as stored: its last path component, without control characters, at most 255
/// bytes. `None` when nothing is left.
pub fn sanitize_filename(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        return None;
    }
    let mut end = trimmed.len().min(MAX_FILENAME_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    Some(trimmed[..end].to_string())
}

/// A MIME type as RFC 9110 §8.3.1 shapes it (`type/subtype` with optional parameters), printable
/// ASCII only, so it can go into an HTTP header unchanged.
pub fn valid_content_type(ct: &str) -> bool {
    if ct.is_empty() || ct.len() > MAX_CONTENT_TYPE_BYTES || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    match essence.split_once('/') {
        Some((t, sub)) => token(t) && token(sub),
        None => false,
    }
}

/// How a commit of an uploaded file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    Stored,
    /// A file with this id exists already (the slot was used).
    Exists,
    /// Storing it would take the owner over the quota.
    OverQuota,
}

/// The upload service shared by the slot module and the HTTPS handlers: configuration, the
/// signing secret (read on first use) and the metadata operations.
pub struct Uploads {
    pub config: UploadConfig,
    /// Whether slots are handed out (enabled in the config and an HTTPS listener exists).
    pub enabled: bool,
    pub dir: PathBuf,
    /// `https://host:port` without a trailing slash.
    pub base_url: String,
    secret_path: PathBuf,
    signer: OnceLock<Signer>,
    /// Serialises the quota check and the record writes of concurrent commits.
    commit_lock: tokio::sync::Mutex<()>,
}

impl Uploads {
    pub fn new(config: &Config) -> Uploads {
        let up = &config.upload;
        let base_url = up
            .url
            .clone()
            .or_else(|| config.http.public_url.clone())
            .unwrap_or_else(|| {
                let port = config.http.listen.first().map(|a| a.port()).unwrap_or(5443);
                format!("https://{}:{port}", config.domain)
            })
            .trim_end_matches('/')
            .to_string();
        Uploads {
            config: up.clone(),
            enabled: up.enabled && !config.http.listen.is_empty(),
            dir: up.dir.clone().unwrap_or_else(|| config.data_dir.join(DEFAULT_DIR)),
            base_url,
            secret_path: config.data_dir.join(SECRET_FILE),
            signer: OnceLock::new(),
            commit_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn signer(&self) -> Result<&Signer, UploadError> {
        if let Some(s) = self.signer.get() {
            return Ok(s);
        }
        let key = load_or_create_secret(&self.secret_path)?;
        let _ = self.signer.set(Signer::new(&key));
        Ok(self.signer.get().unwrap_or_else(|| unreachable!("set just above")))
    }

    pub fn get_url(&self, id: &str, filename: &str) -> String {
        format!("{}/upload/{id}/{}", self.base_url, percent_encode(filename))
    }

    pub fn put_url(&self, claim: &SlotClaim<'_>, sig: &str) -> String {
        format!(
            "{}?owner={}&size={}&expires={}&sig={sig}",
            self.get_url(claim.id, claim.filename),
            percent_encode(claim.owner),
            claim.size,
            claim.expires
        )
    }

    pub fn file_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where a file is written while it arrives.
    pub fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    /// Bytes the owner has stored, and the earliest expiry among their files.
    pub async fn usage(&self, store: &SharedStore, owner: &str) -> Result<(u64, Option<u64>), UploadError> {
        let mut used = 0u64;
        let mut earliest: Option<u64> = None;
        for (_, value) in store.kv_list(owner, STORE).await? {
            // A record that does not parse cannot be attributed; skip it rather than refuse.
            if let Ok(r) = serde_json::from_slice::<UploadRecord>(&value) {
                used = used.saturating_add(r.size);
                if let Some(e) = r.expires {
                    earliest = Some(earliest.map_or(e, |x| x.min(e)));
                }
            }
        }
        Ok((used, earliest))
    }

    pub async fn record(&self, store: &SharedStore, id: &str) -> Result<Option<UploadRecord>, UploadError> {
        Ok(store.kv_get("", INDEX_STORE, id).await?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every stored file, sorted by id.
    pub async fn list(&self, store: &SharedStore) -> Result<Vec<UploadRecord>, UploadError> {
        Ok(store
            .kv_list("", INDEX_STORE)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// Moves `<id>.part` into place and records it, unless the id is taken or the owner would go
    /// over the quota (checked again here: two slots may have been granted against the same room).
    /// Order: file, index, owner record — a crash in between leaves a file the sweep removes or,
    /// at worst, one that does not count against the quota until it expires.
    pub async fn commit(&self, store: &SharedStore, record: &UploadRecord) -> Result<Commit, UploadError> {
        let _guard = self.commit_lock.lock().await;
        if store.kv_get("", INDEX_STORE, &record.id).await?.is_some() {
            return Ok(Commit::Exists);
        }
        if self.config.quota_bytes > 0 {
            let (used, _) = self.usage(store, &record.owner).await?;
            if used.saturating_add(record.size) > self.config.quota_bytes {
                return Ok(Commit::OverQuota);
            }
        }
        tokio::fs::rename(self.part_path(&record.id), self.file_path(&record.id)).await?;
        let value = serde_json::to_vec(record).map_err(|e| UploadError::Io(std::io::Error::other(e)))?;
        store.kv_put("", INDEX_STORE, &record.id, &value).await?;
        store.kv_put(&record.owner, STORE, &record.id, &value).await?;
        Ok(Commit::Stored)
    }

    /// Deletes one file and its records; whether it existed.
    pub async fn delete(&self, store: &SharedStore, id: &str) -> Result<bool, UploadError> {
        let Some(record) = self.record(store, id).await? else { return Ok(false) };
        self.remove(store, &record).await?;
        Ok(true)
    }

    async fn remove(&self, store: &SharedStore, record: &UploadRecord) -> Result<(), UploadError> {
        store.kv_delete(&record.owner, STORE, &record.id).await?;
        store.kv_delete("", INDEX_STORE, &record.id).await?;
        match tokio::fs::remove_file(self.file_path(&record.id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes every file of one owner (the account was deleted). Walks the index, not the
    /// owner's store: deleting an account already wiped the key-value data kept under its name.
    pub async fn delete_owner(&self, store: &SharedStore, owner: &str) -> Result<usize, UploadError> {
        let mut n = 0;
        for record in self.list(store).await?.iter().filter(|r| r.owner == owner) {
            self.remove(store, record).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes expired files, then files in the folder that no record names (a crash between the
    /// file and its record) and abandoned `.part` files, once they are older than a slot's
    /// lifetime plus an hour. Returns how many files were deleted.
    pub async fn sweep(&self, store: &SharedStore, now: u64) -> Result<usize, UploadError> {
        let mut deleted = 0;
        let records = self.list(store).await?;
        let mut live = std::collections::HashSet::new();
        for r in &records {
            if r.expires.is_some_and(|e| e <= now) {
                self.remove(store, r).await?;
                deleted += 1;
            } else {
                live.insert(r.id.as_str());
            }
        }
        let grace = std::time::Duration::from_secs(self.config.slot_lifetime_secs.saturating_add(3600));
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(deleted),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name.strip_suffix(".part").unwrap_or(name);
            if !valid_id(id) || live.contains(name) {
                continue;
            }
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > grace);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The slot module. [`UploadModule::uploads`] is the handle the HTTPS side shares.
pub struct UploadModule {
    uploads: Arc<Uploads>,
}

impl UploadModule {
    pub fn new(config: &Config) -> UploadModule {
        UploadModule { uploads: Arc::new(Uploads::new(config)) }
    }

    pub fn uploads(&self) -> Arc<Uploads> {
        self.uploads.clone()
    }

    fn file_too_large(&self) -> StanzaError {
        let max = self.uploads.config.max_file_size;
        StanzaError::not_acceptable()
            .with_text(format!("File too large. The maximum file size is {max} bytes"))
            .with_app(
                elem("file-too-large", NS_UPLOAD)
                    .with_child(elem("max-file-size", NS_UPLOAD).with_text(max.to_string())),
            )
    }

    async fn slot(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let up = &self.uploads;
        let Some(request) = iq.payload() else { return Err(StanzaError::bad_request()) };
        if iq.is_set {
            return Err(StanzaError::bad_request().with_text("Slot requests are IQ get"));
        }
        if iq.to_account.is_some() {
            return Err(StanzaError::service_unavailable());
        }
        // Only local accounts get slots (components and remote entities do not have a quota here).
        let owner = iq.from.to_bare();
        if owner.domain().as_str() != server.domain || owner.node().is_none() {
            return Err(StanzaError::not_allowed().with_text("Only local accounts may upload files"));
        }
        let filename = request
            .attr("filename")
            .and_then(sanitize_filename)
            .ok_or_else(|| StanzaError::bad_request().with_text("Missing or unusable filename"))?;
        let size: u64 = request
            .attr("size")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| StanzaError::bad_request().with_text("Missing or invalid size"))?;
        let content_type = match request.attr("content-type").map(str::trim).filter(|s| !s.is_empty()) {
            None => DEFAULT_CONTENT_TYPE.to_string(),
            Some(ct) if valid_content_type(ct) => ct.to_string(),
            Some(_) => return Err(StanzaError::bad_request().with_text("Invalid content-type")),
        };
        if size > up.config.max_file_size {
            return Err(self.file_too_large());
        }
        if up.config.quota_bytes > 0 {
            let (used, earliest) = up.usage(&server.store, owner.as_str()).await.map_err(|e| {
                warn!(error = %e, "upload: cannot read usage");
                StanzaError::internal_server_error()
            })?;
            if used.saturating_add(size) > up.config.quota_bytes {
                let mut err = StanzaError::new(ErrorType::Wait, "resource-constraint").with_text(format!(
                    "Quota reached: {used} of {} bytes stored; this file needs {size}",
                    up.config.quota_bytes
                ));
                if let Some(when) = earliest {
                    err = err.with_app(elem("retry", NS_UPLOAD).with_attr("stamp", xep0082(when)));
                }
                return Err(err);
            }
        }
        let signer = up.signer().map_err(|e| {
            warn!(error = %e, "upload: no signing secret");
            StanzaError::internal_server_error()
        })?;
        let id = new_id();
        let claim = SlotClaim {
            id: &id,
            owner: owner.as_str(),
            filename: &filename,
            size,
            content_type: &content_type,
            expires: unix_now().saturating_add(up.config.slot_lifetime_secs),
        };
        let sig = signer.sign(&claim);
        Ok(Some(
            elem("slot", NS_UPLOAD)
                .with_child(elem("put", NS_UPLOAD).with_attr("url", up.put_url(&claim, &sig)))
                .with_child(elem("get", NS_UPLOAD).with_attr("url", up.get_url(&id, &filename))),
        ))
    }
}

#[async_trait]
impl Module for UploadModule {
    fn name(&self) -> &'static str {
        "upload"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_ACCOUNT_DELETED
    }

    fn server_features(&self) -> Vec<&'static str> {
        if self.uploads.enabled {
            vec![NS_UPLOAD]
        } else {
            Vec::new()
        }
    }

    fn server_identities(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        if self.uploads.enabled {
            vec![("store", "file", "HTTP File Upload")]
        } else {
            Vec::new()
        }
    }

    /// XEP-0363 §3 Example 2: the service's maximum file size.
    fn server_info_forms(&self) -> Vec<Element> {
        if !self.uploads.enabled {
            return Vec::new();
        }
        let field = |var: &str, value: String| {
            elem("field", NS_DATA).with_attr("var", var).with_child(elem("value", NS_DATA).with_text(value))
        };
        vec![elem("x", NS_DATA)
            .with_attr("type", "result")
            .with_child(field("FORM_TYPE", NS_UPLOAD.to_string()).with_attr("type", "hidden"))
            .with_child(field("max-file-size", self.uploads.config.max_file_size.to_string()))]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        if self.uploads.enabled {
            vec![("request", NS_UPLOAD)]
        } else {
            Vec::new()
        }
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        self.slot(server, iq).await
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        if let Event::AccountDeleted { jid, .. } = event {
            match self.uploads.delete_owner(&server.store, jid.as_str()).await {
                Ok(0) => {}
                Ok(n) => info!(account = %jid, files = n, "upload: deleted the account's files"),
                Err(e) => warn!(account = %jid, error = %e, "upload: cannot delete the account's files"),
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> SlotClaim<'static> {
        SlotClaim {
            id: "AAAAAAAAAAAAAAAAAAAAAA",
            owner: "alice@localhost",
            filename: "photo.jpg",
            size: 1234,
            content_type: "image/jpeg",
            expires: 1_800_000_000,
        }
    }

    #[test]
    fn xep0363_slot_signature_verifies_only_the_signed_claim() {
        let signer = Signer::new(&[7u8; 32]);
        let c = claim();
        let sig = signer.sign(&c);
        assert!(signer.verify(&c, &sig));
        for changed in [
            SlotClaim { id: "BAAAAAAAAAAAAAAAAAAAAA", ..c.clone() },
            SlotClaim { owner: "mallory@localhost", ..c.clone() },
            SlotClaim { filename: "photo.jpeg", ..c.clone() },
            SlotClaim { size: 1235, ..c.clone() },
            SlotClaim { content_type: "text/html", ..c.clone() },
            SlotClaim { expires: 1_800_000_001, ..c.clone() },
        ] {
            assert!(!signer.verify(&changed, &sig), "{changed:?} verified with the original signature");
        }
        assert!(!Signer::new(&[8u8; 32]).verify(&c, &sig), "another secret verified it");
        assert!(!signer.verify(&c, "not base64!"));
        assert!(!signer.verify(&c, ""));
    }

    #[test]
    fn xep0363_slot_signature_fields_cannot_be_shifted() {
        // Without length prefixes "ab"+"c" and "a"+"bc" would sign the same bytes.
        let signer = Signer::new(b"k");
        let a = SlotClaim { filename: "ab", content_type: "c/d", ..claim() };
        let b = SlotClaim { filename: "a", content_type: "bc/d", ..claim() };
        assert_ne!(signer.sign(&a), signer.sign(&b));
    }

    /// HMAC-SHA256 itself, RFC 4231 test case 2, through the same construction the signer uses.
    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("any key length");
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn secret_is_generated_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("kabar-upload-secret-{}", new_id()));
        let path = dir.join("upload-secret");
        let first = load_or_create_secret(&path).expect("generated");
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create_secret(&path).expect("read back"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz\n").expect("write");
        assert!(matches!(load_or_create_secret(&path), Err(UploadError::BadSecret(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn filenames_are_reduced_to_a_safe_last_component() {
        assert_eq!(sanitize_filename("photo.jpg").as_deref(), Some("photo.jpg"));
        assert_eq!(sanitize_filename("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(sanitize_filename("C:\\Users\\a\\b.txt").as_deref(), Some("b.txt"));
        assert_eq!(sanitize_filename("a\nb\u{0}.txt").as_deref(), Some("ab.txt"));
        assert_eq!(sanitize_filename(".."), None);
        assert_eq!(sanitize_filename("dir/"), None);
        let long = "é".repeat(200);
        let s = sanitize_filename(&long).expect("kept");
        assert!(s.len() <= MAX_FILENAME_BYTES && s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn content_types_must_be_mime_types() {
        assert!(valid_content_type("image/jpeg"));
        assert!(valid_content_type("text/plain; charset=utf-8"));
        assert!(!valid_content_type("image"));
        assert!(!valid_content_type("text/html\r\nSet-Cookie: x=y"));
        assert!(!valid_content_type("a b/c"));
        assert!(!valid_content_type(""));
    }

    #[test]
    fn ids_and_url_parts_are_safe() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../../../../etc/passwd!!"));
        assert!(!valid_id("AAAAAAAAAAAAAAAAAAAAA/"));
        assert_eq!(percent_encode("a b/ü?&=#.~"), "a%20b%2F%C3%BC%3F%26%3D%23.~");
    }
}
