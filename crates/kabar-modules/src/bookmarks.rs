//! XEP-0402 PEP Native Bookmarks with XEP-0048 compatibility (`urn:xmpp:bookmarks:1#compat` and
//! `#compat-pep`, XEP-0402 §5.3): one set of bookmarks, three ways to reach it.
//!
//! * The PEP node `urn:xmpp:bookmarks:1` ([`NODE_0402`], one item per room, id = room JID) is where
//!   the bookmarks live; it is an ordinary PEP node of [`PepModule`].
//! * XEP-0048 through XEP-0049 private storage (`<storage xmlns='storage:bookmarks'/>`, handled by
//!   [`crate::private`]) and through the PEP node `storage:bookmarks` ([`NODE_0048`]) are views:
//!   reading builds a `<storage/>` from the XEP-0402 items ([`legacy_storage`]); writing replaces the
//!   XEP-0402 items with the conferences it lists ([`legacy_set`]: changed rooms are published,
//!   missing ones retracted, each with its XEP-0402 notification; `<extensions/>` of a room
//!   that stays are kept). `<url/>` bookmarks have no XEP-0402 form; they are kept in this
//!   bridge's key-value store `bookmarks-0048` (key `urls`) so XEP-0048 round-trips.
//! * Whenever the bookmarks change, the owner's resources interested in `storage:bookmarks+notify`
//!   get the whole `<storage/>` as an item `current` of that node (XEP-0048 over PEP).
//!
//! The node `storage:bookmarks` itself holds nothing and only the owner may read it.

#![allow(clippy::result_large_err)]

use jid::BareJid;
use kabar_core::stanza::parse_bare;
use kabar_core::{Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::warn;

use crate::pep::{Fields, Origin, PepModule, NS_PUBSUB_EVENT};

pub const NODE_0402: &str = "urn:xmpp:bookmarks:1";
pub const NS_0402: &str = "urn:xmpp:bookmarks:1";
pub const NODE_0048: &str = "storage:bookmarks";
pub const NS_0048: &str = "storage:bookmarks";
pub const FEATURE_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
pub const FEATURE_COMPAT_PEP: &str = "urn:xmpp:bookmarks:1#compat-pep";
/// The key-value store this bridge owns (XEP-0048 `<url/>` bookmarks).
pub const STORE: &str = "bookmarks-0048";
const URLS_KEY: &str = "urls";

/// XEP-0402 §3: the node's configuration when the bridge creates it (the same publish-options a
/// XEP-0402 client sends, so its next publish meets the preconditions).
fn node_options() -> Fields {
    vec![
        ("pubsub#persist_items".into(), vec!["true".into()]),
        ("pubsub#max_items".into(), vec!["max".into()]),
        (
            "pubsub#send_last_published_item".into(),
            vec!["never".into()],
        ),
        ("pubsub#access_model".into(), vec!["whitelist".into()]),
    ]
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("true") | Some("1"))
}

/// A XEP-0048 `<conference/>` (in `storage:bookmarks`) as a XEP-0402 item: (room JID, payload).
/// `keep` is the room's current XEP-0402 payload, whose `<extensions/>` survive.
pub fn conference_to_0402(c: &Element, keep: Option<&Element>) -> Option<(String, Element)> {
    let jid = parse_bare(c.attr("jid")?).ok()?;
    let mut out = convert_conference(c, NS_0048, NS_0402);
    if let Some(ext) = keep.and_then(|k| k.get_child("extensions", NS_0402)) {
        out.append_child(ext.clone());
    }
    Some((jid.to_string(), out))
}

/// A XEP-0402 item as a XEP-0048 `<conference/>`.
pub fn conference_to_0048(jid: &str, c: &Element) -> Element {
    convert_conference(c, NS_0402, NS_0048).with_attr("jid", jid)
}

/// The fields both versions share (autojoin, name, nick, password), from namespace `from` to `to`.
fn convert_conference(c: &Element, from: &str, to: &str) -> Element {
    let autojoin = if truthy(c.attr("autojoin")) { "true" } else { "false" };
    let mut out = elem("conference", to).with_attr("autojoin", autojoin);
    if let Some(name) = c.attr("name") {
        out.set_attr_str("name", name);
    }
    for child in ["nick", "password"] {
        if let Some(value) = c.get_child(child, from) {
            out.append_child(elem(child, to).with_text(value.text()));
        }
    }
    out
}

fn backend(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "bookmarks store failure");
    StanzaError::internal_server_error()
}

/// The bookmarks as XEP-0048 `<storage xmlns='storage:bookmarks'/>`.
pub async fn legacy_storage(
    pep: &PepModule,
    server: &Server,
    owner: &BareJid,
) -> Result<Element, StanzaError> {
    let mut storage = elem("storage", NS_0048);
    for (id, payload) in pep
        .node_items(server, owner, NODE_0402)
        .await?
        .unwrap_or_default()
    {
        if payload.name() == "conference" && payload.ns() == NS_0402 {
            storage.append_child(conference_to_0048(&id, &payload));
        }
    }
    if let Some(bytes) = server
        .store
        .kv_get(owner.as_str(), STORE, URLS_KEY)
        .await
        .map_err(backend)?
    {
        let urls = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse::<Element>().ok());
        for url in urls
            .iter()
            .flat_map(|u| u.children())
            .filter(|c| c.name() == "url")
        {
            storage.append_child(url.clone());
        }
    }
    Ok(storage)
}

/// Replaces the bookmarks with a XEP-0048 `<storage/>` (from private storage or the legacy PEP node).
pub async fn legacy_set(
    pep: &PepModule,
    server: &Server,
    owner: &BareJid,
    storage: &Element,
) -> Result<(), StanzaError> {
    if storage.name() != "storage" || storage.ns() != NS_0048 {
        return Err(
            StanzaError::bad_request().with_text("expected <storage xmlns='storage:bookmarks'/>")
        );
    }
    let existing = pep.node_items(server, owner, NODE_0402).await?;
    let node_exists = existing.is_some();
    let existing = existing.unwrap_or_default();
    let mut wanted: Vec<(String, Element)> = Vec::new();
    for c in storage
        .children()
        .filter(|c| c.name() == "conference" && c.ns() == NS_0048)
    {
        let Some(jid) = c.attr("jid").and_then(|j| parse_bare(j).ok()) else {
            return Err(
                StanzaError::bad_request().with_text("a conference bookmark needs a valid 'jid'")
            );
        };
        let keep = existing
            .iter()
            .find(|(id, _)| *id == jid.as_str())
            .map(|(_, p)| p);
        if let Some(item) = conference_to_0402(c, keep) {
            wanted.retain(|(id, _)| *id != item.0);
            wanted.push(item);
        }
    }
    let options = node_options();
    let mut created = node_exists;
    for (id, payload) in &wanted {
        let same = existing.iter().any(|(eid, ep)| {
            eid == id
                && kabar_xml::element_to_bytes(ep).ok() == kabar_xml::element_to_bytes(payload).ok()
        });
        if same {
            continue;
        }
        let opts = if created { None } else { Some(&options) };
        pep.publish(
            server,
            owner,
            NODE_0402,
            Some(id.clone()),
            payload.clone(),
            opts,
            Origin::Bookmarks,
        )
        .await?;
        created = true;
    }
    for (id, _) in &existing {
        if !wanted.iter().any(|(wid, _)| wid == id) {
            pep.retract(server, owner, NODE_0402, id, true, Origin::Bookmarks)
                .await?;
        }
    }
    let urls: Vec<Element> = storage
        .children()
        .filter(|c| c.name() == "url" && c.ns() == NS_0048)
        .cloned()
        .collect();
    if urls.is_empty() {
        server
            .store
            .kv_delete(owner.as_str(), STORE, URLS_KEY)
            .await
            .map_err(backend)?;
    } else {
        let mut keep = elem("storage", NS_0048);
        for u in urls {
            keep.append_child(u);
        }
        let bytes = kabar_xml::element_to_bytes(&keep).map_err(backend)?;
        server
            .store
            .kv_put(owner.as_str(), STORE, URLS_KEY, &bytes)
            .await
            .map_err(backend)?;
    }
    notify_legacy(pep, server, owner).await;
    Ok(())
}

/// A publish to the legacy PEP node `storage:bookmarks`: its item id is always `current`.
pub async fn legacy_published(
    pep: &PepModule,
    server: &Server,
    owner: &BareJid,
    payload: &Element,
) -> Result<String, StanzaError> {
    legacy_set(pep, server, owner, payload).await?;
    Ok("current".to_string())
}

/// The XEP-0402 node changed through PEP: XEP-0048-over-PEP resources get the new `<storage/>`.
pub async fn pep_0402_changed(pep: &PepModule, server: &Server, owner: &BareJid) {
    notify_legacy(pep, server, owner).await;
}

async fn notify_legacy(pep: &PepModule, server: &Server, owner: &BareJid) {
    match legacy_storage(pep, server, owner).await {
        Ok(storage) => {
            let event = elem("event", NS_PUBSUB_EVENT).with_child(
                elem("items", NS_PUBSUB_EVENT)
                    .with_attr("node", NODE_0048)
                    .with_child(
                        elem("item", NS_PUBSUB_EVENT)
                            .with_attr("id", "current")
                            .with_child(storage),
                    ),
            );
            pep.notify_owner(server, owner, NODE_0048, event).await;
        }
        Err(e) => warn!(error = %e, "bookmarks: cannot build XEP-0048 view"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        s.parse().expect("test XML")
    }

    #[test]
    fn xep0402_5_3_conference_converts_both_ways() {
        let legacy = parse(
            "<conference xmlns='storage:bookmarks' jid='Room@conference.localhost' name='The Room' autojoin='1'>\
             <nick>alice</nick><password>pw</password></conference>",
        );
        let (id, native) = conference_to_0402(&legacy, None).expect("converts");
        assert_eq!(id, "room@conference.localhost");
        assert_eq!(native.attr("autojoin"), Some("true"));
        assert_eq!(native.attr("name"), Some("The Room"));
        assert_eq!(
            native
                .get_child("nick", NS_0402)
                .map(|n| n.text())
                .as_deref(),
            Some("alice")
        );
        let back = conference_to_0048(&id, &native);
        assert_eq!(back.attr("jid"), Some("room@conference.localhost"));
        assert_eq!(back.attr("autojoin"), Some("true"));
        assert_eq!(
            back.get_child("password", NS_0048)
                .map(|n| n.text())
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn xep0402_5_3_extensions_survive_a_legacy_rewrite() {
        let legacy = parse("<conference xmlns='storage:bookmarks' jid='r@muc.localhost'/>");
        let keep = parse(
            "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'><extensions><x xmlns='urn:example'/></extensions></conference>",
        );
        let (_, native) = conference_to_0402(&legacy, Some(&keep)).expect("converts");
        assert!(native.get_child("extensions", NS_0402).is_some());
        assert_eq!(native.attr("autojoin"), Some("false"));
    }

    #[test]
    fn xep0048_conference_without_valid_jid_is_not_converted() {
        assert!(conference_to_0402(
            &parse("<conference xmlns='storage:bookmarks' jid='@@'/>"),
            None
        )
        .is_none());
        assert!(
            conference_to_0402(&parse("<conference xmlns='storage:bookmarks'/>"), None).is_none()
        );
    }
}
