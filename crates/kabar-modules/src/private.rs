//! XEP-0049: Private XML Storage (`jabber:iq:private`).
//!
//! * Only the account itself, with no `to` or its own bare JID, may get or set (others get
//!   `<forbidden/>`, §2.3 / §3).
//! * Set: every child of `<query/>` is stored whole, keyed by its (name, namespace), replacing what
//!   was there (key-value store `private`, key `<namespace> <name>`). Get: exactly one child names
//!   what to return; the stored element, or the empty element asked for.
//! * A query without a child is `<not-acceptable/>`; reserved namespaces (§2.3: beginning with
//!   `jabber:` or `http://jabber.org/`, and `vcard-temp`) are refused with `<not-acceptable/>`.
//! * `storage:bookmarks` (XEP-0048) is not stored here: it is a view of the XEP-0402 bookmarks, see
//!   [`crate::bookmarks`].
//! * A stored element larger than [`MAX_PRIVATE_BYTES`] serialised is `<not-acceptable/>`; at most
//!   [`MAX_PRIVATE_ENTRIES`] (name, namespace) pairs per account (`<resource-constraint/>`).

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use async_trait::async_trait;
use kabar_core::module::IqResult;
use kabar_core::{IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::warn;

use crate::bookmarks;
use crate::pep::PepModule;

pub const NS_PRIVATE: &str = "jabber:iq:private";
/// The key-value store this module owns.
pub const STORE: &str = "private";
pub const MAX_PRIVATE_BYTES: usize = 64 * 1024;
pub const MAX_PRIVATE_ENTRIES: usize = 100;

pub struct PrivateModule {
    pep: Arc<PepModule>,
}

impl PrivateModule {
    pub fn new(pep: Arc<PepModule>) -> Self {
        PrivateModule { pep }
    }
}

pub fn is_reserved(ns: &str) -> bool {
    ns.starts_with("jabber:") || ns.starts_with("http://jabber.org/") || ns == "vcard-temp"
}

fn key(el: &Element) -> String {
    format!("{} {}", el.ns(), el.name())
}

fn backend(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "private storage failure");
    StanzaError::internal_server_error()
}

#[async_trait]
impl Module for PrivateModule {
    fn name(&self) -> &'static str {
        "private"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_PRIVATE]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_PRIVATE)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(owner) = &iq.to_account else {
            return Err(StanzaError::forbidden());
        };
        if !iq.from_account_itself() {
            return Err(StanzaError::forbidden());
        }
        let Some(query) = iq.payload() else {
            return Err(StanzaError::bad_request());
        };
        let children: Vec<&Element> = query.children().collect();
        if children.is_empty() {
            return Err(StanzaError::not_acceptable());
        }
        if children.iter().any(|c| is_reserved(&c.ns())) {
            return Err(StanzaError::not_acceptable().with_text("reserved namespace"));
        }
        if !iq.is_set {
            let [wanted] = children.as_slice() else {
                return Err(
                    StanzaError::not_acceptable().with_text("ask for one namespace at a time")
                );
            };
            let found = if wanted.name() == "storage" && wanted.ns() == bookmarks::NS_0048 {
                bookmarks::legacy_storage(&self.pep, server, owner).await?
            } else {
                let stored = server
                    .store
                    .kv_get(owner.as_str(), STORE, &key(wanted))
                    .await
                    .map_err(backend)?;
                match stored
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse::<Element>().ok())
                {
                    Some(el) => el,
                    None => elem(wanted.name(), &wanted.ns()),
                }
            };
            return Ok(Some(elem("query", NS_PRIVATE).with_child(found)));
        }
        for child in &children {
            if child.name() == "storage" && child.ns() == bookmarks::NS_0048 {
                continue;
            }
            let bytes =
                kabar_xml::element_to_bytes(child).map_err(|_| StanzaError::bad_request())?;
            if bytes.len() > MAX_PRIVATE_BYTES {
                return Err(StanzaError::not_acceptable()
                    .with_text(format!("at most {MAX_PRIVATE_BYTES} bytes")));
            }
        }
        let existing = server
            .store
            .kv_list(owner.as_str(), STORE)
            .await
            .map_err(backend)?;
        let new_keys = children
            .iter()
            .filter(|c| !existing.iter().any(|(k, _)| *k == key(c)))
            .count();
        if existing.len() + new_keys > MAX_PRIVATE_ENTRIES {
            return Err(StanzaError::resource_constraint());
        }
        for child in children {
            if child.name() == "storage" && child.ns() == bookmarks::NS_0048 {
                bookmarks::legacy_set(&self.pep, server, owner, child).await?;
                continue;
            }
            let bytes =
                kabar_xml::element_to_bytes(child).map_err(|_| StanzaError::bad_request())?;
            server
                .store
                .kv_put(owner.as_str(), STORE, &key(child), &bytes)
                .await
                .map_err(backend)?;
        }
        Ok(None)
    }
}
