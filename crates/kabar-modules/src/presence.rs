//! RFC 6121 §3 (managing presence subscriptions) and §4 (exchanging presence), server side.
//!
//! Outbound: every presence a local session sends arrives as [`Event::OutboundPresence`] and is
//! answered `Handled`; this module routes whatever has to leave. Inbound: every presence for a
//! local account arrives as [`Event::InboundPresence`]. When both parties are local, the outbound
//! half routes the (bare-JID stamped) stanza with [`Server::route`], which comes back here as the
//! contact's inbound half — so each server-side rule is written once, as in the RFC.
//!
//! Subscription states follow the tables of RFC 6121 Appendix A: "Pending Out" is the roster
//! item's `ask`; "Pending In" (an unanswered inbound request, §3.1.3) is kept in the key-value
//! store [`PENDING_IN_STORE`](crate::rostermanager::PENDING_IN_STORE) (key: requester's bare JID,
//! value: the request) and redelivered when the user next sends initial presence. Pre-approvals
//! (§3.4) are the item's `approved` flag.
//!
//! Availability lives in the session directory: initial presence (§4.2) marks the session
//! available with its priority and presence (kept to answer probes, §4.3), directed presence
//! (§4.6) is remembered in `directed_to`, and unavailable presence (§4.5) — sent, or implied by
//! the session ending — clears it and tells everyone who saw the session online.

use async_trait::async_trait;
use jid::{BareJid, FullJid, Jid};
use kabar_core::stanza::{self, StanzaError};
use kabar_core::{ns, Event, Flow, Module, Server};
use kabar_storage::{RosterItem, StoreError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::{debug, warn};

use crate::rostermanager::{self as rm};

/// Most directed-presence recipients remembered per session (RFC 6121 §4.6); presence beyond it is
/// still routed, only not followed by unavailable presence at logout.
pub const MAX_DIRECTED_PER_SESSION: usize = 1000;

pub struct PresenceModule;

impl PresenceModule {
    pub fn new() -> Self {
        PresenceModule
    }
}

impl Default for PresenceModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for PresenceModule {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_OUTBOUND_PRESENCE | H::ON_INBOUND_PRESENCE | H::ON_SESSION_CLOSED | H::ON_ACCOUNT_DELETED
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::OutboundPresence { from, stanza } => {
                outbound(server, from, stanza).await;
                Flow::Handled
            }
            Event::InboundPresence { to, stanza } => {
                inbound(server, to, stanza).await;
                Flow::Handled
            }
            Event::SessionClosed { jid, was_available, directed_to } => {
                session_closed(server, jid, *was_available, directed_to).await;
                Flow::Continue
            }
            Event::AccountDeleted { jid, roster } => {
                account_deleted(server, jid, roster).await;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

fn presence_stanza(kind: Option<&str>, from: &str, to: &str) -> Element {
    let mut p = elem("presence", ns::CLIENT).with_attr("from", from).with_attr("to", to);
    if let Some(kind) = kind {
        p.set_attr_str("type", kind);
    }
    p
}

fn addressed(stanza: &Element, to: &str) -> Element {
    let mut p = stanza.clone();
    p.set_attr_str("to", to);
    p
}

/// RFC 6121 §4.7.2.3: an integer from -128 to +127, 0 when absent. An unreadable value is taken
/// as 0 rather than refusing the user's presence.
fn priority_of(stanza: &Element) -> i8 {
    stanza.get_child("priority", ns::CLIENT).and_then(|p| p.text().trim().parse::<i8>().ok()).unwrap_or(0)
}

fn is_subscription_type(t: &str) -> bool {
    matches!(t, "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
}

async fn roster_of(server: &Server, user: &BareJid) -> Vec<RosterItem> {
    match server.store.roster(user.as_str()).await {
        Ok((items, _)) => items,
        Err(e) => {
            warn!(user = %user, error = %e, "cannot read roster for presence broadcast");
            Vec::new()
        }
    }
}

fn log_store(e: &StoreError, what: &str) {
    warn!(error = %e, "{what}: storage failed");
}

// === outbound ====================================================================================

async fn outbound(server: &Server, from: &FullJid, stanza: &Element) {
    let to = match stanza::to_jid(stanza) {
        Ok(to) => to,
        Err(err) => return server.bounce(stanza, err).await,
    };
    match (stanza::stanza_type(stanza), to) {
        (None | Some("unavailable"), None) => broadcast(server, from, stanza).await,
        (None | Some("unavailable"), Some(to)) => directed(server, from, stanza, &to).await,
        // Presence errors go where they are addressed (nowhere without a 'to').
        (Some("error"), Some(_)) => server.route(stanza.clone()).await,
        (Some("error"), None) => {}
        (Some(kind), Some(to)) if is_subscription_type(kind) => {
            outbound_subscription(server, from, stanza, kind, &to).await
        }
        // A client may probe (RFC 6121 §4.3); the contact's server answers for the contact.
        (Some("probe"), Some(to)) => server.route(addressed(stanza, to.to_bare().as_str())).await,
        // RFC 6120 §8.2.1 / RFC 6121 §4.7.1: unknown type, or a subscription stanza with nobody to
        // subscribe to.
        _ => server.bounce(stanza, StanzaError::bad_request()).await,
    }
}

/// Presence without 'to': initial (§4.2), subsequent (§4.4) or unavailable (§4.5).
async fn broadcast(server: &Server, from: &FullJid, stanza: &Element) {
    let user = from.to_bare();
    let Some(info) = server.sessions.get(from) else { return };
    let mut presence = stanza.clone();
    presence.remove_attr_str("to");
    presence.set_attr_str("from", from.as_str());
    let roster = roster_of(server, &user).await;

    if stanza::stanza_type(stanza).is_none() {
        let initial = !info.available;
        let priority = priority_of(stanza);
        let mut stored = Some(presence.clone());
        server.sessions.update(from, &mut |s| {
            s.available = true;
            s.priority = priority;
            if let Some(p) = stored.take() {
                s.presence = Some(p);
            }
        });
        debug!(jid = %from, initial, priority, "available presence");
        // §4.2.2 / §4.4.2: to every contact subscribed to the user (subscription from or both) …
        for item in roster.iter().filter(|i| i.subscription.has_from()) {
            server.route(addressed(&presence, &item.jid)).await;
        }
        // … and to all of the user's available resources, including the one that sent it.
        for s in server.sessions.sessions(&user) {
            if s.available {
                server.deliver(&s.jid, addressed(&presence, s.jid.as_str())).await;
            }
        }
        if initial {
            // §4.2.2 (and §4.3): probe every contact the user is subscribed to; their servers
            // answer to this resource.
            for item in roster.iter().filter(|i| i.subscription.has_to()) {
                server.route(presence_stanza(Some("probe"), from.as_str(), &item.jid)).await;
            }
            // The user's other available resources become visible to the new one.
            for s in server.sessions.sessions(&user) {
                if s.available && &s.jid != from {
                    if let Some(p) = &s.presence {
                        let mut p = addressed(p, from.as_str());
                        p.set_attr_str("from", s.jid.as_str());
                        server.deliver(from, p).await;
                    }
                }
            }
            // §3.1.3: unanswered subscription requests are delivered when the user next has an
            // available resource.
            match rm::pending_in_all(server, &user).await {
                Ok(requests) => {
                    for request in requests {
                        server.deliver(from, request).await;
                    }
                }
                Err(e) => log_store(&e, "reading pending subscription requests"),
            }
            server.notify(Event::InitialPresence { jid: from }).await;
        }
    } else {
        // §4.5.2: unavailable.
        server.sessions.update(from, &mut |s| {
            s.available = false;
            s.priority = 0;
            s.presence = None;
            s.directed_to.clear();
        });
        debug!(jid = %from, was_available = info.available, "unavailable presence");
        if info.available {
            for item in roster.iter().filter(|i| i.subscription.has_from()) {
                server.route(addressed(&presence, &item.jid)).await;
            }
            for s in server.sessions.sessions(&user) {
                if s.available && &s.jid != from {
                    server.deliver(&s.jid, addressed(&presence, s.jid.as_str())).await;
                }
            }
        }
        // §4.6.3: everyone who got directed presence learns the resource is gone.
        for to in &info.directed_to {
            server.route(addressed(&presence, to)).await;
        }
    }
}

/// §4.6: directed available / unavailable presence.
async fn directed(server: &Server, from: &FullJid, stanza: &Element, to: &Jid) {
    let user = from.to_bare();
    let to_bare = to.to_bare();
    if to_bare != user {
        let unavailable = stanza::stanza_type(stanza) == Some("unavailable");
        let available_now = server.sessions.get(from).is_some_and(|s| s.available);
        // A contact subscribed to the user's presence already gets the broadcasts (including the
        // final unavailable) while the resource is available; no need to remember it (§4.6.2).
        let gets_broadcasts = available_now
            && matches!(rm::get_item(server, &user, &to_bare).await, Ok(Some(item)) if item.subscription.has_from());
        let target = to.as_str().to_string();
        server.sessions.update(from, &mut |s| {
            if unavailable {
                s.directed_to.retain(|d| d != &target);
            } else if !gets_broadcasts
                && !s.directed_to.contains(&target)
                && s.directed_to.len() < MAX_DIRECTED_PER_SESSION
            {
                s.directed_to.push(target.clone());
            }
        });
    }
    server.route(stanza.clone()).await;
}

/// What the user's server did about an outbound "subscribed".
enum Approval {
    /// §3.1.5: answered a pending request: route the approval and the user's presence.
    Approved,
    /// §3.4: no pending request: recorded as a pre-approval, nothing leaves the server.
    PreApproved,
    /// The contact is already subscribed: nothing to do.
    Nothing,
}

/// §3.1.2, §3.1.5, §3.2.2, §3.3.2 and Appendix A.2: a subscription stanza from a local user.
async fn outbound_subscription(server: &Server, from: &FullJid, stanza: &Element, kind: &str, to: &Jid) {
    let user = from.to_bare();
    // §3.1.2: subscriptions are between bare JIDs; a full 'to' is treated as the bare JID.
    let contact = to.to_bare();
    if contact == user {
        debug!(user = %user, kind, "subscription stanza to oneself ignored");
        return;
    }
    // §3.1.2: the server stamps the bare JID of the user as 'from'.
    let mut out = stanza.clone();
    out.set_attr_str("from", user.as_str());
    out.set_attr_str("to", contact.as_str());

    let result: Result<(), StoreError> = async {
        match kind {
            "subscribe" => {
                // A.2.1: None → None + Pending Out, From → From + Pending Out; the request is
                // routed in every state (the contact's server auto-replies if already subscribed).
                {
                    let _guard = rm::lock_user(&user).await;
                    let mut item = rm::get_item(server, &user, &contact)
                        .await?
                        .unwrap_or_else(|| RosterItem { jid: contact.to_string(), ..Default::default() });
                    if !item.subscription.has_to() && !item.ask {
                        item.ask = true;
                        rm::save_and_push(server, &user, &item).await?;
                    }
                }
                server.route(out).await;
            }
            "unsubscribe" => {
                // A.2.2: To → None, Both → From, and Pending Out is cancelled; routed always.
                {
                    let _guard = rm::lock_user(&user).await;
                    if let Some(mut item) = rm::get_item(server, &user, &contact).await? {
                        let new = rm::remove_to(item.subscription);
                        if new != item.subscription || item.ask {
                            item.subscription = new;
                            item.ask = false;
                            rm::save_and_push(server, &user, &item).await?;
                        }
                    }
                }
                server.route(out).await;
            }
            "subscribed" => {
                // A.2.3: Pending In → From (None) or Both (To); without a pending request it is a
                // pre-approval (§3.4.1).
                let outcome = {
                    let _guard = rm::lock_user(&user).await;
                    let pending = rm::has_pending_in(server, &user, &contact).await?;
                    let existing = rm::get_item(server, &user, &contact).await?;
                    match existing {
                        Some(item) if item.subscription.has_from() => {
                            if pending {
                                rm::clear_pending_in(server, &user, &contact).await?;
                            }
                            Approval::Nothing
                        }
                        existing => {
                            let mut item = existing
                                .unwrap_or_else(|| RosterItem { jid: contact.to_string(), ..Default::default() });
                            if pending {
                                item.subscription = rm::add_from(item.subscription);
                                item.approved = false;
                                rm::save_and_push(server, &user, &item).await?;
                                rm::clear_pending_in(server, &user, &contact).await?;
                                Approval::Approved
                            } else {
                                if !item.approved {
                                    item.approved = true;
                                    rm::save_and_push(server, &user, &item).await?;
                                }
                                Approval::PreApproved
                            }
                        }
                    }
                };
                match outcome {
                    Approval::Approved => {
                        server.route(out).await;
                        // §3.1.5: the new subscriber gets the user's current presence.
                        rm::send_available_presence(server, &user, &Jid::from(contact.clone())).await;
                    }
                    Approval::PreApproved => debug!(user = %user, contact = %contact, "subscription pre-approved"),
                    Approval::Nothing => {
                        debug!(user = %user, contact = %contact, "already subscribed; approval not routed")
                    }
                }
            }
            "unsubscribed" => {
                // A.2.4: From → None, Both → To, Pending In → refused; also cancels a pre-approval
                // (§3.4.1), which alone is not routed.
                let (route_it, had_from) = {
                    let _guard = rm::lock_user(&user).await;
                    let pending = rm::clear_pending_in(server, &user, &contact).await?;
                    let mut had_from = false;
                    let mut was_approved = false;
                    if let Some(mut item) = rm::get_item(server, &user, &contact).await? {
                        had_from = item.subscription.has_from();
                        was_approved = item.approved && !had_from;
                        let new = rm::remove_from(item.subscription);
                        if new != item.subscription || item.approved {
                            item.subscription = new;
                            item.approved = false;
                            rm::save_and_push(server, &user, &item).await?;
                        }
                    }
                    (had_from || pending || !was_approved, had_from)
                };
                if route_it {
                    server.route(out).await;
                }
                // §3.2.2: the former subscriber sees the user go offline.
                if had_from {
                    rm::send_unavailable_presence(server, &user, &Jid::from(contact.clone())).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        log_store(&e, "outbound subscription");
        server.bounce(stanza, StanzaError::internal_server_error()).await;
    }
}

// === inbound =====================================================================================

async fn inbound(server: &Server, to: &Jid, stanza: &Element) {
    let kind = stanza::stanza_type(stanza);
    // Errors the server itself bounced may carry no 'from'; everything else names its sender.
    if let None | Some("unavailable") | Some("error") = kind {
        return deliver_plain(server, to, stanza).await;
    }
    let from = match stanza::from_jid(stanza) {
        Ok(Some(from)) => from,
        _ => return,
    };
    match kind {
        Some(kind) if is_subscription_type(kind) => inbound_subscription(server, to, &from, kind, stanza).await,
        Some("probe") => probe(server, to, &from).await,
        _ => server.bounce(stanza, StanzaError::bad_request()).await,
    }
}

/// RFC 6121 §8.5.2.1.2 / §8.5.3.1: available, unavailable and error presence to a bare JID goes
/// to every available resource, to a full JID only to that resource if it is connected
/// (§8.5.3.2.2: otherwise silently dropped).
async fn deliver_plain(server: &Server, to: &Jid, stanza: &Element) {
    match to.try_as_full() {
        Ok(full) => {
            if server.sessions.get(full).is_some() {
                server.deliver(full, stanza.clone()).await;
            }
        }
        Err(bare) => server.deliver_to_available(bare, stanza).await,
    }
}

/// Subscription stanzas other than requests go to the resources that care about the roster:
/// interested ones (§3.1.6, §3.2.3, §3.3.3) and available ones.
async fn deliver_to_user(server: &Server, user: &BareJid, stanza: &Element) {
    for s in server.sessions.sessions(user) {
        if s.available || s.interested {
            server.deliver(&s.jid, stanza.clone()).await;
        }
    }
}

enum Request {
    /// §3.1.3: the contact is already subscribed, or pre-approved: answer "subscribed" for the user.
    AutoApprove,
    /// Deliver the request to the available resources (and keep it as Pending In).
    Deliver,
    /// Already pending: the user has it (or will get it at next login); do not repeat it.
    Ignore,
}

/// §3.1.3, §3.1.6, §3.2.3, §3.3.3 and Appendix A.3: a subscription stanza for a local user.
async fn inbound_subscription(server: &Server, to: &Jid, from: &Jid, kind: &str, stanza: &Element) {
    let user = to.to_bare();
    let contact = from.to_bare();
    if contact == user {
        return;
    }
    // §8.5.1: subscription stanzas for an account that does not exist are silently ignored.
    if !server.account_exists(&user).await {
        debug!(to = %user, kind, "subscription stanza for unknown account ignored");
        return;
    }
    // §3.1.3: a request to a full JID is treated as sent to the bare JID; both addresses bare.
    let mut delivered = stanza.clone();
    delivered.set_attr_str("from", contact.as_str());
    delivered.set_attr_str("to", user.as_str());
    let contact_jid = Jid::from(contact.clone());

    let result: Result<(), StoreError> = async {
        match kind {
            "subscribe" => {
                // A.3.1.
                let action = {
                    let _guard = rm::lock_user(&user).await;
                    let item = rm::get_item(server, &user, &contact).await?;
                    match item {
                        Some(item) if item.subscription.has_from() => Request::AutoApprove,
                        // §3.4: a pre-approved request is approved without asking the user.
                        Some(mut item) if item.approved => {
                            item.subscription = rm::add_from(item.subscription);
                            item.approved = false;
                            rm::save_and_push(server, &user, &item).await?;
                            rm::clear_pending_in(server, &user, &contact).await?;
                            Request::AutoApprove
                        }
                        _ => {
                            if rm::has_pending_in(server, &user, &contact).await? {
                                Request::Ignore
                            } else {
                                rm::set_pending_in(server, &user, &contact, &delivered).await?;
                                Request::Deliver
                            }
                        }
                    }
                };
                match action {
                    Request::AutoApprove => {
                        server.route(rm::subscription_stanza("subscribed", &user, &contact)).await;
                        rm::send_available_presence(server, &user, &contact_jid).await;
                    }
                    Request::Deliver => {
                        // Delivered now to available resources; kept for the ones to come.
                        server.deliver_to_available(&user, &delivered).await;
                    }
                    Request::Ignore => debug!(user = %user, contact = %contact, "subscription request already pending"),
                }
            }
            "unsubscribe" => {
                // A.3.2: From → None, Both → To; a pending request is withdrawn.
                let (deliver, had_from) = {
                    let _guard = rm::lock_user(&user).await;
                    let pending = rm::clear_pending_in(server, &user, &contact).await?;
                    let mut had_from = false;
                    if let Some(mut item) = rm::get_item(server, &user, &contact).await? {
                        had_from = item.subscription.has_from();
                        if had_from {
                            item.subscription = rm::remove_from(item.subscription);
                            rm::save_and_push(server, &user, &item).await?;
                        }
                    }
                    (pending || had_from, had_from)
                };
                if deliver {
                    deliver_to_user(server, &user, &delivered).await;
                }
                if had_from {
                    // The former subscriber no longer sees the user as online.
                    rm::send_unavailable_presence(server, &user, &contact_jid).await;
                }
            }
            "subscribed" => {
                // A.3.3: only answers a request the user made (Pending Out): None → To, From → Both.
                let changed = {
                    let _guard = rm::lock_user(&user).await;
                    match rm::get_item(server, &user, &contact).await? {
                        Some(mut item) if item.ask => {
                            item.subscription = rm::add_to(item.subscription);
                            item.ask = false;
                            rm::save_and_push(server, &user, &item).await?;
                            true
                        }
                        _ => false,
                    }
                };
                if changed {
                    deliver_to_user(server, &user, &delivered).await;
                }
            }
            "unsubscribed" => {
                // A.3.4: To → None, Both → From, Pending Out → refused.
                let changed = {
                    let _guard = rm::lock_user(&user).await;
                    match rm::get_item(server, &user, &contact).await? {
                        Some(mut item) if item.ask || item.subscription.has_to() => {
                            item.subscription = rm::remove_to(item.subscription);
                            item.ask = false;
                            rm::save_and_push(server, &user, &item).await?;
                            true
                        }
                        _ => false,
                    }
                };
                if changed {
                    deliver_to_user(server, &user, &delivered).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        log_store(&e, "inbound subscription");
    }
}

/// §4.3.2: the server answers probes for its users. A subscribed prober (subscription from/both,
/// or the account itself) gets the last presence of each available resource, or unavailable
/// presence from the bare JID when none is available; a prober the user sent directed presence to
/// gets that resource's presence; anyone else gets nothing (the user's presence is not revealed).
async fn probe(server: &Server, to: &Jid, from: &Jid) {
    let user = to.to_bare();
    let prober = from.to_bare();
    if !server.account_exists(&user).await {
        return;
    }
    let subscribed = prober == user
        || match rm::get_item(server, &user, &prober).await {
            Ok(Some(item)) => item.subscription.has_from(),
            Ok(None) => false,
            Err(e) => {
                log_store(&e, "probe");
                false
            }
        };
    let mut sent = 0;
    for s in server.sessions.sessions(&user) {
        if !s.available {
            continue;
        }
        let directed = s.directed_to.iter().any(|d| d == from.as_str() || d == prober.as_str());
        if subscribed || directed {
            if let Some(p) = &s.presence {
                let mut p = addressed(p, from.as_str());
                p.set_attr_str("from", s.jid.as_str());
                server.route(p).await;
                sent += 1;
            }
        }
    }
    if sent == 0 && subscribed {
        server.route(presence_stanza(Some("unavailable"), user.as_str(), from.as_str())).await;
    }
}

/// §4.5 / §4.6.3: a session ended without saying goodbye (or after it): whoever saw it available
/// gets unavailable presence. The session is already gone from the directory.
async fn session_closed(server: &Server, jid: &FullJid, was_available: bool, directed_to: &[String]) {
    let user = jid.to_bare();
    let unavailable = elem("presence", ns::CLIENT).with_attr("type", "unavailable").with_attr("from", jid.as_str());
    if was_available {
        for item in roster_of(server, &user).await.iter().filter(|i| i.subscription.has_from()) {
            server.route(addressed(&unavailable, &item.jid)).await;
        }
        for s in server.sessions.sessions(&user) {
            if s.available && &s.jid != jid {
                server.deliver(&s.jid, addressed(&unavailable, s.jid.as_str())).await;
            }
        }
    }
    for to in directed_to {
        server.route(addressed(&unavailable, to)).await;
    }
}

/// An account that goes away cancels its subscriptions both ways, so contacts' rosters do not keep
/// a dead subscription (whatever of the roster is still readable when the event arrives).
async fn account_deleted(server: &Server, user: &BareJid, roster: &[kabar_storage::RosterItem]) {
    for item in roster {
        let Ok(contact) = kabar_core::stanza::parse_bare(&item.jid) else { continue };
        if item.subscription.has_to() || item.ask {
            server.route(rm::subscription_stanza("unsubscribe", user, &contact)).await;
        }
        if item.subscription.has_from() {
            server.route(rm::subscription_stanza("unsubscribed", user, &contact)).await;
        }
    }
}
