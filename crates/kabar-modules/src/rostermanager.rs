//! Roster and subscription plumbing shared by the roster (RFC 6121 §2) and presence (RFC 6121 §3,
//! §4) modules: reading and writing roster items, roster pushes (§2.1.6), the store of unanswered
//! inbound subscription requests (§3.1.3), and sending a user's current presence to someone.
//!
//! Nothing here decides protocol outcomes; the two modules do. Every read-modify-write of one
//! user's roster runs under [`lock_user`] so two stanzas touching the same roster at once (say a
//! roster set from one resource while a contact's approval arrives) cannot lose an update. The lock
//! is never held while routing, because routing a subscription stanza to a local contact re-enters
//! the presence module for the contact's roster.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use jid::{BareJid, Jid};
use kabar_core::{ns, Server};
use kabar_storage::{RosterItem, StoreError, Subscription};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tokio::sync::{Mutex, MutexGuard};
use tracing::{debug, warn};

/// `jabber:iq:roster` (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// KvStore name holding unanswered inbound subscription requests ("Pending In", RFC 6121 §3.1.3):
/// key = the requester's bare JID, value = the serialised `<presence type='subscribe'/>`.
pub const PENDING_IN_STORE: &str = "presence-pending-in";

const LOCK_STRIPES: usize = 64;
static LOCKS: [Mutex<()>; LOCK_STRIPES] = [const { Mutex::const_new(()) }; LOCK_STRIPES];

/// Serialises read-modify-write cycles on one user's roster. Never hold it across `route()`.
pub async fn lock_user(user: &BareJid) -> MutexGuard<'static, ()> {
    let mut h = DefaultHasher::new();
    user.as_str().hash(&mut h);
    // The modulo keeps the index in range; the cast cannot truncate a value below 64.
    LOCKS[(h.finish() % LOCK_STRIPES as u64) as usize].lock().await
}

static PUSH_IDS: AtomicU64 = AtomicU64::new(1);

fn next_push_id() -> String {
    format!("push{}", PUSH_IDS.fetch_add(1, Ordering::Relaxed))
}

/// The item as shown in roster results and pushes (RFC 6121 §2.1.2): `approved` only while it
/// still means something (subscription none or to, §3.4), `ask` only as 'subscribe' (§2.1.2.2).
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = elem("item", NS_ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        el.set_attr_str("name", name.as_str());
    }
    if item.ask {
        el.set_attr_str("ask", "subscribe");
    }
    if item.approved && !item.subscription.has_from() {
        el.set_attr_str("approved", "true");
    }
    for group in &item.groups {
        el.append_child(elem("group", NS_ROSTER).with_text(group.as_str()));
    }
    el
}

/// RFC 6121 §2.1.6: sends a roster push carrying `item` to every interested resource of `user`
/// (the ones that requested the roster, §2.2), with the roster's new version (XEP-0237).
pub async fn push(server: &Server, user: &BareJid, item: &Element, ver: u64) {
    for session in server.sessions.sessions(user) {
        if !session.interested {
            continue;
        }
        let iq = elem("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", next_push_id())
            .with_attr("to", session.jid.as_str())
            .with_child(elem("query", NS_ROSTER).with_attr("ver", ver.to_string()).with_child(item.clone()));
        server.deliver(&session.jid, iq).await;
    }
}

pub async fn get_item(server: &Server, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>, StoreError> {
    server.store.roster_item(user.as_str(), contact.as_str()).await
}

/// Stores the item and pushes it (RFC 6121 §2.1.6). Returns the new roster version.
pub async fn save_and_push(server: &Server, user: &BareJid, item: &RosterItem) -> Result<u64, StoreError> {
    let ver = server.store.put_roster_item(user.as_str(), item).await?;
    debug!(user = %user, contact = %item.jid, subscription = item.subscription.as_str(), ask = item.ask, "roster item stored");
    push(server, user, &item_element(item), ver).await;
    Ok(ver)
}

/// Removes the item and pushes `subscription='remove'` (RFC 6121 §2.5.2). `false` if absent.
pub async fn remove_and_push(server: &Server, user: &BareJid, contact: &BareJid) -> Result<bool, StoreError> {
    match server.store.remove_roster_item(user.as_str(), contact.as_str()).await? {
        Some(ver) => {
            let item = elem("item", NS_ROSTER).with_attr("jid", contact.as_str()).with_attr("subscription", "remove");
            push(server, user, &item, ver).await;
            debug!(user = %user, contact = %contact, "roster item removed");
            Ok(true)
        }
        None => Ok(false),
    }
}

// --- subscription state arithmetic (RFC 6121 Appendix A) ---------------------------------------

pub fn add_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::To => Subscription::To,
        Subscription::From | Subscription::Both => Subscription::Both,
    }
}

pub fn add_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::From => Subscription::From,
        Subscription::To | Subscription::Both => Subscription::Both,
    }
}

pub fn remove_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::To => Subscription::None,
        Subscription::From | Subscription::Both => Subscription::From,
    }
}

pub fn remove_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None | Subscription::From => Subscription::None,
        Subscription::To | Subscription::Both => Subscription::To,
    }
}

// --- pending inbound requests (RFC 6121 §3.1.3) ------------------------------------------------

pub async fn has_pending_in(server: &Server, user: &BareJid, contact: &BareJid) -> Result<bool, StoreError> {
    Ok(server.store.kv_get(user.as_str(), PENDING_IN_STORE, contact.as_str()).await?.is_some())
}

pub async fn set_pending_in(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    request: &Element,
) -> Result<(), StoreError> {
    let bytes = element_to_bytes(request).map_err(|e| StoreError::Backend(e.to_string()))?;
    server.store.kv_put(user.as_str(), PENDING_IN_STORE, contact.as_str(), &bytes).await
}

/// Forgets the pending request; returns whether there was one.
pub async fn clear_pending_in(server: &Server, user: &BareJid, contact: &BareJid) -> Result<bool, StoreError> {
    server.store.kv_delete(user.as_str(), PENDING_IN_STORE, contact.as_str()).await
}

/// Every unanswered request, sorted by requester JID.
pub async fn pending_in_all(server: &Server, user: &BareJid) -> Result<Vec<Element>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in server.store.kv_list(user.as_str(), PENDING_IN_STORE).await? {
        match parse_stanza(&bytes) {
            Some(el) => out.push(el),
            None => warn!(user = %user, contact = %key, "unreadable pending subscription request skipped"),
        }
    }
    Ok(out)
}

/// Parses a stanza serialised with [`element_to_bytes`].
pub fn parse_stanza(bytes: &[u8]) -> Option<Element> {
    Element::from_reader(bytes).ok()
}

// --- stanzas sent on a user's behalf ------------------------------------------------------------

/// `<presence type='…' from='user' to='contact'/>` between bare JIDs (RFC 6121 §3: subscription
/// stanzas carry bare JIDs).
pub fn subscription_stanza(kind: &str, from: &BareJid, to: &BareJid) -> Element {
    elem("presence", ns::CLIENT).with_attr("type", kind).with_attr("from", from.as_str()).with_attr("to", to.as_str())
}

/// Sends the current presence of each of `user`'s available resources to `to` (RFC 6121 §3.1.5:
/// after approving a subscription; §4.3.2: answering a probe). Returns how many were sent.
pub async fn send_available_presence(server: &Server, user: &BareJid, to: &Jid) -> usize {
    let mut sent = 0;
    for session in server.sessions.sessions(user) {
        if !session.available {
            continue;
        }
        let Some(mut presence) = session.presence.clone() else { continue };
        presence.set_attr_str("from", session.jid.as_str());
        presence.set_attr_str("to", to.as_str());
        server.route(presence).await;
        sent += 1;
    }
    sent
}

/// Sends `<presence type='unavailable'/>` from each of `user`'s available resources to `to`
/// (RFC 6121 §3.2.2 and §2.5.2: the contact lost its subscription to the user's presence).
pub async fn send_unavailable_presence(server: &Server, user: &BareJid, to: &Jid) {
    for session in server.sessions.sessions(user) {
        if session.available {
            let presence = elem("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", session.jid.as_str())
                .with_attr("to", to.as_str());
            server.route(presence).await;
        }
    }
}
