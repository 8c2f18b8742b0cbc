//! XEP-0357: Push Notifications (the user's-server side).
//!
//! * Registration (§5, §6): `<enable xmlns='urn:xmpp:push:0' jid='push.example' node='abc'/>` and
//!   `<disable jid='push.example' [node='abc']/>` as an IQ-set from one of the account's own bound
//!   sessions, with no `to`, or to the server's domain or the account's own bare JID. Anything else
//!   is `<forbidden/>` (another account, a component, a remote entity); a get is `<bad-request/>`.
//!   * `enable` needs a valid `jid` (not the account itself) and a non-empty `node` of at most
//!     [`MAX_NODE_BYTES`], else `<bad-request/>`. It may carry one XEP-0004 form (§5, "publish
//!     options") of type `submit` whose `FORM_TYPE`, if present, is
//!     `http://jabber.org/protocol/pubsub#publish-options`, at most [`MAX_FORM_BYTES`] serialised;
//!     otherwise `<bad-request/>` (`<not-acceptable/>` when too big). Enabling the same
//!     (jid, node) again replaces its form (or drops it when the new request has none).
//!   * An account has at most [`MAX_REGISTRATIONS`] registrations; enabling another is
//!     `<policy-violation/>` (the client can `disable` a whole app server, without `node`, to clean
//!     up registrations it lost track of).
//!   * `disable` without `node` removes every registration with that `jid`; with `node`, that one.
//!     Removing nothing is not an error.
//!   * Registrations live in the key-value store `push`: key `jid + "\n" + node` (a JID never
//!     contains a line feed, so the first one splits the key), value the serialised form or empty.
//!     They survive restarts; deleting the account deletes them with the rest of its data.
//! * Notifications (§7): after the core delivered a message for an account
//!   ([`Event::MessageDelivered`], also when it went to offline storage), a notification is
//!   published to every registration of the account when all of these hold:
//!   * the message is worth waking a device for: it has a `<body/>`, or an OMEMO payload
//!     (`{eu.siacs.conversations.axolotl}encrypted`, `{urn:xmpp:omemo:2}encrypted`); it is not of
//!     type `error`; and it was not sent by the account itself (its own sessions are awake);
//!   * none of the sessions it was delivered to is awake. Awake = available and not detached
//!     (XEP-0198: the connection is gone and the session waits for resumption). A session that is
//!     only inactive (XEP-0352) is awake: it can still receive, the client chose to get less. A
//!     message stored offline was delivered to no session, so nobody is awake.
//! * The notification is `<iq type='set' from='user bare JID' to='app server'><pubsub
//!   xmlns='http://jabber.org/protocol/pubsub'><publish node='node'><item><notification
//!   xmlns='urn:xmpp:push:0'>` + a `urn:xmpp:push:summary` form with `message-count` and
//!   `last-message-sender` (the message's `from`), then `<publish-options>` with the stored form if
//!   there is one. The body is never included (privacy: the app server and the push service of the
//!   device vendor would see it); there is no setting to include it yet. It is routed like any
//!   stanza from the account ([`Server::route`]): to a component, to a local entity, or bounced with
//!   `<remote-server-not-found/>` for every other domain (no federation).
//! * `message-count` is the number of notifiable messages since the account last had an awake
//!   session: it resets when a session of the account starts or sends initial presence, and when a
//!   message is delivered to an awake session. It is kept in memory (a restart resets it).
//! * Rate limit: at most one notification per registration per [`DEFAULT_MIN_INTERVAL`] (see
//!   [`PushModule::with_min_interval`]); messages inside the window still count, and the next
//!   notification carries the total. The first notification is always sent. There is no timer:
//!   the last messages of a burst are announced only with the next notification (the first one
//!   already woke the device, which then fetches everything).
//! * Errors (§7.1): an `<iq type='error'>` answering one of the notifications (matched by the id the
//!   server chose, the app server's JID and the account), including the server's own bounce when
//!   the app server is unreachable, disables that registration, unless its error type is `wait`
//!   (temporary). Answers to notifications (results and errors) are consumed here and go no
//!   further. Unanswered notifications are forgotten after [`PENDING_TTL`].
//!
//! Advertises `urn:xmpp:push:0` on accounts' bare JIDs (§4).
//!
//! Not done: §8 remote disabling (the app server's affiliation-`none` message is just routed to the
//! user's clients, which act on it), `last-message-body` and any other optional summary field,
//! per-session registrations (registrations belong to the account, as in §5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jid::{BareJid, Jid};
use kabar_core::module::IqResult;
use kabar_core::{ns, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tokio::time::Instant;
use tracing::{debug, warn};

pub const NS_PUSH: &str = "urn:xmpp:push:0";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_SUMMARY: &str = "urn:xmpp:push:summary";
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const NS_OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
pub const NS_OMEMO_2: &str = "urn:xmpp:omemo:2";
/// The key-value store name this module owns.
pub const STORE: &str = "push";
/// Registrations per account.
pub const MAX_REGISTRATIONS: usize = 10;
/// Longest `node` accepted.
pub const MAX_NODE_BYTES: usize = 1024;
/// Largest publish-options form accepted, serialised.
pub const MAX_FORM_BYTES: usize = 4096;
/// At most one notification per registration in this long.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long an unanswered notification's id is remembered.
pub const PENDING_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered unanswered notifications (oldest forgotten first).
const MAX_PENDING: usize = 10_000;

/// One registration: the app server and node (§5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Registration {
    pub jid: String,
    pub node: String,
}

impl Registration {
    fn key(&self) -> String {
        format!("{}\n{}", self.jid, self.node)
    }

    fn from_key(key: &str) -> Option<Registration> {
        let (jid, node) = key.split_once('\n')?;
        Some(Registration { jid: jid.to_string(), node: node.to_string() })
    }
}

/// A registration with its publish-options form.
#[derive(Clone, Debug)]
pub struct StoredRegistration {
    pub registration: Registration,
    pub form: Option<Element>,
}

/// Every registration of `account`, in key order. Values that do not parse lose their form.
pub async fn registrations(server: &Server, account: &BareJid) -> Result<Vec<StoredRegistration>, StanzaError> {
    let list = server.store.kv_list(account.as_str(), STORE).await.map_err(backend_error)?;
    Ok(list
        .into_iter()
        .filter_map(|(key, value)| {
            let registration = Registration::from_key(&key)?;
            let form = if value.is_empty() {
                None
            } else {
                let parsed = Element::from_reader(value.as_slice()).ok();
                if parsed.is_none() {
                    warn!(%account, "stored push publish-options do not parse; sending without them");
                }
                parsed
            };
            Some(StoredRegistration { registration, form })
        })
        .collect())
}

fn backend_error(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "push store failure");
    StanzaError::internal_server_error()
}

/// Whether a delivered message deserves a notification (see the module documentation).
pub fn notifiable(stanza: &Element) -> bool {
    if stanza.name() != "message" || stanza.ns() != ns::CLIENT || stanza.attr("type") == Some("error") {
        return false;
    }
    stanza.has_child("body", ns::CLIENT)
        || stanza.has_child("encrypted", NS_OMEMO_LEGACY)
        || stanza.has_child("encrypted", NS_OMEMO_2)
}

fn field(var: &str, value: &str) -> Element {
    elem("field", NS_DATA).with_attr("var", var).with_child(elem("value", NS_DATA).with_text(value))
}

/// The notification IQ (§7) for one registration.
pub fn notification(
    account: &BareJid,
    registration: &Registration,
    form: Option<&Element>,
    id: &str,
    count: u64,
    sender: Option<&str>,
) -> Element {
    let mut summary = elem("x", NS_DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", FORM_SUMMARY))
        .with_child(field("message-count", &count.to_string()));
    if let Some(sender) = sender {
        summary.append_child(field("last-message-sender", sender));
    }
    let publish = elem("publish", NS_PUBSUB)
        .with_attr("node", registration.node.clone())
        .with_child(elem("item", NS_PUBSUB).with_child(elem("notification", NS_PUSH).with_child(summary)));
    let mut pubsub = elem("pubsub", NS_PUBSUB).with_child(publish);
    if let Some(form) = form {
        pubsub.append_child(elem("publish-options", NS_PUBSUB).with_child(form.clone()));
    }
    elem("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("from", account.as_str())
        .with_attr("to", registration.jid.clone())
        .with_attr("id", id)
        .with_child(pubsub)
}

/// The `jid` attribute of an `<enable/>` or `<disable/>`.
#[allow(clippy::result_large_err)] // StanzaError is what every IQ handler returns
fn app_server(payload: &Element) -> Result<Jid, StanzaError> {
    let Some(jid) = payload.attr("jid") else { return Err(StanzaError::bad_request().with_text("missing 'jid'")) };
    kabar_core::stanza::parse_jid(jid).map_err(|_| StanzaError::jid_malformed())
}

/// Checks the optional publish-options form of an `<enable/>` and serialises it.
#[allow(clippy::result_large_err)] // StanzaError is what every IQ handler returns
fn publish_options(enable: &Element) -> Result<Option<Vec<u8>>, StanzaError> {
    let mut forms = enable.children().filter(|c| c.is("x", NS_DATA));
    let Some(form) = forms.next() else { return Ok(None) };
    if forms.next().is_some() {
        return Err(StanzaError::bad_request().with_text("at most one publish-options form"));
    }
    if form.attr("type") != Some("submit") {
        return Err(StanzaError::bad_request().with_text("publish options must be a form of type 'submit'"));
    }
    let form_type = form
        .children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text());
    if form_type.is_some_and(|t| t.trim() != FORM_PUBLISH_OPTIONS) {
        return Err(StanzaError::bad_request().with_text(format!("FORM_TYPE must be {FORM_PUBLISH_OPTIONS}")));
    }
    let bytes = element_to_bytes(form).map_err(|_| StanzaError::bad_request())?;
    if bytes.len() > MAX_FORM_BYTES {
        return Err(
            StanzaError::not_acceptable().with_text(format!("publish options are limited to {MAX_FORM_BYTES} bytes"))
        );
    }
    Ok(Some(bytes))
}

/// A notification sent and not yet answered.
struct Pending {
    account: BareJid,
    registration: Registration,
    sent: Instant,
}

#[derive(Default)]
struct State {
    /// Notifiable messages since the account was last awake.
    counts: HashMap<BareJid, u64>,
    /// When each registration was last notified.
    last_sent: HashMap<(BareJid, Registration), Instant>,
    /// Notification ids awaiting an answer.
    pending: HashMap<String, Pending>,
}

impl State {
    fn forget_account(&mut self, account: &BareJid) {
        self.counts.remove(account);
        self.last_sent.retain(|(a, _), _| a != account);
        self.pending.retain(|_, p| &p.account != account);
    }

    fn prune(&mut self, now: Instant, min_interval: Duration) {
        self.pending.retain(|_, p| now.duration_since(p.sent) < PENDING_TTL);
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.pending.iter().min_by_key(|(_, p)| p.sent).map(|(id, _)| id.clone()) {
                self.pending.remove(&oldest);
            }
        }
        if self.last_sent.len() > MAX_PENDING {
            self.last_sent.retain(|_, t| now.duration_since(*t) < min_interval);
        }
    }
}

pub struct PushModule {
    min_interval: Duration,
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Default for PushModule {
    fn default() -> Self {
        Self::new()
    }
}

impl PushModule {
    pub fn new() -> Self {
        Self::with_min_interval(DEFAULT_MIN_INTERVAL)
    }

    /// At most one notification per registration per `min_interval` (zero: no limit).
    pub fn with_min_interval(min_interval: Duration) -> Self {
        PushModule { min_interval, state: Mutex::new(State::default()), next_id: AtomicU64::new(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current `message-count` of an account (for tests and diagnostics).
    pub fn message_count(&self, account: &BareJid) -> u64 {
        self.lock().counts.get(account).copied().unwrap_or(0)
    }

    fn reset(&self, account: &BareJid) {
        self.lock().counts.remove(account);
    }

    /// The account whose session sent `iq`, if it may manage that account's registrations.
    fn requester(server: &Server, iq: &IqRequest) -> Option<BareJid> {
        let full = iq.from.try_as_full().ok()?;
        if !server.is_local(&iq.from) || server.sessions.get(full).is_none() {
            return None;
        }
        let account = full.to_bare();
        match &iq.to_account {
            Some(to) if to != &account => None,
            _ => Some(account),
        }
    }

    async fn enable(&self, server: &Server, account: &BareJid, payload: &Element) -> IqResult {
        let jid = app_server(payload)?;
        if jid.to_bare() == *account {
            return Err(StanzaError::bad_request().with_text("the app server cannot be the account itself"));
        }
        let node = payload.attr("node").unwrap_or("");
        if node.is_empty() {
            return Err(StanzaError::bad_request().with_text("missing 'node'"));
        }
        if node.len() > MAX_NODE_BYTES {
            return Err(StanzaError::bad_request().with_text(format!("'node' is limited to {MAX_NODE_BYTES} bytes")));
        }
        let form = publish_options(payload)?;
        let registration = Registration { jid: jid.to_string(), node: node.to_string() };
        let key = registration.key();
        let existing = server.store.kv_list(account.as_str(), STORE).await.map_err(backend_error)?;
        if !existing.iter().any(|(k, _)| *k == key) && existing.len() >= MAX_REGISTRATIONS {
            return Err(StanzaError::policy_violation()
                .with_text(format!("at most {MAX_REGISTRATIONS} push registrations per account")));
        }
        let value = form.unwrap_or_default();
        server.store.kv_put(account.as_str(), STORE, &key, &value).await.map_err(backend_error)?;
        debug!(%account, app_server = %registration.jid, "push enabled");
        Ok(None)
    }

    async fn disable(&self, server: &Server, account: &BareJid, payload: &Element) -> IqResult {
        let jid = app_server(payload)?;
        let jid = jid.to_string();
        let node = payload.attr("node").filter(|n| !n.is_empty());
        let existing = registrations(server, account).await?;
        for stored in existing {
            let r = &stored.registration;
            if r.jid == jid && node.is_none_or(|n| n == r.node) {
                self.remove(server, account, r).await;
            }
        }
        Ok(None)
    }

    async fn remove(&self, server: &Server, account: &BareJid, registration: &Registration) {
        if let Err(e) = server.store.kv_delete(account.as_str(), STORE, &registration.key()).await {
            warn!(error = %e, %account, "could not remove push registration");
        }
        let mut state = self.lock();
        state.last_sent.remove(&(account.clone(), registration.clone()));
        state.pending.retain(|_, p| !(&p.account == account && &p.registration == registration));
    }

    async fn on_delivered(&self, server: &Server, account: &BareJid, to: &[jid::FullJid], stanza: &Element) {
        let awake = to.iter().filter_map(|jid| server.sessions.get(jid)).any(|s| s.available && !s.detached);
        if awake {
            // The user is reading: whatever was announced before is now seen.
            self.reset(account);
            return;
        }
        if !notifiable(stanza) {
            return;
        }
        let sender = stanza.attr("from");
        if sender.and_then(|f| kabar_core::stanza::parse_jid(f).ok()).is_some_and(|f| f.to_bare() == *account) {
            return;
        }
        let stored = match registrations(server, account).await {
            Ok(list) => list,
            Err(_) => return,
        };
        if stored.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut to_send = Vec::new();
        {
            let mut state = self.lock();
            state.prune(now, self.min_interval);
            let count = {
                let c = state.counts.entry(account.clone()).or_insert(0);
                *c += 1;
                *c
            };
            for s in stored {
                let slot = (account.clone(), s.registration.clone());
                let due = state.last_sent.get(&slot).is_none_or(|t| now.duration_since(*t) >= self.min_interval);
                if !due {
                    continue;
                }
                state.last_sent.insert(slot, now);
                let id = format!("push-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                state.pending.insert(
                    id.clone(),
                    Pending { account: account.clone(), registration: s.registration.clone(), sent: now },
                );
                to_send.push(notification(account, &s.registration, s.form.as_ref(), &id, count, sender));
            }
        }
        // Routed without the lock held: an unreachable app server bounces synchronously, and the
        // bounce comes back through this module's filter.
        for iq in to_send {
            server.route(iq).await;
        }
    }

    /// An answer to one of our notifications (an IQ result or error from the app server to the
    /// account's bare JID with an id we sent): consume it, and disable the registration on error.
    async fn on_answer(&self, server: &Server, account: &BareJid, peer: &Jid, stanza: &Element) -> Flow {
        let kind = stanza.attr("type");
        if kind != Some("result") && kind != Some("error") {
            return Flow::Continue;
        }
        let to_bare = stanza.attr("to").and_then(|t| kabar_core::stanza::parse_jid(t).ok()).is_some_and(|t| t.resource().is_none());
        let Some(id) = stanza.attr("id").filter(|_| to_bare) else { return Flow::Continue };
        let registration = {
            let mut state = self.lock();
            match state.pending.get(id) {
                Some(p) if &p.account == account && p.registration.jid == peer.as_str() => {
                    state.pending.remove(id).map(|p| p.registration)
                }
                _ => None,
            }
        };
        let Some(registration) = registration else { return Flow::Continue };
        if kind == Some("error") {
            let error_type = stanza.get_child("error", ns::CLIENT).and_then(|e| e.attr("type"));
            if error_type == Some("wait") {
                debug!(%account, app_server = %registration.jid, "push notification failed temporarily");
            } else {
                debug!(%account, app_server = %registration.jid, "push notification refused; disabling");
                self.remove(server, account, &registration).await;
            }
        }
        Flow::Handled
    }
}

#[async_trait]
impl Module for PushModule {
    fn name(&self) -> &'static str {
        "push"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_MESSAGE_DELIVERED | H::ON_FILTER_IN_IQ | H::ON_SESSION_STARTED | H::ON_INITIAL_PRESENCE | H::ON_ACCOUNT_DELETED
    }

    fn account_features(&self) -> Vec<&'static str> {
        vec![NS_PUSH]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("enable", NS_PUSH), ("disable", NS_PUSH)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(account) = Self::requester(server, iq) else { return Err(StanzaError::forbidden()) };
        if !iq.is_set {
            return Err(StanzaError::bad_request());
        }
        let Some(payload) = iq.payload() else { return Err(StanzaError::bad_request()) };
        match payload.name() {
            "enable" => self.enable(server, &account, payload).await,
            "disable" => self.disable(server, &account, payload).await,
            _ => Err(StanzaError::bad_request()),
        }
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::MessageDelivered { account, to, stanza } => {
                self.on_delivered(server, account, to, stanza).await;
                Flow::Continue
            }
            Event::Filter { account, peer, stanza, inbound: true } if stanza.name() == "iq" => {
                self.on_answer(server, account, peer, stanza).await
            }
            Event::SessionStarted { jid } | Event::InitialPresence { jid } => {
                self.reset(&jid.to_bare());
                Flow::Continue
            }
            Event::AccountDeleted { jid, .. } => {
                self.lock().forget_account(jid);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}
