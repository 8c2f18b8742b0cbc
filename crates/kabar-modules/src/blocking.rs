//! XEP-0191: Blocking Command.
//!
//! * `<blocklist/>` get (§3.2): the account's blocked JIDs. The requesting resource is remembered
//!   (in this module's memory, by full JID, until its session closes) as *interested*: only such
//!   resources get block/unblock pushes (§3.3, §3.4).
//! * `<block/>` set (§3.3): one or more `<item jid=…/>`; none is `<bad-request/>`, an unparsable JID
//!   `<jid-malformed/>`. Each newly blocked JID that may currently see the user's presence (a roster
//!   contact with a `from`/`both` subscription, or a target of directed presence) receives
//!   unavailable presence from each of the user's available resources.
//! * `<unblock/>` set (§3.4, §3.5): the listed items, or every item when the element is empty. Each
//!   unblocked contact that may see the user's presence receives the user's current presence.
//! * Only the account itself may read or change its blocklist (`<forbidden/>` otherwise).
//!
//! Filtering ([`Event::Filter`]), with the JID matching rules of §6 (XEP-0016 §2.1, see
//! [`jid_matches`]):
//! * inbound from a blocked JID: presence is dropped silently, messages and IQ get/set bounce with
//!   `<service-unavailable/>` (so the user looks offline), IQ result/error are dropped;
//! * outbound to a blocked JID: refused with `<not-acceptable/>` plus `<blocked
//!   xmlns='urn:xmpp:blocking:errors'/>` (§3.3). That error comes back to the user "from" the
//!   blocked JID through the inbound filter; it alone is let through (remembered per refusal), so a
//!   blocked contact cannot forge one to get a stanza delivered;
//! * presence the server sends on a local user's behalf (broadcasts, probes) to a JID that user
//!   blocked is dropped too, except unavailable presence, so the user also looks offline to the
//!   blocked contact whatever the presence module routes.
//!
//! Stanzas between an account and its own resources, and to or from the server's own domain, are
//! never filtered: a user cannot cut itself off from its own server.
//!
//! Storage: key-value store `blocklist`, one key per blocked JID (its normalised string), empty
//! value. Lists are cached in memory on first use; the store stays authoritative (every change
//! writes the store first, then invalidates the cached copy).

// `StanzaError` (kabar-core's IQ error type) is what every helper here returns; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jid::{BareJid, FullJid, Jid};
use kabar_core::module::IqResult;
use kabar_core::stanza::{self, Kind};
use kabar_core::{ns, ErrorType, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_storage::StoreError;
use kabar_xml::{elem, Element, ElementExt};
use tracing::warn;

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// The key-value store name this module owns.
pub const STORE: &str = "blocklist";
/// Most JIDs one account may block; a block beyond it fails with `<policy-violation/>`.
pub const MAX_BLOCKED: usize = 10_000;
/// Cached blocklists kept before the cache is emptied and refilled on demand.
const MAX_CACHED: usize = 100_000;

/// Whether the blocklist item `item` covers the address `peer` (XEP-0191 §6, XEP-0016 §2.1):
/// `user@domain/resource` only that full JID; `user@domain` any of its resources; `domain/resource`
/// only that resource of the domain; `domain` the domain itself, every address at it and every
/// address at a subdomain of it.
pub fn jid_matches(item: &Jid, peer: &Jid) -> bool {
    let domain_eq = item.domain() == peer.domain();
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) => item == peer,
        (Some(node), None) => domain_eq && peer.node() == Some(node),
        (None, Some(res)) => domain_eq && peer.node().is_none() && peer.resource() == Some(res),
        (None, None) => {
            domain_eq || {
                let (p, d) = (peer.domain().as_str(), item.domain().as_str());
                p.len() > d.len() + 1 && p.ends_with(d) && p.as_bytes()[p.len() - d.len() - 1] == b'.'
            }
        }
    }
}

/// The error for a stanza the user sends to a JID it blocked (§3.3).
pub fn blocked_error() -> StanzaError {
    StanzaError::new(ErrorType::Cancel, "not-acceptable").with_app(elem("blocked", NS_BLOCKING_ERRORS))
}

#[derive(Default)]
struct Cache {
    lists: HashMap<BareJid, Arc<Vec<Jid>>>,
    /// Bumped on every change, so a load that raced with a change does not cache stale data.
    generation: u64,
}

pub struct BlockingModule {
    cache: Mutex<Cache>,
    /// Resources that requested the blocklist (§3.2) and so receive pushes.
    interested: Mutex<HashSet<FullJid>>,
    push_ids: AtomicU64,
    /// Outbound stanzas just refused with <blocked/>: (sender, addressee, id) as written in the
    /// stanza. The core routes the error back through the inbound filter, where it would look like
    /// a stanza from the blocked JID; an entry here lets exactly that error through once.
    pending_bounces: Mutex<VecDeque<(String, String, Option<String>)>>,
}

/// Refusals remembered at most; the core answers each synchronously, so a few suffice.
const MAX_PENDING_BOUNCES: usize = 1024;

impl Default for BlockingModule {
    fn default() -> Self {
        Self::new()
    }
}

fn backend_error(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "blocklist store failure");
    StanzaError::internal_server_error()
}

enum Change {
    Block(Vec<Jid>),
    Unblock(Vec<Jid>),
    UnblockAll,
}

impl BlockingModule {
    pub fn new() -> Self {
        BlockingModule {
            cache: Mutex::new(Cache::default()),
            interested: Mutex::new(HashSet::new()),
            push_ids: AtomicU64::new(1),
            pending_bounces: Mutex::new(VecDeque::new()),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_interested(&self) -> std::sync::MutexGuard<'_, HashSet<FullJid>> {
        self.interested.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account's blocked JIDs, from the cache or the store.
    async fn blocklist(&self, server: &Server, account: &BareJid) -> Result<Arc<Vec<Jid>>, StoreError> {
        let generation = {
            let cache = self.lock_cache();
            if let Some(list) = cache.lists.get(account) {
                return Ok(list.clone());
            }
            cache.generation
        };
        let rows = server.store.kv_list(account.as_str(), STORE).await?;
        let list: Vec<Jid> = rows
            .into_iter()
            .filter_map(|(key, _)| match kabar_core::stanza::parse_jid(&key) {
                Ok(j) => Some(j),
                Err(_) => {
                    warn!(account = %account, key = %key, "unparsable blocklist entry ignored");
                    None
                }
            })
            .collect();
        let list = Arc::new(list);
        let mut cache = self.lock_cache();
        if cache.generation == generation {
            if cache.lists.len() >= MAX_CACHED {
                cache.lists.clear();
            }
            cache.lists.insert(account.clone(), list.clone());
        }
        Ok(list)
    }

    fn invalidate(&self, account: &BareJid) {
        let mut cache = self.lock_cache();
        cache.generation = cache.generation.wrapping_add(1);
        cache.lists.remove(account);
    }

    async fn is_blocked(&self, server: &Server, account: &BareJid, peer: &Jid) -> bool {
        match self.blocklist(server, account).await {
            Ok(list) => list.iter().any(|item| jid_matches(item, peer)),
            Err(e) => {
                // The rest of the server cannot work without the store either; let the stanza pass
                // rather than silently swallowing everything.
                warn!(error = %e, account = %account, "blocklist unavailable; not filtering");
                false
            }
        }
    }

    async fn filter(&self, server: &Server, account: &BareJid, peer: &Jid, stanza: &Element, inbound: bool) -> Flow {
        let Some(kind) = Kind::of(stanza) else { return Flow::Continue };
        let peer_is_server = peer.node().is_none() && peer.resource().is_none() && server.is_local(peer);
        if peer_is_server || &peer.to_bare() == account {
            return Flow::Continue;
        }
        let typ = stanza::stanza_type(stanza).unwrap_or("");
        if inbound && typ == "error" && self.take_pending_bounce(stanza) {
            return Flow::Continue;
        }
        if self.is_blocked(server, account, peer).await {
            if !inbound {
                if typ != "error" {
                    self.remember_bounce(stanza);
                }
                return Flow::Reject(blocked_error());
            }
            return match kind {
                Kind::Presence => Flow::Handled,
                Kind::Message => Flow::Reject(StanzaError::service_unavailable()),
                Kind::Iq if typ == "get" || typ == "set" => Flow::Reject(StanzaError::service_unavailable()),
                Kind::Iq => Flow::Handled,
            };
        }
        // Presence a local user's server sends for it (broadcasts, probes) to someone that user
        // blocked: the blocked party must see the user as offline.
        if inbound
            && kind == Kind::Presence
            && typ != "unavailable"
            && typ != "error"
            && peer.node().is_some()
            && server.is_local(peer)
        {
            let recipient = stanza::to_jid(stanza).ok().flatten().unwrap_or_else(|| Jid::from(account.clone()));
            if self.is_blocked(server, &peer.to_bare(), &recipient).await {
                return Flow::Handled;
            }
        }
        Flow::Continue
    }

    fn remember_bounce(&self, stanza: &Element) {
        let (Some(from), Some(to)) = (stanza.attr("from"), stanza.attr("to")) else { return };
        let mut pending = self.pending_bounces.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING_BOUNCES {
            pending.pop_front();
        }
        pending.push_back((from.to_string(), to.to_string(), stanza.attr("id").map(str::to_string)));
    }

    /// Whether `error` is the bounce of a stanza this module just refused (and forgets it).
    fn take_pending_bounce(&self, error: &Element) -> bool {
        let is_blocked_error =
            error.get_child("error", ns::CLIENT).is_some_and(|e| e.has_child("blocked", NS_BLOCKING_ERRORS));
        if !is_blocked_error {
            return false;
        }
        let (Some(to), Some(from)) = (error.attr("to"), error.attr("from")) else { return false };
        let id = error.attr("id");
        let mut pending = self.pending_bounces.lock().unwrap_or_else(|p| p.into_inner());
        match pending.iter().position(|(s, a, i)| s == to && a == from && i.as_deref() == id) {
            Some(pos) => {
                pending.remove(pos);
                true
            }
            None => false,
        }
    }

    fn own_account(server: &Server, iq: &IqRequest) -> Result<BareJid, StanzaError> {
        match &iq.to_account {
            Some(account) if iq.from_account_itself() => Ok(account.clone()),
            Some(_) => Err(StanzaError::forbidden()),
            None if iq.from.node().is_some() && server.is_local(&iq.from) => Ok(iq.from.to_bare()),
            None => Err(StanzaError::forbidden()),
        }
    }

    fn parse_items(el: &Element) -> Result<Vec<Jid>, StanzaError> {
        let mut items = Vec::new();
        for item in el.children().filter(|c| c.name() == "item" && c.ns() == NS_BLOCKING) {
            let raw = item.attr("jid").ok_or_else(StanzaError::bad_request)?;
            let jid = kabar_core::stanza::parse_jid(raw).map_err(|_| StanzaError::jid_malformed())?;
            if !items.contains(&jid) {
                items.push(jid);
            }
        }
        Ok(items)
    }

    async fn apply(&self, server: &Server, account: &BareJid, change: &Change) -> Result<Vec<Jid>, StanzaError> {
        let user = account.as_str();
        let current = self.blocklist(server, account).await.map_err(backend_error)?;
        let result = match change {
            Change::Block(items) => {
                let new: Vec<Jid> = items.iter().filter(|j| !current.contains(j)).cloned().collect();
                if current.len() + new.len() > MAX_BLOCKED {
                    return Err(StanzaError::policy_violation()
                        .with_text(format!("a blocklist holds at most {MAX_BLOCKED} addresses")));
                }
                for jid in &new {
                    server.store.kv_put(user, STORE, jid.as_str(), b"").await.map_err(backend_error)?;
                }
                new
            }
            Change::Unblock(items) => {
                let mut removed = Vec::new();
                for jid in items {
                    if server.store.kv_delete(user, STORE, jid.as_str()).await.map_err(backend_error)? {
                        removed.push(jid.clone());
                    }
                }
                removed
            }
            Change::UnblockAll => {
                let rows = server.store.kv_list(user, STORE).await.map_err(backend_error)?;
                let mut removed = Vec::new();
                for (key, _) in rows {
                    server.store.kv_delete(user, STORE, &key).await.map_err(backend_error)?;
                    if let Ok(jid) = kabar_core::stanza::parse_jid(&key) {
                        removed.push(jid);
                    }
                }
                removed
            }
        };
        self.invalidate(account);
        Ok(result)
    }

    /// §3.3–§3.5 pushes to every interested resource of the account.
    async fn push(&self, server: &Server, account: &BareJid, payload: &Element) {
        let targets: Vec<FullJid> = {
            let interested = self.lock_interested();
            server.sessions.sessions(account).into_iter().map(|s| s.jid).filter(|j| interested.contains(j)).collect()
        };
        for target in targets {
            let id = self.push_ids.fetch_add(1, Ordering::Relaxed);
            let iq = elem("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("blocking-push-{id}"))
                .with_attr("to", target.as_str())
                .with_child(payload.clone());
            server.deliver(&target, iq).await;
        }
    }

    /// Sends presence from each available resource of `account` to every address covered by
    /// `items` that is allowed to see it (RFC 6121: a roster contact with a `from`/`both`
    /// subscription, or a target of the resource's directed presence): unavailable presence after
    /// a block, the current presence after an unblock.
    async fn presence_to(&self, server: &Server, account: &BareJid, items: &[Jid], available: bool) {
        if items.is_empty() {
            return;
        }
        let sessions: Vec<_> = server.sessions.sessions(account).into_iter().filter(|s| s.available).collect();
        if sessions.is_empty() {
            return;
        }
        let contacts: Vec<Jid> = match server.store.roster(account.as_str()).await {
            Ok((roster, _)) => roster
                .into_iter()
                .filter(|item| item.subscription.has_from())
                .filter_map(|item| kabar_core::stanza::parse_jid(&item.jid).ok())
                .filter(|jid| items.iter().any(|blocked| jid_matches(blocked, jid)))
                .collect(),
            Err(e) => {
                warn!(error = %e, account = %account, "roster unavailable; presence after (un)block limited to directed presence");
                Vec::new()
            }
        };
        for session in sessions {
            let mut targets = contacts.clone();
            for directed in &session.directed_to {
                if let Ok(jid) = kabar_core::stanza::parse_jid(directed) {
                    if items.iter().any(|blocked| jid_matches(blocked, &jid)) && !targets.contains(&jid) {
                        targets.push(jid);
                    }
                }
            }
            for target in targets {
                let presence = if available {
                    let Some(mut p) = session.presence.clone() else { continue };
                    p.remove_attr_str("id");
                    p
                } else {
                    elem("presence", ns::CLIENT).with_attr("type", "unavailable")
                };
                let presence = presence.with_attr("from", session.jid.as_str()).with_attr("to", target.as_str());
                server.route(presence).await;
            }
        }
    }
}

#[async_trait]
impl Module for BlockingModule {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_FILTER | H::ON_SESSION_STARTED | H::ON_SESSION_CLOSED | H::ON_ACCOUNT_DELETED
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_BLOCKING]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("blocklist", NS_BLOCKING), ("block", NS_BLOCKING), ("unblock", NS_BLOCKING)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let account = Self::own_account(server, iq)?;
        let Some(payload) = iq.payload() else { return Err(StanzaError::bad_request()) };
        match (payload.name(), iq.is_set) {
            ("blocklist", false) => {
                let list = self.blocklist(server, &account).await.map_err(backend_error)?;
                if let Ok(full) = iq.from.clone().try_into_full() {
                    self.lock_interested().insert(full);
                }
                let mut reply = elem("blocklist", NS_BLOCKING);
                for jid in list.iter() {
                    reply.append_child(elem("item", NS_BLOCKING).with_attr("jid", jid.as_str()));
                }
                Ok(Some(reply))
            }
            ("block", true) => {
                let items = Self::parse_items(payload)?;
                if items.is_empty() {
                    return Err(StanzaError::bad_request().with_text("<block/> needs at least one <item/>"));
                }
                let newly = self.apply(server, &account, &Change::Block(items.clone())).await?;
                let mut push = elem("block", NS_BLOCKING);
                for jid in &items {
                    push.append_child(elem("item", NS_BLOCKING).with_attr("jid", jid.as_str()));
                }
                self.push(server, &account, &push).await;
                self.presence_to(server, &account, &newly, false).await;
                Ok(None)
            }
            ("unblock", true) => {
                let items = Self::parse_items(payload)?;
                let (change, push) = if items.is_empty() {
                    (Change::UnblockAll, elem("unblock", NS_BLOCKING))
                } else {
                    let mut push = elem("unblock", NS_BLOCKING);
                    for jid in &items {
                        push.append_child(elem("item", NS_BLOCKING).with_attr("jid", jid.as_str()));
                    }
                    (Change::Unblock(items), push)
                };
                let removed = self.apply(server, &account, &change).await?;
                self.push(server, &account, &push).await;
                self.presence_to(server, &account, &removed, true).await;
                Ok(None)
            }
            _ => Err(StanzaError::bad_request()),
        }
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::Filter { account, peer, stanza, inbound } => {
                self.filter(server, account, peer, stanza, *inbound).await
            }
            Event::SessionStarted { jid } | Event::SessionClosed { jid, .. } => {
                self.lock_interested().remove(*jid);
                Flow::Continue
            }
            Event::AccountDeleted { jid, .. } => {
                self.invalidate(jid);
                self.lock_interested().retain(|full| &full.to_bare() != *jid);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::new(s).expect("valid jid")
    }

    /// XEP-0191 §6 / XEP-0016 §2.1: the four item forms and what each covers.
    #[test]
    fn xep0191_6_jid_matching_rules() {
        // user@domain/resource: only that resource.
        assert!(jid_matches(&j("a@x.org/r"), &j("a@x.org/r")));
        assert!(!jid_matches(&j("a@x.org/r"), &j("a@x.org/s")));
        assert!(!jid_matches(&j("a@x.org/r"), &j("a@x.org")));
        // user@domain: any resource, and the bare JID.
        assert!(jid_matches(&j("a@x.org"), &j("a@x.org")));
        assert!(jid_matches(&j("a@x.org"), &j("a@x.org/any")));
        assert!(!jid_matches(&j("a@x.org"), &j("b@x.org")));
        assert!(!jid_matches(&j("a@x.org"), &j("x.org")));
        // domain/resource: only that resource of the domain itself.
        assert!(jid_matches(&j("x.org/r"), &j("x.org/r")));
        assert!(!jid_matches(&j("x.org/r"), &j("a@x.org/r")));
        assert!(!jid_matches(&j("x.org/r"), &j("x.org")));
        // domain: the domain, anyone at it, and subdomains.
        assert!(jid_matches(&j("x.org"), &j("x.org")));
        assert!(jid_matches(&j("x.org"), &j("a@x.org/r")));
        assert!(jid_matches(&j("x.org"), &j("x.org/r")));
        assert!(jid_matches(&j("x.org"), &j("muc.x.org")));
        assert!(jid_matches(&j("x.org"), &j("room@muc.x.org/nick")));
        assert!(!jid_matches(&j("x.org"), &j("evilx.org")));
        assert!(!jid_matches(&j("x.org"), &j("x.org.evil")));
    }
}
