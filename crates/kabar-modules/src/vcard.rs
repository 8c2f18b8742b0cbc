//! XEP-0054: vcard-temp, stored by the server for each account.
//!
//! * Get with no `to` or to the own bare JID (§3.1): the stored vCard, or an empty
//!   `<vCard xmlns='vcard-temp'/>` when none was published.
//! * Get to another local account's bare JID (§3.3): that account's vCard, or an empty one. vCards
//!   are public by design; blocked requesters are stopped earlier by the XEP-0191 filter.
//! * Set (§3.2): only by the account itself (otherwise `<forbidden/>`); the `<vCard/>` element is
//!   stored whole, serialised, in the key-value store `vcard` under the key `""`. A vCard larger
//!   than [`MAX_VCARD_BYTES`] serialised is refused with `<not-acceptable/>` (the XEP leaves size
//!   policy to the server; XEP-0060 uses not-acceptable for oversized items likewise).
//! * To the server itself: the server has no vCard, so a get is `<item-not-found/>` (§3.1 allows
//!   an error or an empty vCard) and a set `<not-allowed/>`.
//!
//! Account deletion needs nothing here: the store drops every key of a deleted account.
//!
//! Hooks for XEP-0398 (avatar ↔ vCard conversion, [`crate::avatar`]): a [`VcardObserver`] added with
//! [`VcardModule::with_observer`] is told of every vCard the account itself publishes, after it is
//! stored; [`set_photo`] replaces (or removes) the `<PHOTO/>` of a stored vCard without telling the
//! observers, so a mirror never echoes back.

use std::sync::Arc;

use async_trait::async_trait;
use jid::BareJid;
use kabar_core::module::IqResult;
use kabar_core::{ErrorType, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::warn;

pub const NS_VCARD: &str = "vcard-temp";
/// The key-value store name this module owns.
pub const STORE: &str = "vcard";
const KEY: &str = "";
/// Largest vCard accepted, serialised (avatars belong in XEP-0084/0153 hashes, not inline blobs
/// this big).
pub const MAX_VCARD_BYTES: usize = 64 * 1024;

/// Told of every vCard an account publishes (after it is stored).
#[async_trait]
pub trait VcardObserver: Send + Sync {
    async fn vcard_published(&self, server: &Server, account: &BareJid, vcard: &Element);
}

pub struct VcardModule {
    observers: Vec<Arc<dyn VcardObserver>>,
}

impl VcardModule {
    pub fn new() -> Self {
        VcardModule { observers: Vec::new() }
    }

    pub fn with_observer(mut self, observer: Arc<dyn VcardObserver>) -> Self {
        self.observers.push(observer);
        self
    }
}

/// A vCard photo (XEP-0153): MIME type and Base64 image.
pub struct Photo<'a> {
    pub mime: &'a str,
    pub base64: &'a str,
}

/// Replaces the `<PHOTO/>` of `account`'s stored vCard (creating the vCard if there is none), or
/// removes it with `None`. Observers are not told. Refused with `<not-acceptable/>` when the result
/// would exceed [`MAX_VCARD_BYTES`].
pub async fn set_photo(server: &Server, account: &BareJid, photo: Option<Photo<'_>>) -> Result<(), StanzaError> {
    let mut vcard = load(server, account).await?;
    let had_photo = vcard.get_child("PHOTO", NS_VCARD).is_some();
    while vcard.remove_child("PHOTO", NS_VCARD).is_some() {}
    match photo {
        Some(p) => {
            vcard.append_child(
                elem("PHOTO", NS_VCARD)
                    .with_child(elem("TYPE", NS_VCARD).with_text(p.mime))
                    .with_child(elem("BINVAL", NS_VCARD).with_text(p.base64)),
            );
        }
        None if !had_photo => return Ok(()),
        None => {}
    }
    let bytes = kabar_xml::element_to_bytes(&vcard).map_err(backend_error)?;
    if bytes.len() > MAX_VCARD_BYTES {
        return Err(StanzaError::new(ErrorType::Modify, "not-acceptable")
            .with_text(format!("vCards are limited to {MAX_VCARD_BYTES} bytes")));
    }
    server.store.kv_put(account.as_str(), STORE, KEY, &bytes).await.map_err(backend_error)
}

impl Default for VcardModule {
    fn default() -> Self {
        Self::new()
    }
}

fn backend_error(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "vcard store failure");
    StanzaError::internal_server_error()
}

async fn load(server: &Server, account: &BareJid) -> Result<Element, StanzaError> {
    let stored = server.store.kv_get(account.as_str(), STORE, KEY).await.map_err(backend_error)?;
    let Some(bytes) = stored else { return Ok(elem("vCard", NS_VCARD)) };
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|s| s.parse::<Element>().ok());
    match parsed {
        Some(el) if el.name() == "vCard" && el.ns() == NS_VCARD => Ok(el),
        _ => Err(backend_error(format!("stored vCard of {account} does not parse"))),
    }
}

#[async_trait]
impl Module for VcardModule {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_VCARD]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("vCard", NS_VCARD)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(account) = &iq.to_account else {
            return Err(if iq.is_set { StanzaError::not_allowed() } else { StanzaError::item_not_found() });
        };
        if !iq.is_set {
            return load(server, account).await.map(Some);
        }
        if !iq.from_account_itself() {
            return Err(StanzaError::forbidden());
        }
        let Some(vcard) = iq.payload() else { return Err(StanzaError::bad_request()) };
        let bytes = kabar_xml::element_to_bytes(vcard).map_err(|_| StanzaError::bad_request())?;
        if bytes.len() > MAX_VCARD_BYTES {
            return Err(StanzaError::new(ErrorType::Modify, "not-acceptable")
                .with_text(format!("vCards are limited to {MAX_VCARD_BYTES} bytes")));
        }
        server.store.kv_put(account.as_str(), STORE, KEY, &bytes).await.map_err(backend_error)?;
        for observer in &self.observers {
            observer.vcard_published(server, account, vcard).await;
        }
        Ok(None)
    }
}
