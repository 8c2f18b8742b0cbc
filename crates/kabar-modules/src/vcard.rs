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

use async_trait::async_trait;
use jid::BareJid;
use kabar_core::module::IqResult;
use kabar_core::{ErrorType, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element};
use tracing::warn;

pub const NS_VCARD: &str = "vcard-temp";
/// The key-value store name this module owns.
pub const STORE: &str = "vcard";
const KEY: &str = "";
/// Largest vCard accepted, serialised (avatars belong in XEP-0084/0153 hashes, not inline blobs
/// this big).
pub const MAX_VCARD_BYTES: usize = 64 * 1024;

pub struct VcardModule;

impl VcardModule {
    pub fn new() -> Self {
        VcardModule
    }
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
        Ok(None)
    }
}
