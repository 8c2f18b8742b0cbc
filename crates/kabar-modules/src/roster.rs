//! RFC 6121 §2 roster management (`jabber:iq:roster`) with XEP-0237 / RFC 6121 §2.6 versioning.
//!
//! * get (§2.2): marks the requesting resource *interested* (it gets roster pushes from now on) and
//!   answers with the whole roster and its version, or with an empty result when the client's
//!   cached `ver` is current (§2.6.3).
//! * set (§2.3, §2.4): adds or updates one item's name and groups; the subscription state is owned
//!   by the presence module and a `subscription` attribute other than "remove" is ignored
//!   (§2.1.2.5). Validation follows §2.3.3.
//! * remove (§2.5): deletes the item and cancels the subscriptions in both directions by sending
//!   unsubscribe / unsubscribed (and unavailable presence) to the contact.
//!
//! Every change is pushed to the account's interested resources (§2.1.6) with the new version.

use async_trait::async_trait;
use jid::{BareJid, Jid};
use kabar_core::module::IqResult;
use kabar_core::{ns, IqRequest, Module, Server, StanzaError};
use kabar_storage::RosterItem;
use kabar_xml::{elem, Element, ElementExt};
use tracing::{debug, warn};

use crate::rostermanager::{self as rm, NS_ROSTER};

/// Longest `name` attribute accepted, in bytes (the "server-configured limit" of §2.3.3).
pub const MAX_NAME_BYTES: usize = 1023;
/// Longest group name accepted, in bytes (§2.3.3).
pub const MAX_GROUP_BYTES: usize = 1023;
/// Most groups one item may be in.
pub const MAX_GROUPS_PER_ITEM: usize = 100;
/// Most items one roster may hold; adding beyond it fails with <resource-constraint/>.
pub const MAX_ROSTER_ITEMS: usize = 5000;

pub struct RosterModule;

impl RosterModule {
    pub fn new() -> Self {
        RosterModule
    }
}

impl Default for RosterModule {
    fn default() -> Self {
        Self::new()
    }
}

fn store_error(e: kabar_storage::StoreError) -> StanzaError {
    warn!(error = %e, "roster storage failed");
    StanzaError::internal_server_error()
}

/// A roster item as the client sent it in a set, validated per RFC 6121 §2.3.3.
struct ItemUpdate {
    jid: BareJid,
    remove: bool,
    name: Option<String>,
    groups: Vec<String>,
}

// StanzaError is the core's error type, returned as is by every IQ handler.
#[allow(clippy::result_large_err)]
fn parse_set(user: &BareJid, query: &Element) -> Result<ItemUpdate, StanzaError> {
    let mut items = query.children().filter(|c| c.is("item", NS_ROSTER));
    // §2.3.3: the <query/> element MUST contain exactly one <item/>.
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::bad_request().with_text("A roster set carries exactly one item"));
    };
    let Some(jid) = item.attr("jid") else {
        return Err(StanzaError::bad_request().with_text("The item has no 'jid'"));
    };
    let jid = match kabar_core::stanza::parse_jid(jid) {
        Ok(j) if j.resource().is_none() => j.to_bare(),
        _ => return Err(StanzaError::jid_malformed()),
    };
    if &jid == user {
        return Err(StanzaError::not_allowed().with_text("Your own address cannot be a contact"));
    }
    let remove = item.attr("subscription") == Some("remove");
    let name = match item.attr("name") {
        Some(n) if n.len() > MAX_NAME_BYTES => {
            return Err(StanzaError::not_acceptable().with_text("The name is too long"));
        }
        Some("") | None => None,
        Some(n) => Some(n.to_string()),
    };
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS_ROSTER)) {
        let text = g.text();
        // §2.3.3: an empty group is not acceptable (remove all groups by sending none).
        if text.is_empty() {
            return Err(StanzaError::not_acceptable().with_text("A group name cannot be empty"));
        }
        if text.len() > MAX_GROUP_BYTES {
            return Err(StanzaError::not_acceptable().with_text("A group name is too long"));
        }
        // §2.3.3: duplicate groups are a bad request.
        if groups.contains(&text) {
            return Err(StanzaError::bad_request().with_text("Duplicate group"));
        }
        groups.push(text);
    }
    if groups.len() > MAX_GROUPS_PER_ITEM {
        return Err(StanzaError::not_acceptable().with_text("Too many groups"));
    }
    Ok(ItemUpdate { jid, remove, name, groups })
}

/// The account whose roster the request is for, if the sender may touch it (§2.3.3 / §2.1.5:
/// only the account's own resources may read or change its roster).
#[allow(clippy::result_large_err)]
fn owner(server: &Server, iq: &IqRequest) -> Result<BareJid, StanzaError> {
    let sender = iq.from.to_bare();
    if sender.node().is_none() || !server.is_local(&iq.from) || !iq.from_account_itself() {
        return Err(StanzaError::forbidden());
    }
    Ok(sender)
}

async fn get(server: &Server, iq: &IqRequest, user: &BareJid, query: &Element) -> IqResult {
    // §2.2: a resource that requested the roster is "interested" and gets pushes from now on.
    if let Ok(full) = iq.from.try_as_full() {
        server.sessions.update(full, &mut |s| s.interested = true);
    }
    let (items, ver) = server.store.roster(user.as_str()).await.map_err(store_error)?;
    let ver = ver.to_string();
    // XEP-0237 / RFC 6121 §2.6.3: nothing changed since the client's cached version → empty result
    // (later changes arrive as pushes).
    if query.attr("ver") == Some(ver.as_str()) {
        debug!(user = %user, ver, "roster unchanged since client's version");
        return Ok(None);
    }
    let mut result = elem("query", NS_ROSTER).with_attr("ver", ver);
    for item in &items {
        result.append_child(rm::item_element(item));
    }
    Ok(Some(result))
}

async fn set(server: &Server, user: &BareJid, query: &Element) -> IqResult {
    let update = parse_set(user, query)?;
    if update.remove {
        return remove(server, user, &update.jid).await;
    }
    let _guard = rm::lock_user(user).await;
    let existing = rm::get_item(server, user, &update.jid).await.map_err(store_error)?;
    let item = match existing {
        // §2.4: updating keeps the subscription state; only name and groups come from the client.
        Some(mut item) => {
            item.name = update.name;
            item.groups = update.groups;
            item
        }
        None => {
            let (items, _) = server.store.roster(user.as_str()).await.map_err(store_error)?;
            if items.len() >= MAX_ROSTER_ITEMS {
                return Err(StanzaError::resource_constraint().with_text("The roster is full"));
            }
            // §2.3.2: a new item starts with subscription 'none'.
            RosterItem { jid: update.jid.to_string(), name: update.name, groups: update.groups, ..Default::default() }
        }
    };
    rm::save_and_push(server, user, &item).await.map_err(store_error)?;
    Ok(None)
}

/// RFC 6121 §2.5.2: remove the item, push the removal, then cancel both subscription directions.
async fn remove(server: &Server, user: &BareJid, contact: &BareJid) -> IqResult {
    let (item, pending_in) = {
        let _guard = rm::lock_user(user).await;
        let Some(item) = rm::get_item(server, user, contact).await.map_err(store_error)? else {
            // §2.5.3: removing an item that is not in the roster.
            return Err(StanzaError::item_not_found());
        };
        rm::remove_and_push(server, user, contact).await.map_err(store_error)?;
        let pending_in = rm::clear_pending_in(server, user, contact).await.map_err(store_error)?;
        (item, pending_in)
    };
    // The user's subscription to the contact (to / pending out) is cancelled with 'unsubscribe';
    // the contact's subscription to the user (from / pending in) with 'unsubscribed', which also
    // means the contact must see the user go offline.
    if item.subscription.has_to() || item.ask {
        server.route(rm::subscription_stanza("unsubscribe", user, contact)).await;
    }
    if item.subscription.has_from() || pending_in {
        server.route(rm::subscription_stanza("unsubscribed", user, contact)).await;
    }
    if item.subscription.has_from() {
        rm::send_unavailable_presence(server, user, &Jid::from(contact.clone())).await;
    }
    Ok(None)
}

#[async_trait]
impl Module for RosterModule {
    fn name(&self) -> &'static str {
        "roster"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    /// RFC 6121 §2.6.1 (roster versioning) and §3.4.1 (subscription pre-approval).
    fn stream_features(&self) -> Vec<Element> {
        vec![elem("ver", ns::ROSTER_VER_FEATURE), elem("sub", ns::PRE_APPROVAL_FEATURE)]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_ROSTER)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let user = owner(server, iq)?;
        let Some(query) = iq.payload() else { return Err(StanzaError::bad_request()) };
        if iq.is_set {
            set(server, &user, query).await
        } else {
            get(server, iq, &user, query).await
        }
    }
}
