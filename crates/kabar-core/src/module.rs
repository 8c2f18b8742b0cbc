//! The module contract (Prosody's mod_* model). A module declares what it answers and which events
//! it hooks; the core calls it. Modules keep their own state and talk to each other only through
//! events and the [`Server`](crate::Server) API.

use async_trait::async_trait;
use jid::{BareJid, FullJid, Jid};
use kabar_xml::Element;

use crate::server::Server;
use crate::stanza::StanzaError;

/// An IQ get/set addressed to the server, or to a local account's bare JID (which the server
/// answers on the account's behalf, RFC 6120 §10.5.3.3).
#[derive(Debug)]
pub struct IqRequest {
    /// The sender (already stamped by the core).
    pub from: Jid,
    /// `None` when addressed to the server itself (no `to`, or the domain).
    pub to_account: Option<BareJid>,
    pub is_set: bool,
    /// The whole `<iq/>`.
    pub stanza: Element,
}

impl IqRequest {
    pub fn payload(&self) -> Option<&Element> {
        self.stanza.children().next()
    }
    /// Whether the sender is the account the request is addressed to (or the server is addressed
    /// by one of the account's own sessions).
    pub fn from_account_itself(&self) -> bool {
        match &self.to_account {
            None => true,
            Some(bare) => &self.from.to_bare() == bare,
        }
    }
}

pub type IqResult = Result<Option<Element>, StanzaError>;

/// Things that happen, in the order modules were registered; a module answers with a [`Flow`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A presence stanza a local session sent (`from` stamped, any `to`).
    OutboundPresence { from: &'a FullJid, stanza: &'a Element },
    /// A presence stanza for a local account, from anyone (after filtering).
    InboundPresence { to: &'a Jid, stanza: &'a Element },
    /// A session sent its initial available presence (RFC 6121 §4.2).
    InitialPresence { jid: &'a FullJid },
    /// A session was bound. Per-session state keyed by full JID starts fresh here (a new session
    /// may replace an older one with the same full JID without that one's `SessionClosed`).
    SessionStarted { jid: &'a FullJid },
    /// A bound session ended; `was_available` if it had sent available presence.
    SessionClosed { jid: &'a FullJid, was_available: bool, directed_to: &'a [String] },
    /// A message for a local account that no session can take now (RFC 6121 §8.5.2.1.1).
    /// A module that stores it answers `Handled`.
    MessageUndelivered { to: &'a BareJid, stanza: &'a Element },
    /// Should this stanza pass? `inbound`: towards the local account `account`; otherwise sent by it.
    /// Answer `Reject` to bounce it with an error or `Handled` to drop it silently.
    Filter { account: &'a BareJid, peer: &'a Jid, stanza: &'a Element, inbound: bool },
    /// A message for `account` was handed to these sessions (empty: it went to offline storage).
    MessageDelivered { account: &'a BareJid, to: &'a [FullJid], stanza: &'a Element },
    /// A local account was deleted; drop whatever the module keeps about it. `roster` is the
    /// roster it had, so contacts can be told (its stored data is already gone).
    AccountDeleted { jid: &'a BareJid, roster: &'a [kabar_storage::RosterItem] },
    /// Cluster only: this node (re)connected to its peers, or a peer said it (re)joined. While they
    /// were apart, stanzas for sessions on the other side went to storage (the offline store) even
    /// though their users stayed online; modules holding such stanzas hand them over now.
    ClusterRejoined,
}

#[derive(Debug)]
pub enum Flow {
    /// Not mine, or I observed it; let the next module and then the core carry on.
    Continue,
    /// Done; nobody else sees the event and the core does nothing further with it.
    Handled,
    /// Refuse with this error (for filters and outbound stanzas).
    Reject(StanzaError),
}

/// The hooks a module implements, as a bit set: the core builds one list of modules per hook when
/// the server is built and calls only those (each call is a boxed future, and a chat message passes
/// five hook points). `ON_*` bits are [`Module::on_event`] for that [`Event`] (filters split by
/// direction and stanza name); the others are the methods of the same name. A module that does not
/// override [`Module::hooks`] gets every call, so forgetting to declare costs speed, never events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks(u32);

impl Hooks {
    pub const NONE: Hooks = Hooks(0);
    pub const ALL: Hooks = Hooks(u32::MAX);
    pub const ON_OUTBOUND_PRESENCE: Hooks = Hooks(1 << 0);
    pub const ON_INBOUND_PRESENCE: Hooks = Hooks(1 << 1);
    pub const ON_INITIAL_PRESENCE: Hooks = Hooks(1 << 2);
    pub const ON_SESSION_STARTED: Hooks = Hooks(1 << 3);
    pub const ON_SESSION_CLOSED: Hooks = Hooks(1 << 4);
    pub const ON_MESSAGE_UNDELIVERED: Hooks = Hooks(1 << 5);
    pub const ON_MESSAGE_DELIVERED: Hooks = Hooks(1 << 6);
    pub const ON_ACCOUNT_DELETED: Hooks = Hooks(1 << 7);
    /// [`Event::Filter`] with `inbound: true` for a `<message/>`.
    pub const ON_FILTER_IN_MESSAGE: Hooks = Hooks(1 << 8);
    pub const ON_FILTER_IN_PRESENCE: Hooks = Hooks(1 << 9);
    pub const ON_FILTER_IN_IQ: Hooks = Hooks(1 << 10);
    /// [`Event::Filter`] with `inbound: false` (sent by the account) for a `<message/>`.
    pub const ON_FILTER_OUT_MESSAGE: Hooks = Hooks(1 << 11);
    pub const ON_FILTER_OUT_PRESENCE: Hooks = Hooks(1 << 12);
    pub const ON_FILTER_OUT_IQ: Hooks = Hooks(1 << 13);
    pub const ON_FILTER_IN: Hooks = Hooks(Self::ON_FILTER_IN_MESSAGE.0 | Self::ON_FILTER_IN_PRESENCE.0 | Self::ON_FILTER_IN_IQ.0);
    pub const ON_FILTER_OUT: Hooks =
        Hooks(Self::ON_FILTER_OUT_MESSAGE.0 | Self::ON_FILTER_OUT_PRESENCE.0 | Self::ON_FILTER_OUT_IQ.0);
    pub const ON_FILTER: Hooks = Hooks(Self::ON_FILTER_IN.0 | Self::ON_FILTER_OUT.0);
    /// [`Module::outbound_presence`].
    pub const OUTBOUND_PRESENCE: Hooks = Hooks(1 << 14);
    /// [`Module::outbound_message`].
    pub const OUTBOUND_MESSAGE: Hooks = Hooks(1 << 15);
    /// [`Module::inbound_message`].
    pub const INBOUND_MESSAGE: Hooks = Hooks(1 << 16);
    pub const ON_CLUSTER_REJOINED: Hooks = Hooks(1 << 17);
    /// Number of single-hook bits above (the server keeps one module list per bit).
    pub(crate) const COUNT: usize = 18;

    pub const fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    pub const fn intersects(self, other: Hooks) -> bool {
        self.0 & other.0 != 0
    }

    /// The bit of a single hook (`bit` < [`Hooks::COUNT`]).
    pub(crate) const fn bit(bit: usize) -> Hooks {
        Hooks(1 << bit)
    }

    /// Which bit `event` is dispatched on.
    pub(crate) fn of(event: &Event<'_>) -> Hooks {
        match event {
            Event::OutboundPresence { .. } => Hooks::ON_OUTBOUND_PRESENCE,
            Event::InboundPresence { .. } => Hooks::ON_INBOUND_PRESENCE,
            Event::InitialPresence { .. } => Hooks::ON_INITIAL_PRESENCE,
            Event::SessionStarted { .. } => Hooks::ON_SESSION_STARTED,
            Event::SessionClosed { .. } => Hooks::ON_SESSION_CLOSED,
            Event::MessageUndelivered { .. } => Hooks::ON_MESSAGE_UNDELIVERED,
            Event::MessageDelivered { .. } => Hooks::ON_MESSAGE_DELIVERED,
            Event::AccountDeleted { .. } => Hooks::ON_ACCOUNT_DELETED,
            Event::ClusterRejoined => Hooks::ON_CLUSTER_REJOINED,
            Event::Filter { stanza, inbound: true, .. } => match stanza.name() {
                "message" => Hooks::ON_FILTER_IN_MESSAGE,
                "presence" => Hooks::ON_FILTER_IN_PRESENCE,
                _ => Hooks::ON_FILTER_IN_IQ,
            },
            Event::Filter { stanza, inbound: false, .. } => match stanza.name() {
                "message" => Hooks::ON_FILTER_OUT_MESSAGE,
                "presence" => Hooks::ON_FILTER_OUT_PRESENCE,
                _ => Hooks::ON_FILTER_OUT_IQ,
            },
        }
    }

    /// Index of a single-bit value in the server's per-hook lists.
    pub(crate) fn index(self) -> usize {
        self.0.trailing_zeros() as usize
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Hooks;
    fn bitor(self, rhs: Hooks) -> Hooks {
        self.union(rhs)
    }
}

/// `Any` lets the binary find a module's shared handle (e.g. the status monitor's, for its HTTP
/// pages) by downcasting `&dyn Module`; modules never do this to each other.
#[async_trait]
pub trait Module: std::any::Any + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The hooks this module implements (see [`Hooks`]); asked once, when the server is built.
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }
    /// Features this module adds to the server's XEP-0030 disco#info.
    fn server_features(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Features advertised on accounts' bare JIDs.
    fn account_features(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Extra XEP-0030 identities of the server, as (category, type, name), besides `server/im`
    /// (e.g. XEP-0363's `store/file` when the server itself takes upload slot requests).
    fn server_identities(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        Vec::new()
    }
    /// XEP-0128 extended information forms (`<x xmlns='jabber:x:data' type='result'/>` with a
    /// hidden FORM_TYPE) this module adds to the server's disco#info.
    fn server_info_forms(&self) -> Vec<Element> {
        Vec::new()
    }
    /// XEP-0030 disco#items of the server's JID at `node`, when this module owns that node (e.g.
    /// XEP-0050's `http://jabber.org/protocol/commands`): the `<item/>` elements, or `None`.
    fn server_disco_items(&self, _server: &Server, _node: &str) -> Option<Vec<Element>> {
        None
    }
    /// Service domains this module hosts inside the server (e.g. XEP-0045's `conference.<domain>`).
    /// Every stanza addressed to one of them, or to a JID at it, goes to [`Module::handle_hosted`]
    /// instead of accounts or components. Asked once, when the server is built.
    fn hosted_domains(&self) -> Vec<String> {
        Vec::new()
    }
    /// A stanza (any kind, `from` already trustworthy) addressed to one of [`Module::hosted_domains`].
    /// The module answers or bounces it itself (e.g. with [`Server::bounce`]).
    async fn handle_hosted(&self, _server: &Server, _stanza: Element) {}
    /// Stream features (after authentication) this module adds, e.g. `<ver xmlns='urn:xmpp:features:rosterver'/>`.
    fn stream_features(&self) -> Vec<Element> {
        Vec::new()
    }
    /// IQ payloads (element name, namespace) this module answers.
    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
    /// Answers an IQ it declared. `Ok(Some(payload))` → result with payload; `Ok(None)` → empty
    /// result; `Err` → error reply.
    async fn handle_iq(&self, _server: &Server, _iq: &IqRequest) -> IqResult {
        Err(StanzaError::service_unavailable())
    }
    async fn on_event(&self, _server: &Server, _event: &Event<'_>) -> Flow {
        Flow::Continue
    }
    /// Features this module can enable inline in a XEP-0386 Bind2 request (namespaces).
    fn bind2_features(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Handles one Bind2 inline request (e.g. `<enable xmlns='urn:xmpp:carbons:2'/>`) for the session
    /// being bound; returns an element for `<bound/>` if the feature has a result to report.
    async fn bind2_enable(&self, _server: &Server, _jid: &FullJid, _request: &Element) -> Option<Element> {
        None
    }
    /// A presence stanza a local session sent, after filtering and before the presence module
    /// broadcasts or routes it. Modules may add to it (e.g. XEP-0398's avatar hash); every module
    /// sees it, in registration order.
    async fn outbound_presence(&self, _server: &Server, _from: &FullJid, _stanza: &mut Element) {}
    /// A message a local session sent, after filtering and before routing. Modules may archive it
    /// or add to it (e.g. a stanza-id); every module sees it, in registration order.
    async fn outbound_message(&self, _server: &Server, _from: &FullJid, _stanza: &mut Element) {}
    /// A message for an existing local account, before it is delivered or stored offline. Modules
    /// may archive it or add to it; every module sees it, in registration order.
    async fn inbound_message(&self, _server: &Server, _to: &BareJid, _stanza: &mut Element) {}
}
