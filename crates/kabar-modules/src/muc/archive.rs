//! The room's own archive (XEP-0313 §5.1.2 "MUC archives"): every groupchat message with a body,
//! subject-less, gets a XEP-0359 `<stanza-id by='room'/>` and goes into the [`ArchiveStore`] with the
//! room's bare JID as owner. Queries go to the room's JID and reuse mam.rs's form and paging. XEP-0425
//! moderation turns an item into a tombstone and the room broadcasts the retraction.
//!
//! [`ArchiveStore`]: kabar_storage::ArchiveStore

use kabar_core::stanza::StanzaError;
use kabar_core::{ns, BareJid, FullJid, Server};
use kabar_storage::{ArchiveCursor, ArchiveItem, ArchiveQuery, Direction};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tracing::warn;

use crate::mam::{self, NS_MAM, NS_RETRACT, NS_SID};

pub const NS_MODERATE_1: &str = "urn:xmpp:message-moderate:1";
pub const NS_MODERATE_0: &str = "urn:xmpp:message-moderate:0";

/// Removes `<stanza-id/>`s claiming to be by the room (XEP-0359 §5: only the room may say so).
pub fn strip_room_ids(m: &mut Element, room: &BareJid) {
    let forged = |c: &Element| c.is("stanza-id", NS_SID) && c.attr("by") == Some(room.as_str());
    if m.children().any(forged) {
        for node in m.take_nodes() {
            if node.as_element().is_none_or(|c| !forged(c)) {
                m.append_node(node);
            }
        }
    }
}

/// Archives `message` (stamped, no `to`) and returns its id, or `None` when the store failed (the
/// message is still sent: a room stays usable while its archive is not).
pub async fn append(
    server: &Server,
    room: &BareJid,
    nick_jid: &FullJid,
    timestamp: i64,
    id: &str,
    message: &Element,
) -> bool {
    let bytes = match element_to_bytes(message) {
        Ok(b) => b,
        Err(e) => {
            warn!(room = %room, error = %e, "cannot serialise a room message");
            return false;
        }
    };
    let body: Vec<String> = message.children().filter(|c| c.is("body", ns::CLIENT)).map(Element::text).collect();
    let item = ArchiveItem {
        id: id.to_string(),
        with: room.to_string(),
        with_full: Some(nick_jid.to_string()),
        direction: Direction::In,
        timestamp,
        message_id: message.attr("id").map(str::to_owned),
        origin_id: message.get_child("origin-id", NS_SID).and_then(|o| o.attr("id")).map(str::to_owned),
        replaces: None,
        body: if body.is_empty() { None } else { Some(body.join("\n")) },
        stanza: bytes,
        retracted: false,
    };
    match server.store.archive_append(room.as_str(), &item, None).await {
        Ok(ok) => ok,
        Err(e) => {
            warn!(room = %room, error = %e, "archiving a room message failed");
            false
        }
    }
}

fn store_failure(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "room archive store failure");
    StanzaError::internal_server_error()
}

/// XEP-0313 §4 against the room's archive; the caller checked the requester may read it.
pub async fn query(server: &Server, room: &BareJid, to: &FullJid, q: &Element) -> Result<Element, StanzaError> {
    let (mut query, flip) = mam::parse_archive_query(q)?;
    let queue = server.config.limits.session_queue.max(16);
    query.max = query.max.min(queue / 2);
    let page = server
        .store
        .archive_query(room.as_str(), &query)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| StanzaError::item_not_found().with_text("no such id in the archive"))?;
    let mut items: Vec<&ArchiveItem> = page.items.iter().collect();
    if flip {
        items.reverse();
    }
    for item in items {
        server.deliver(to, mam::archive_result_message(room, to, q.attr("queryid"), item)).await;
    }
    Ok(mam::archive_fin(&page, page.complete))
}

pub async fn metadata(server: &Server, room: &BareJid) -> Result<Element, StanzaError> {
    let mut md = elem("metadata", NS_MAM);
    for (name, cursor) in [("start", ArchiveCursor::Start), ("end", ArchiveCursor::End)] {
        let q = ArchiveQuery { cursor, max: 1, ..ArchiveQuery::default() };
        let page = server.store.archive_query(room.as_str(), &q).await.map_err(store_failure)?;
        if let Some(item) = page.as_ref().and_then(|p| p.items.first()) {
            md.append_child(
                elem(name, NS_MAM)
                    .with_attr("id", item.id.as_str())
                    .with_attr("timestamp", mam::format_timestamp(item.timestamp)),
            );
        }
    }
    Ok(md)
}

/// The last `n` archived messages, oldest first, to refill history after a restart.
pub async fn recent(server: &Server, room: &BareJid, n: usize) -> Vec<(Element, i64)> {
    if n == 0 {
        return Vec::new();
    }
    let q = ArchiveQuery { cursor: ArchiveCursor::End, max: n, ..ArchiveQuery::default() };
    match server.store.archive_query(room.as_str(), &q).await {
        Ok(Some(page)) => page
            .items
            .iter()
            .filter(|i| !i.retracted)
            .filter_map(|i| {
                let el = std::str::from_utf8(&i.stanza).ok()?.parse::<Element>().ok()?;
                Some((el, i.timestamp))
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            warn!(room = %room, error = %e, "cannot read the room archive for history");
            Vec::new()
        }
    }
}

/// XEP-0425: tombstones the archived item `id`. `Ok(false)`: no such item.
pub async fn tombstone(
    server: &Server,
    room: &BareJid,
    id: &str,
    moderator: &str,
    reason: Option<&str>,
    ns_used: &str,
) -> Result<bool, StanzaError> {
    let Some(item) = server.store.archive_get(room.as_str(), id).await.map_err(store_failure)? else {
        return Ok(false);
    };
    let original = std::str::from_utf8(&item.stanza)
        .ok()
        .and_then(|s| s.parse::<Element>().ok())
        .unwrap_or_else(|| elem("message", ns::CLIENT));
    let mut t = original;
    for node in t.take_nodes() {
        if node.as_element().is_some_and(|c| c.is("origin-id", NS_SID) || c.is("stanza-id", NS_SID)) {
            t.append_node(node);
        }
    }
    let mut moderated = elem("moderated", ns_used).with_attr("by", moderator);
    if let Some(r) = reason {
        moderated.append_child(elem("reason", ns_used).with_text(r));
    }
    t.append_child(
        elem("retracted", NS_RETRACT)
            .with_attr("stamp", mam::format_timestamp(super::unix_micros()))
            .with_child(moderated),
    );
    let bytes = element_to_bytes(&t).map_err(store_failure)?;
    server.store.archive_retract(room.as_str(), id, &bytes).await.map_err(store_failure)
}
