//! [`Server`]: the shared context of one node, and the stanza routing rules of RFC 6120 §10 and
//! RFC 6121 §8.5 (what happens to each kind of stanza for each kind of address).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jid::{BareJid, FullJid, Jid};
use kabar_storage::SharedStore;
use kabar_xml::{Element, ElementExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::admission::Admission;
use crate::config::Config;
use crate::metrics::{Metrics, StoreOp};
use crate::module::{Event, Flow, Hooks, IqRequest, Module};
use crate::ratelimit::KeyedLimiter;
use crate::sessions::{Outbound, SendError, SharedDirectory};
use crate::stanza::{self, error_reply, Kind, StanzaError};

pub struct Server {
    pub config: Arc<Config>,
    pub domain: String,
    domain_jid: Jid,
    pub store: SharedStore,
    pub sessions: SharedDirectory,
    modules: Vec<Arc<dyn Module>>,
    /// Per hook bit ([`Hooks::index`]), the modules implementing it, in registration order.
    hooked: Vec<Vec<Arc<dyn Module>>>,
    iq_table: HashMap<(&'static str, &'static str), usize>,
    /// Service domain → index of the module hosting it.
    hosted: HashMap<String, usize>,
    components: RwLock<HashMap<String, mpsc::Sender<Outbound>>>,
    pub started_at: Instant,
    /// Failed logins by client IP and by account name (RFC 6120 §13.9.3 brute-force defence).
    pub auth_failures_by_ip: KeyedLimiter,
    pub auth_failures_by_account: KeyedLimiter,
    /// Successful in-band registrations by client IP.
    pub registrations_by_ip: KeyedLimiter,
    /// Whether XEP-0077 in-band registration is open now: starts as `registration.enabled`, the
    /// admin API switches it at runtime.
    pub registration_enabled: AtomicBool,
    /// Registration mode and proof-of-work difficulty, switchable at runtime (docs/REGISTRATION.md).
    pub registration: crate::registration::RegistrationState,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Admission control for new logins and registrations (docs/OVERLOAD.md).
    pub admission: Admission,
}

/// The cluster homes key of an external component's domain.
fn component_key(domain: &str) -> String {
    format!("component:{domain}")
}

pub struct ServerBuilder {
    config: Arc<Config>,
    store: SharedStore,
    sessions: SharedDirectory,
    modules: Vec<Arc<dyn Module>>,
}

impl ServerBuilder {
    pub fn module(mut self, module: Arc<dyn Module>) -> Self {
        self.modules.push(module);
        self
    }

    pub fn build(self) -> Result<Arc<Server>, String> {
        let mut iq_table = HashMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            for key in m.iq_payloads() {
                if let Some(prev) = iq_table.insert(key, i) {
                    return Err(format!(
                        "modules {} and {} both answer {{{}}}{}",
                        self.modules[prev].name(),
                        m.name(),
                        key.1,
                        key.0
                    ));
                }
            }
        }
        let mut hosted = HashMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            for domain in m.hosted_domains() {
                if domain == self.config.domain {
                    return Err(format!("module {} cannot host the server's own domain {domain}", m.name()));
                }
                if let Some(prev) = hosted.insert(domain.clone(), i) {
                    return Err(format!("modules {} and {} both host {domain}", self.modules[prev].name(), m.name()));
                }
            }
        }
        let hooked = (0..Hooks::COUNT)
            .map(|bit| {
                let hook = Hooks::bit(bit);
                self.modules.iter().filter(|m| m.hooks().intersects(hook)).cloned().collect()
            })
            .collect();
        let domain_jid = BareJid::new(&self.config.domain)
            .ok()
            .filter(|j| j.node().is_none() && j.as_str() == self.config.domain)
            .ok_or_else(|| format!("domain '{}' is not a valid, normalised XMPP domain", self.config.domain))?;
        let limits = &self.config.limits;
        let minute = Duration::from_secs(60);
        Ok(Arc::new(Server {
            domain: self.config.domain.clone(),
            domain_jid: Jid::from(domain_jid),
            auth_failures_by_ip: KeyedLimiter::new(limits.auth_failures_per_ip_per_minute, minute),
            auth_failures_by_account: KeyedLimiter::new(limits.auth_failures_per_account_per_minute, minute),
            registrations_by_ip: KeyedLimiter::new(self.config.registration.per_ip_per_hour, Duration::from_secs(3600)),
            registration_enabled: AtomicBool::new(self.config.registration.initial_mode().is_public()),
            registration: crate::registration::RegistrationState::new(&self.config.registration),
            metrics: Metrics::new(),
            admission: Admission::new(self.config.admission.clone()),
            config: self.config,
            store: self.store,
            sessions: self.sessions,
            modules: self.modules,
            hooked,
            iq_table,
            hosted,
            components: RwLock::new(HashMap::new()),
            started_at: Instant::now(),
        }))
    }
}

impl Server {
    pub fn builder(config: Arc<Config>, store: SharedStore, sessions: SharedDirectory) -> ServerBuilder {
        ServerBuilder { config, store, sessions, modules: Vec::new() }
    }

    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.modules
    }

    /// Every feature the modules advertise on the server's disco#info, sorted and unique.
    pub fn server_features(&self) -> Vec<&'static str> {
        let mut f: Vec<_> = self.modules.iter().flat_map(|m| m.server_features()).collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// The modules' extra server identities (see [`Module::server_identities`]), sorted and unique.
    pub fn server_identities(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        let mut v: Vec<_> = self.modules.iter().flat_map(|m| m.server_identities()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The modules' XEP-0128 extended information forms for the server's disco#info.
    pub fn server_info_forms(&self) -> Vec<Element> {
        self.modules.iter().flat_map(|m| m.server_info_forms()).collect()
    }

    pub fn account_features(&self) -> Vec<&'static str> {
        let mut f: Vec<_> = self.modules.iter().flat_map(|m| m.account_features()).collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    pub fn bind2_features(&self) -> Vec<&'static str> {
        self.modules.iter().flat_map(|m| m.bind2_features()).collect()
    }

    /// Offers a Bind2 inline request to the module that declared its namespace.
    pub async fn bind2_enable(&self, jid: &FullJid, request: &Element) -> Option<Element> {
        let ns = request.ns();
        for m in &self.modules {
            if m.bind2_features().iter().any(|f| *f == ns) {
                return m.bind2_enable(self, jid, request).await;
            }
        }
        None
    }

    pub fn stream_features(&self) -> Vec<Element> {
        self.modules.iter().flat_map(|m| m.stream_features()).collect()
    }

    pub fn domain_jid(&self) -> Jid {
        self.domain_jid.clone()
    }

    pub fn is_local(&self, jid: &Jid) -> bool {
        jid.domain().as_str() == self.domain
    }

    pub async fn account_exists(&self, bare: &BareJid) -> bool {
        let timer = self.metrics.store(StoreOp::Credentials).start_timer();
        let found = self.store.credentials(bare.as_str()).await;
        drop(timer);
        match found {
            Ok(c) => c.is_some(),
            Err(e) => {
                warn!(error = %e, "account lookup failed");
                false
            }
        }
    }

    /// Offers `event` to each module in registration order until one does not answer Continue.
    pub async fn fire(&self, event: Event<'_>) -> Flow {
        for m in self.hooked(Hooks::of(&event)) {
            match m.on_event(self, &event).await {
                Flow::Continue => {}
                other => return other,
            }
        }
        Flow::Continue
    }

    /// Fires an event every module must see (no module can stop it).
    pub async fn notify(&self, event: Event<'_>) {
        for m in self.hooked(Hooks::of(&event)) {
            m.on_event(self, &event).await;
        }
    }

    fn hooked(&self, hook: Hooks) -> &[Arc<dyn Module>] {
        self.hooked.get(hook.index()).map_or(&[], Vec::as_slice)
    }

    // --- entry points --------------------------------------------------------------------------

    /// A stanza a bound client session sent. The core stamps `from` (RFC 6120 §8.1.2.1) and applies
    /// the rules for a missing `to` (§10.3).
    pub async fn from_client(&self, session: &FullJid, mut stanza: Element) {
        let Some(kind) = Kind::of(&stanza) else { return };
        self.metrics.stanza_in(kind);
        let _timer = self.metrics.routing.start_timer();
        stanza.set_attr_str("from", session.as_str());
        let to = match stanza::to_jid(&stanza) {
            Ok(to) => to,
            Err(err) => return self.bounce(&stanza, err).await,
        };
        let account = session.to_bare();
        if let Some(peer) = &to {
            if let Flow::Reject(err) =
                self.fire(Event::Filter { account: &account, peer, stanza: &stanza, inbound: false }).await
            {
                return self.bounce(&stanza, err).await;
            }
        }
        match kind {
            Kind::Presence => {
                for m in self.hooked(Hooks::OUTBOUND_PRESENCE) {
                    m.outbound_presence(self, session, &mut stanza).await;
                }
                if let Flow::Continue = self.fire(Event::OutboundPresence { from: session, stanza: &stanza }).await {
                    if to.is_some() {
                        self.route(stanza).await;
                    }
                }
            }
            Kind::Iq => match to {
                None => self.handle_iq(Jid::from(session.clone()), Some(account), stanza).await,
                Some(_) => self.route(stanza).await,
            },
            Kind::Message => {
                if to.is_none() {
                    stanza.set_attr_str("to", account.as_str());
                }
                for m in self.hooked(Hooks::OUTBOUND_MESSAGE) {
                    m.outbound_message(self, session, &mut stanza).await;
                }
                self.route(stanza).await;
            }
        }
    }

    /// A stanza an external component sent; its `from` must be in the component's domain.
    pub async fn from_component(&self, component: &str, stanza: Element) -> Result<(), &'static str> {
        let Some(_) = Kind::of(&stanza) else { return Ok(()) };
        let from = match stanza::from_jid(&stanza) {
            Ok(Some(from)) => from,
            _ => return Err("invalid-from"),
        };
        if from.domain().as_str() != component {
            return Err("invalid-from");
        }
        self.route(stanza).await;
        Ok(())
    }

    /// Routes a stanza whose `from` is already trustworthy, by its `to`.
    pub async fn route(&self, stanza: Element) {
        let Some(kind) = Kind::of(&stanza) else { return };
        let to = match stanza::to_jid(&stanza) {
            Ok(Some(to)) => to,
            Ok(None) => return self.bounce(&stanza, StanzaError::bad_request()).await,
            Err(err) => return self.bounce(&stanza, err).await,
        };
        if !self.is_local(&to) {
            return self.route_remote(&to, stanza).await;
        }
        let Some(_) = to.node() else {
            // Addressed to the server itself.
            return match kind {
                Kind::Iq => {
                    let from = stanza::from_jid(&stanza).ok().flatten().unwrap_or_else(|| self.domain_jid());
                    self.handle_iq(from, None, stanza).await
                }
                // Presence to the server (e.g. a probe from a component) needs no answer; a message
                // to the server has no handler yet.
                Kind::Presence => {}
                Kind::Message => self.bounce(&stanza, StanzaError::service_unavailable()).await,
            };
        };
        let account = to.to_bare();
        let from = stanza::from_jid(&stanza).ok().flatten().unwrap_or_else(|| self.domain_jid());
        match self.fire(Event::Filter { account: &account, peer: &from, stanza: &stanza, inbound: true }).await {
            Flow::Continue => {}
            Flow::Handled => return,
            Flow::Reject(err) => return self.bounce(&stanza, err).await,
        }
        match kind {
            Kind::Presence => {
                self.fire(Event::InboundPresence { to: &to, stanza: &stanza }).await;
            }
            Kind::Iq => match to.try_as_full() {
                Ok(full) => self.deliver_iq_to_session(full, stanza).await,
                Err(_) => self.handle_iq(from, Some(account), stanza).await,
            },
            Kind::Message => self.route_message(&to, &account, stanza).await,
        }
    }

    async fn route_remote(&self, to: &Jid, stanza: Element) {
        if let Some(module) = self.hosted.get(to.domain().as_str()).and_then(|i| self.modules.get(*i)) {
            return module.handle_hosted(self, stanza).await;
        }
        let tx = {
            let map = self.components.read().unwrap_or_else(|p| p.into_inner());
            map.get(to.domain().as_str()).cloned()
        };
        match tx {
            Some(tx) => {
                if tx.try_send(Outbound::stanza(stanza)).is_err() {
                    warn!(component = %to.domain(), "component queue full or gone; stanza dropped");
                }
            }
            None => match (self.component_node(to.domain().as_str()), self.sessions.homes()) {
                // A component connected to another node of the cluster (docs/CLUSTER.md "Homes").
                (Some(node), Some(homes)) => homes.forward(&node, stanza),
                // No server-to-server federation: every other domain is unreachable from here.
                _ => self.bounce(&stanza, StanzaError::remote_server_not_found()).await,
            },
        }
    }

    /// RFC 6121 §8.5.2 (bare JID) and §8.5.3 (full JID) for messages.
    async fn route_message(&self, to: &Jid, account: &BareJid, mut stanza: Element) {
        let msg_type = stanza::stanza_type(&stanza).unwrap_or("normal").to_string();
        if let Ok(full) = to.try_as_full() {
            if self.sessions.get(full).is_some() {
                self.inbound_message_hooks(account, &mut stanza).await;
                self.deliver(full, stanza.clone()).await;
                let to = [full.clone()];
                self.notify(Event::MessageDelivered { account, to: &to, stanza: &stanza }).await;
                return;
            }
            // §8.5.3.2.1: no such resource.
            match msg_type.as_str() {
                "groupchat" => return self.bounce(&stanza, StanzaError::service_unavailable()).await,
                "headline" | "error" => return,
                _ => {} // normal and chat: treat as addressed to the bare JID
            }
        }
        if !self.account_exists(account).await {
            if msg_type != "error" && msg_type != "headline" {
                self.bounce(&stanza, StanzaError::service_unavailable()).await;
            }
            return;
        }
        if msg_type == "groupchat" {
            return self.bounce(&stanza, StanzaError::service_unavailable()).await;
        }
        self.inbound_message_hooks(account, &mut stanza).await;
        let targets: Vec<FullJid> = self
            .sessions
            .sessions(account)
            .into_iter()
            .filter(|s| s.available && s.priority >= 0)
            .map(|s| s.jid)
            .collect();
        if targets.is_empty() {
            if msg_type == "headline" || msg_type == "error" {
                return;
            }
            match self.fire(Event::MessageUndelivered { to: account, stanza: &stanza }).await {
                Flow::Handled => self.notify(Event::MessageDelivered { account, to: &[], stanza: &stanza }).await,
                Flow::Reject(err) => self.bounce(&stanza, err).await,
                Flow::Continue => self.bounce(&stanza, StanzaError::service_unavailable()).await,
            }
            return;
        }
        for target in &targets {
            self.deliver(target, stanza.clone()).await;
        }
        self.notify(Event::MessageDelivered { account, to: &targets, stanza: &stanza }).await;
    }

    async fn inbound_message_hooks(&self, account: &BareJid, stanza: &mut Element) {
        for m in self.hooked(Hooks::INBOUND_MESSAGE) {
            m.inbound_message(self, account, stanza).await;
        }
    }

    async fn deliver_iq_to_session(&self, full: &FullJid, stanza: Element) {
        if self.sessions.get(full).is_some() {
            return self.deliver(full, stanza).await;
        }
        // RFC 6121 §8.5.3.2.3 / RFC 6120 §10.5.3.2: no such resource.
        self.bounce(&stanza, StanzaError::service_unavailable()).await;
    }

    /// Hands a stanza to one local session.
    pub async fn deliver(&self, full: &FullJid, stanza: Element) {
        self.deliver_item(full, Outbound::stanza(stanza));
    }

    /// Hands one recipient's share of a stanza encoded once for many to its local session.
    pub async fn deliver_shared(&self, stanza: crate::sessions::SharedStanza) {
        let to = stanza.to.clone();
        self.deliver_item(&to, Outbound::Shared(stanza));
    }

    fn deliver_item(&self, full: &FullJid, item: Outbound) {
        match self.sessions.send(full, item) {
            Ok(()) => {}
            Err(SendError::NoSession) => debug!(to = %full, "session went away; stanza dropped"),
            Err(SendError::QueueFull) => {
                warn!(to = %full, "session queue full; closing it as too slow");
                let _ = self.sessions.send(full, Outbound::Close { condition: "policy-violation", text: None });
            }
        }
    }

    /// Sends a stanza to every available session of an account.
    pub async fn deliver_to_available(&self, account: &BareJid, stanza: &Element) {
        for s in self.sessions.sessions(account) {
            if s.available {
                self.deliver(&s.jid, stanza.clone()).await;
            }
        }
    }

    /// Answers `stanza` with an error, routed back to its sender.
    pub async fn bounce(&self, stanza: &Element, err: StanzaError) {
        if let Some(reply) = error_reply(stanza, &err) {
            if reply.attr("to").is_some() {
                Box::pin(self.route(reply)).await;
            }
        }
    }

    /// IQ addressed to the server (`account` None) or to a local account's bare JID.
    async fn handle_iq(&self, from: Jid, account: Option<BareJid>, stanza: Element) {
        let iq_type = stanza::stanza_type(&stanza).unwrap_or("");
        let is_set = match iq_type {
            "get" => false,
            "set" => true,
            // Results and errors addressed to the server or a bare JID end here.
            "result" | "error" => return,
            _ => return self.bounce(&stanza, StanzaError::bad_request()).await,
        };
        let mut children = stanza.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            return self.bounce(&stanza, StanzaError::bad_request()).await;
        };
        let key = (payload.name(), payload.ns());
        let module = self
            .iq_table
            .iter()
            .find(|((name, ns), _)| *name == key.0 && *ns == key.1)
            .and_then(|(_, i)| self.modules.get(*i))
            .cloned();
        let Some(module) = module else {
            return self.bounce(&stanza, StanzaError::service_unavailable()).await;
        };
        if let Some(acc) = &account {
            if !self.account_exists(acc).await {
                return self.bounce(&stanza, StanzaError::service_unavailable()).await;
            }
        }
        let request = IqRequest { from, to_account: account, is_set, stanza };
        match module.handle_iq(self, &request).await {
            Ok(result) => {
                let mut reply = stanza::iq_result(&request.stanza, result);
                if request.stanza.attr("to").is_none() {
                    reply.remove_attr_str("from");
                }
                self.route_reply(reply).await;
            }
            Err(err) => self.bounce(&request.stanza, err).await,
        }
    }

    async fn route_reply(&self, reply: Element) {
        Box::pin(self.route(reply)).await;
    }

    // --- components ----------------------------------------------------------------------------

    pub fn register_component(&self, domain: &str, tx: mpsc::Sender<Outbound>) -> bool {
        let mut map = self.components.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(domain) {
            return false;
        }
        // In a cluster a component domain is served by one node at a time, like a local one.
        if let Some(homes) = self.sessions.homes() {
            if !homes.claim(&component_key(domain)) {
                return false;
            }
        }
        map.insert(domain.to_string(), tx);
        true
    }

    pub fn unregister_component(&self, domain: &str, tx: &mpsc::Sender<Outbound>) {
        let mut map = self.components.write().unwrap_or_else(|p| p.into_inner());
        if map.get(domain).is_some_and(|t| t.same_channel(tx)) {
            map.remove(domain);
            if let Some(homes) = self.sessions.homes() {
                homes.release(&component_key(domain));
            }
        }
    }

    /// The other cluster node a component `domain` is connected to, if any.
    fn component_node(&self, domain: &str) -> Option<String> {
        self.sessions.homes()?.served_elsewhere(&component_key(domain))
    }

    /// Service domains hosted by modules (listed in the server's disco#items), sorted.
    pub fn hosted_domains(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosted.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn component_domains(&self) -> Vec<String> {
        let map = self.components.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = map.keys().cloned().collect();
        v.sort();
        v
    }

    /// Tells every session and component the server is going away (RFC 6120 §4.9.3.17).
    pub fn shutdown(&self) {
        for jid in self.sessions.all() {
            let _ = self.sessions.send(&jid, Outbound::Close { condition: "system-shutdown", text: None });
        }
        let map = self.components.read().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            let _ = tx.try_send(Outbound::Close { condition: "system-shutdown", text: None });
        }
    }
}
