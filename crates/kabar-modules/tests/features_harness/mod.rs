//! Shared helpers for the `features_*` integration tests: a real [`Server`] with the default
//! modules over an in-memory SQLite store, and fake bound sessions whose queues the tests read.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kabar_core::sessions::{LocalSessions, Outbound, SharedDirectory};
use kabar_core::{accounts, BareJid, Config, Event, Flow, FullJid, Module, Server};
use kabar_storage::SharedStore;
use kabar_storage_sqlite::SqliteStore;
use kabar_xml::{elem, Element, ElementExt};
use tokio::sync::mpsc;

pub const DOMAIN: &str = "localhost";
pub const CLIENT: &str = "jabber:client";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

pub fn config() -> Config {
    Config { domain: DOMAIN.into(), ..Config::default() }
}

/// Records what reaches the modules after filtering, ahead of every real module so nothing can
/// hide it: inbound presence (to whom, what) and account deletions.
#[derive(Default)]
pub struct Probe {
    pub presences: Mutex<Vec<(String, Element)>>,
    pub deleted: Mutex<Vec<String>>,
}

impl Probe {
    /// Inbound presence stanzas addressed to `to` (full or bare JID string, compared by bare JID).
    pub fn presences_to(&self, to_bare: &str) -> Vec<Element> {
        self.presences
            .lock()
            .unwrap()
            .iter()
            .filter(|(to, _)| to.split('/').next() == Some(to_bare))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

struct ProbeModule(Arc<Probe>);

#[async_trait]
impl Module for ProbeModule {
    fn name(&self) -> &'static str {
        "test-probe"
    }
    async fn on_event(&self, _server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::InboundPresence { to, stanza } => {
                self.0.presences.lock().unwrap().push((to.to_string(), (*stanza).clone()));
            }
            Event::AccountDeleted { jid, .. } => self.0.deleted.lock().unwrap().push(jid.to_string()),
            _ => {}
        }
        Flow::Continue
    }
}

pub fn server_with(config: Config) -> (Arc<Server>, Arc<Probe>) {
    let store: SharedStore = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
    let sessions: SharedDirectory = Arc::new(LocalSessions::new());
    let probe = Arc::new(Probe::default());
    let modules = kabar_modules::default_modules(&config);
    let mut builder = Server::builder(Arc::new(config), store, sessions).module(Arc::new(ProbeModule(probe.clone())));
    for m in modules {
        builder = builder.module(m);
    }
    (builder.build().expect("server builds"), probe)
}

pub fn server() -> Arc<Server> {
    server_with(config()).0
}

pub fn bare(s: &str) -> BareJid {
    BareJid::new(s).expect("bare jid")
}

pub fn full(s: &str) -> FullJid {
    FullJid::new(s).expect("full jid")
}

pub async fn create_account(server: &Server, user: &str) -> BareJid {
    let jid = bare(&format!("{user}@{DOMAIN}"));
    accounts::create(&server.store, &jid, "correct horse battery").await.expect("account created");
    jid
}

/// A fake bound session: what the server sends it lands in `rx`.
pub struct Client {
    pub jid: FullJid,
    pub rx: mpsc::Receiver<Outbound>,
    pub tx: mpsc::Sender<Outbound>,
}

impl Client {
    /// Registers `full` as a bound session (not yet available).
    pub fn connect(server: &Server, full_jid: &str) -> Client {
        let jid = full(full_jid);
        let (tx, rx) = mpsc::channel(256);
        assert!(server.sessions.register(jid.clone(), tx.clone(), false), "session registers");
        Client { jid, rx, tx }
    }

    /// Registers the session and marks it available with a plain `<presence/>`.
    pub fn online(server: &Server, full_jid: &str) -> Client {
        let c = Client::connect(server, full_jid);
        let presence = elem("presence", CLIENT).with_attr("from", full_jid);
        server.sessions.update(&c.jid, &mut |s| {
            s.available = true;
            s.presence = Some(presence.clone());
        });
        c
    }

    pub async fn send(&self, server: &Server, stanza: Element) {
        server.from_client(&self.jid, stanza).await;
    }

    /// Everything queued for this session right now.
    pub fn drain(&mut self) -> Vec<Outbound> {
        let mut out = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            out.push(item);
        }
        out
    }

    /// The queued stanzas (closes left out).
    pub fn stanzas(&mut self) -> Vec<Element> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Stanza(s) => Some(*s),
                Outbound::Shared(s) => Some(s.to_element()),
                Outbound::Close { .. } => None,
            })
            .collect()
    }

    /// The queued stanza answering the IQ `id`; panics when there is none.
    pub fn reply(&mut self, id: &str) -> Element {
        let all = self.stanzas();
        all.iter()
            .find(|s| s.name() == "iq" && s.attr("id") == Some(id))
            .cloned()
            .unwrap_or_else(|| panic!("no reply to '{id}' in {all:?}"))
    }

    /// Sends an IQ and returns the answer.
    pub async fn iq(&mut self, server: &Server, iq: Element) -> Element {
        let id = iq.attr("id").expect("iq id").to_string();
        self.send(server, iq).await;
        self.reply(&id)
    }

    /// Closes the session the way the c2s layer does: unregister, then tell the modules.
    pub async fn close(self, server: &Server) {
        let info = server.sessions.unregister(&self.jid, &self.tx).expect("was registered");
        server
            .notify(Event::SessionClosed {
                jid: &self.jid,
                was_available: info.available,
                directed_to: &info.directed_to,
            })
            .await;
    }
}

pub fn iq(typ: &str, id: &str, to: Option<&str>, payload: Element) -> Element {
    let mut iq = elem("iq", CLIENT).with_attr("type", typ).with_attr("id", id).with_child(payload);
    if let Some(to) = to {
        iq.set_attr_str("to", to);
    }
    iq
}

pub fn message(to: &str, body: &str) -> Element {
    elem("message", CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("id", "m1")
        .with_child(elem("body", CLIENT).with_text(body))
}

pub fn is_result(iq: &Element) -> bool {
    iq.attr("type") == Some("result")
}

/// The defined condition of an error stanza, e.g. "forbidden".
pub fn error_condition(stanza: &Element) -> Option<String> {
    assert_eq!(stanza.attr("type"), Some("error"), "not an error: {stanza:?}");
    let error = stanza.get_child("error", CLIENT)?;
    error.children().find(|c| c.ns() == STANZAS && c.name() != "text").map(|c| c.name().to_string())
}

pub fn error_type(stanza: &Element) -> Option<String> {
    stanza.get_child("error", CLIENT).and_then(|e| e.attr("type")).map(str::to_string)
}

pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}
