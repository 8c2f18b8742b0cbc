//! A small in-process harness for module tests: a real [`Server`] over an in-memory SQLite store
//! and the local session directory, with fake client sessions whose queues the test reads.
//!
//! ```ignore
//! let h = Harness::new(kabar_modules::default_modules(&Config::default())).await;
//! let mut alice = h.login("alice@localhost/phone").await;
//! h.send("alice@localhost/phone", parse("<presence xmlns='jabber:client'/>")).await;
//! let got = recv_all(&mut alice);
//! ```
//!
//! Everything the server does in answer to `send` has happened when it returns (deliveries are
//! queue pushes), so `recv_all` sees it without waiting.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kabar_core::sessions::{LocalSessions, Outbound};
use kabar_core::{Config, Event, FullJid, Module, Server};
use kabar_storage::{AccountCredentials, ScramCredentials, SharedStore};
use kabar_storage_sqlite::SqliteStore;
use kabar_xml::{Element, ElementExt};
use tokio::sync::mpsc;

pub use kabar_core::{BareJid, Jid};

pub type Rx = mpsc::Receiver<Outbound>;

pub struct Harness {
    pub server: Arc<Server>,
    senders: Mutex<HashMap<String, mpsc::Sender<Outbound>>>,
}

fn dummy_credentials() -> AccountCredentials {
    let creds =
        ScramCredentials { salt: vec![7; 16], iterations: 4096, stored_key: vec![1; 32], server_key: vec![2; 32] };
    AccountCredentials { scram_sha1: creds.clone(), scram_sha256: creds }
}

pub fn full(jid: &str) -> FullJid {
    FullJid::new(jid).expect("test JIDs are valid full JIDs")
}

pub fn bare(jid: &str) -> BareJid {
    BareJid::new(jid).expect("test JIDs are valid bare JIDs")
}

impl Harness {
    /// A server for domain `localhost` with the default configuration.
    pub async fn new(modules: Vec<Arc<dyn Module>>) -> Harness {
        Self::with_config(Config::default(), modules).await
    }

    pub async fn with_config(config: Config, modules: Vec<Arc<dyn Module>>) -> Harness {
        let store: SharedStore = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let mut builder = Server::builder(Arc::new(config), store, Arc::new(LocalSessions::new()));
        for m in modules {
            builder = builder.module(m);
        }
        let server = builder.build().expect("server builds");
        Harness { server, senders: Mutex::new(HashMap::new()) }
    }

    /// Creates the account (bare JID or username) unless it exists.
    pub async fn create_account(&self, jid: &str) -> BareJid {
        let b = if jid.contains('@') { bare(jid) } else { bare(&format!("{jid}@{}", self.server.domain)) };
        if !self.server.account_exists(&b).await {
            self.server.store.create_account(b.as_str(), &dummy_credentials()).await.expect("account created");
        }
        b
    }

    /// Binds a session for `jid` (creating the account if needed) and returns its queue.
    pub async fn login(&self, jid: &str) -> Rx {
        let f = full(jid);
        self.create_account(f.to_bare().as_str()).await;
        let (tx, rx) = mpsc::channel(4096);
        assert!(self.server.sessions.register(f.clone(), tx.clone(), false), "resource {jid} already bound");
        self.senders.lock().expect("lock").insert(f.to_string(), tx);
        rx
    }

    /// Ends the session the way the c2s layer does: unregister, then notify `SessionClosed`.
    pub async fn logout(&self, jid: &str) {
        let f = full(jid);
        let tx = self.senders.lock().expect("lock").remove(f.as_str()).expect("session was logged in");
        let info = self.server.sessions.unregister(&f, &tx).expect("session registered");
        self.server
            .notify(Event::SessionClosed { jid: &f, was_available: info.available, directed_to: &info.directed_to })
            .await;
    }

    /// A stanza from the client session `jid`.
    pub async fn send(&self, jid: &str, stanza: Element) {
        self.server.from_client(&full(jid), stanza).await;
    }

    /// Makes the accounts of the full JIDs `a` and `b` subscribed to each other (subscription
    /// 'both') the way clients do it (needs the roster and presence modules). The sessions need
    /// not be logged in; the ones that are get the pushes and presence that go with it.
    pub async fn befriend(&self, a: &str, b: &str) {
        let (fa, fb) = (full(a), full(b));
        let (ba, bb) = (fa.to_bare(), fb.to_bare());
        self.create_account(ba.as_str()).await;
        self.create_account(bb.as_str()).await;
        self.send(a, presence(Some(bb.as_str()), Some("subscribe"))).await;
        self.send(b, presence(Some(ba.as_str()), Some("subscribed"))).await;
        self.send(b, presence(Some(ba.as_str()), Some("subscribe"))).await;
        self.send(a, presence(Some(bb.as_str()), Some("subscribed"))).await;
    }

    /// Sends `<iq type='get'><query xmlns='jabber:iq:roster'/></iq>` and returns the answer.
    pub async fn roster_get(&self, jid: &str, rx: &mut Rx) -> Element {
        self.send(jid, parse("<iq xmlns='jabber:client' type='get' id='rg'><query xmlns='jabber:iq:roster'/></iq>"))
            .await;
        recv_all(rx).into_iter().find(|s| s.name() == "iq" && s.attr("id") == Some("rg")).expect("roster result")
    }
}

/// Parses one XML element (give it its namespace, e.g. `xmlns='jabber:client'`).
pub fn parse(xml: &str) -> Element {
    Element::from_reader(xml.as_bytes()).expect("test XML parses")
}

/// Every stanza queued for a session so far (stream-close requests are skipped).
pub fn recv_all(rx: &mut Rx) -> Vec<Element> {
    recv_outbound(rx)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Stanza(s) => Some(*s),
            Outbound::Shared(s) => Some(s.to_element()),
            Outbound::Close { .. } => None,
        })
        .collect()
}

/// Everything queued for a session so far, including close requests.
pub fn recv_outbound(rx: &mut Rx) -> Vec<Outbound> {
    let mut out = Vec::new();
    while let Ok(o) = rx.try_recv() {
        out.push(o);
    }
    out
}

// --- stanza builders -----------------------------------------------------------------------------

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_ROSTER: &str = "jabber:iq:roster";

pub fn presence(to: Option<&str>, kind: Option<&str>) -> Element {
    let mut p = kabar_xml::elem("presence", NS_CLIENT);
    if let Some(to) = to {
        p.set_attr_str("to", to);
    }
    if let Some(kind) = kind {
        p.set_attr_str("type", kind);
    }
    p
}

pub fn message(to: &str, body: &str) -> Element {
    kabar_xml::elem("message", NS_CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_child(kabar_xml::elem("body", NS_CLIENT).with_text(body))
}

// --- assertions helpers --------------------------------------------------------------------------

pub fn is_presence(s: &Element, kind: Option<&str>, from: &str) -> bool {
    s.name() == "presence" && s.attr("type") == kind && s.attr("from") == Some(from)
}

/// The roster pushes (iq set with a jabber:iq:roster query) among `stanzas`, as their single item.
pub fn pushes(stanzas: &[Element]) -> Vec<Element> {
    stanzas
        .iter()
        .filter(|s| s.name() == "iq" && s.attr("type") == Some("set"))
        .filter_map(|s| s.get_child("query", NS_ROSTER))
        .filter_map(|q| q.get_child("item", NS_ROSTER).cloned())
        .collect()
}

pub fn presences(stanzas: &[Element]) -> Vec<Element> {
    stanzas.iter().filter(|s| s.name() == "presence").cloned().collect()
}
