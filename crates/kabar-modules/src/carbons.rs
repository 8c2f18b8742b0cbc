//! XEP-0280: Message Carbons (with the XEP-0334 `<no-copy/>` hint).
//!
//! * `<enable/>` / `<disable/>` (§4, §5): an IQ-set from one of the account's own sessions, with no
//!   `to`, or to the server's domain or the account's own bare JID. Repeating either is not an error
//!   (§9.1). A get is `<bad-request/>`; a request from anything but a local session, or addressed to
//!   another account, is `<not-allowed/>`. The state lives in this module's memory, per full JID,
//!   until the session closes ([`Event::SessionClosed`]) or the account is deleted.
//! * Sent carbons (§7): every message a local session sends that is eligible (below) is copied, as
//!   `<sent/>`, to each *other* carbons-enabled available resource of the sender, whether or not the
//!   sending resource enabled carbons. A message addressed to the sender's own account gets no sent
//!   copies: the resources it reaches get the message itself, and the rest get received copies.
//! * Received carbons (§6): after the core delivered an eligible message for a local account
//!   ([`Event::MessageDelivered`], also when it went to offline storage), each carbons-enabled
//!   available resource of the account that did not get the original receives a `<received/>`
//!   copy — so a message to the bare JID that reached every resource is not duplicated. The sending
//!   resource of a message between two resources of the same account gets no copy of it either.
//! * Each copy is `<message from='account bare JID' to='receiving full JID' type='original type'>
//!   <sent|received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>` + the
//!   original (with its `from` and `to`, and whatever earlier modules added) and is handed straight
//!   to the session ([`Server::deliver`]), never routed.
//!
//! Eligibility ([`eligible`], the recommended rules of §6.1, including the MUC rules):
//! * never: a message with `<private xmlns='urn:xmpp:carbons:2'/>` (§8) or `<no-copy
//!   xmlns='urn:xmpp:hints'/>` (XEP-0334 §4.2); a message that itself carries a carbons
//!   `<sent/>`/`<received/>` (a carbon is never carbon-copied); type `groupchat`; type `headline`
//!   (notifications, not conversations); a received message with `<x
//!   xmlns='http://jabber.org/protocol/muc#user'/>` that is not an invitation (sent by a MUC room,
//!   or a private message from a MUC participant, which the room already copies to each joined
//!   client);
//! * otherwise: type `chat` (including chat-type XEP-0085 chat states, XEP-0184 receipts and
//!   XEP-0333 markers, and MUC private messages the user sends); type `normal` (or an unknown type,
//!   RFC 6121 §5.2.2) with a `<body/>`, an IM payload (XEP-0085, XEP-0184, XEP-0333, XEP-0249
//!   direct invitation, XEP-0353 Jingle message) or a XEP-0045 mediated invitation; type `error`
//!   when it answers an eligible message — as far as can be told without tracking messages: the
//!   error echoes a body or an IM payload, or it is a received bounce from a bare JID (where chats
//!   start).
//!
//! The `<private/>` element is left in the message (the invariant that routed stanzas keep their
//! tree; §8's "SHOULD remove" is not followed), so the recipient's server, if it is another one,
//! also knows not to copy it.
//!
//! Forged carbons (§11): the server never routes a carbon, it hands copies straight to sessions.
//! So any message routed to a local account that carries a carbons `<sent/>` or `<received/>`
//! child is dropped silently by the inbound filter: from anyone else it is a forgery (a client must
//! accept carbons only from its own bare JID, and the core stamps the true sender); from the
//! account's own bare JID it can only be a copy re-routed from a closed session's queue, which
//! must not be delivered to another resource as if it were new.
//!
//! Advertises `urn:xmpp:carbons:2` and `urn:xmpp:carbons:rules:0` (§3: the server follows the
//! recommended rules) on the server.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use jid::{BareJid, FullJid};
use kabar_core::module::IqResult;
use kabar_core::{ns, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
/// Advertised when the server applies the recommended eligibility rules of §6.1.
pub const NS_CARBONS_RULES: &str = "urn:xmpp:carbons:rules:0";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_HINTS: &str = "urn:xmpp:hints";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Namespaces of payloads "typically used in IM" (§6.1) that make a message without a body eligible.
const IM_PAYLOAD_NS: &[&str] = &[
    "http://jabber.org/protocol/chatstates", // XEP-0085
    "urn:xmpp:receipts",                     // XEP-0184
    "urn:xmpp:chat-markers:0",               // XEP-0333
    "jabber:x:conference",                   // XEP-0249 direct MUC invitation
    "urn:xmpp:jingle-message:0",             // XEP-0353
    "urn:xmpp:jingle-message:1",
];

/// Which copy a message would become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by one of the account's sessions (`<sent/>`, §7).
    Sent,
    /// Delivered to the account (`<received/>`, §6).
    Received,
}

impl Direction {
    fn element_name(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Whether the message carries a carbons `<sent/>` or `<received/>` wrapper.
pub fn is_carbon(stanza: &Element) -> bool {
    stanza.has_child("sent", NS_CARBONS) || stanza.has_child("received", NS_CARBONS)
}

fn has_im_payload(stanza: &Element) -> bool {
    stanza.has_child("body", ns::CLIENT)
        || stanza
            .children()
            .any(|c| IM_PAYLOAD_NS.contains(&c.ns().as_str()))
}

/// Whether `stanza` (a message, with `from` and `to` as routed) gets carbon copies; see the module
/// documentation for the rules.
pub fn eligible(stanza: &Element, direction: Direction) -> bool {
    if stanza.name() != "message" || stanza.ns() != ns::CLIENT {
        return false;
    }
    if stanza.has_child("private", NS_CARBONS)
        || stanza.has_child("no-copy", NS_HINTS)
        || is_carbon(stanza)
    {
        return false;
    }
    let kind = stanza.attr("type").unwrap_or("normal");
    if kind == "groupchat" || kind == "headline" {
        return false;
    }
    let muc_user = stanza.get_child("x", NS_MUC_USER);
    let muc_invite = muc_user.is_some_and(|x| x.has_child("invite", NS_MUC_USER));
    if direction == Direction::Received && muc_user.is_some() && !muc_invite {
        // From a room: its own messages, or a participant's private message (§6.1 MUC rules).
        return false;
    }
    match kind {
        "chat" => true,
        "error" => {
            has_im_payload(stanza)
                || (direction == Direction::Received
                    && stanza
                        .attr("from")
                        .and_then(|f| kabar_core::stanza::parse_jid(f).ok())
                        .is_some_and(|f| f.resource().is_none()))
        }
        // "normal" and unknown types (RFC 6121 §5.2.2).
        _ => has_im_payload(stanza) || muc_invite,
    }
}

/// The copy of `original` for the resource `to` of `account`.
pub fn wrap(direction: Direction, account: &BareJid, to: &FullJid, original: &Element) -> Element {
    let mut copy = elem("message", ns::CLIENT)
        .with_attr("from", account.as_str())
        .with_attr("to", to.as_str());
    if let Some(kind) = original.attr("type") {
        copy.set_attr_str("type", kind);
    }
    copy.with_child(
        elem(direction.element_name(), NS_CARBONS)
            .with_child(elem("forwarded", NS_FORWARD).with_child(original.clone())),
    )
}

pub struct CarbonsModule {
    /// Sessions that enabled carbons.
    enabled: Mutex<HashSet<FullJid>>,
}

impl Default for CarbonsModule {
    fn default() -> Self {
        Self::new()
    }
}

impl CarbonsModule {
    pub fn new() -> Self {
        CarbonsModule {
            enabled: Mutex::new(HashSet::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<FullJid>> {
        self.enabled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the session `jid` has carbons enabled.
    pub fn is_enabled(&self, jid: &FullJid) -> bool {
        self.lock().contains(jid)
    }

    /// The account's available, carbons-enabled resources, minus `except`.
    fn targets(&self, server: &Server, account: &BareJid, except: &[&FullJid]) -> Vec<FullJid> {
        let sessions = server.sessions.sessions(account);
        let enabled = self.lock();
        sessions
            .into_iter()
            .filter(|s| s.available && enabled.contains(&s.jid) && !except.contains(&&s.jid))
            .map(|s| s.jid)
            .collect()
    }

    async fn send_copies(
        &self,
        server: &Server,
        direction: Direction,
        account: &BareJid,
        targets: &[FullJid],
        original: &Element,
    ) {
        for target in targets {
            server
                .deliver(target, wrap(direction, account, target, original))
                .await;
        }
    }
}

#[async_trait]
impl Module for CarbonsModule {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_FILTER_IN_MESSAGE | H::ON_MESSAGE_DELIVERED | H::ON_SESSION_STARTED | H::ON_SESSION_CLOSED | H::ON_ACCOUNT_DELETED | H::OUTBOUND_MESSAGE
    }

    fn bind2_features(&self) -> Vec<&'static str> {
        vec![NS_CARBONS]
    }

    /// XEP-0386 §4: `<enable xmlns='urn:xmpp:carbons:2'/>` inside Bind2 turns carbons on for the
    /// new session; there is nothing to report in `<bound/>`.
    async fn bind2_enable(&self, _server: &Server, jid: &FullJid, request: &Element) -> Option<Element> {
        if request.is("enable", NS_CARBONS) {
            self.lock().insert(jid.clone());
        }
        None
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_CARBONS, NS_CARBONS_RULES]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("enable", NS_CARBONS), ("disable", NS_CARBONS)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        // §4.1, §5.1: only the account's own local sessions may switch their carbons.
        let session = match iq.from.try_as_full() {
            Ok(full) if server.is_local(&iq.from) && iq.from_account_itself() => full.clone(),
            _ => return Err(StanzaError::not_allowed()),
        };
        if server.sessions.get(&session).is_none() {
            return Err(StanzaError::not_allowed());
        }
        if !iq.is_set {
            return Err(StanzaError::bad_request());
        }
        let Some(payload) = iq.payload() else {
            return Err(StanzaError::bad_request());
        };
        match payload.name() {
            "enable" => {
                self.lock().insert(session);
            }
            "disable" => {
                self.lock().remove(&session);
            }
            _ => return Err(StanzaError::bad_request()),
        }
        Ok(None)
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::Filter {
                stanza,
                inbound: true,
                ..
            } if stanza.name() == "message" && is_carbon(stanza) => {
                // §11: see the module documentation.
                Flow::Handled
            }
            Event::MessageDelivered {
                account,
                to,
                stanza,
            } => {
                if eligible(stanza, Direction::Received) {
                    let sender = stanza.attr("from").and_then(|f| FullJid::new(f).ok());
                    let mut except: Vec<&FullJid> = to.iter().collect();
                    if let Some(sender) = sender.as_ref().filter(|s| s.to_bare() == **account) {
                        except.push(sender);
                    }
                    let targets = self.targets(server, account, &except);
                    self.send_copies(server, Direction::Received, account, &targets, stanza)
                        .await;
                }
                Flow::Continue
            }
            Event::SessionStarted { jid } | Event::SessionClosed { jid, .. } => {
                self.lock().remove(*jid);
                Flow::Continue
            }
            Event::AccountDeleted { jid, .. } => {
                self.lock().retain(|s| s.to_bare() != **jid);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    async fn outbound_message(&self, server: &Server, from: &FullJid, stanza: &mut Element) {
        if !eligible(stanza, Direction::Sent) {
            return;
        }
        let account = from.to_bare();
        let to_own_account = stanza
            .attr("to")
            .and_then(|t| kabar_core::stanza::parse_jid(t).ok())
            .is_some_and(|t| t.to_bare() == account);
        if to_own_account {
            return;
        }
        let targets = self.targets(server, &account, &[from]);
        self.send_copies(server, Direction::Sent, &account, &targets, stanza)
            .await;
    }
}
