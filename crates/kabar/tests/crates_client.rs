//! End-to-end tests: the real `kabar` binary, real loopback sockets, and an independent XMPP client
//! from crates.io (tokio-xmpp 6, rustls with the ring backend). Nothing here shares code with the
//! server: if these pass, a stock Rust XMPP client can log in and talk through kabar.
//!
//! Every test starts its own server (own temp folder, own ports, own private CA) and is bounded
//! by [`TEST_TIMEOUT`]; every wait inside is bounded by [`STEP`].
//!
//! The client is tokio-xmpp's `StanzaStream` (the engine under its `Client`: connector, STARTTLS,
//! SASL, bind, XEP-0198), driven directly. tokio-xmpp 6.0.0's `Client` wrapper loses wake-ups:
//! its `StanzaReceiver::poll_next` returns `Pending` without registering a waker when
//! `try_lock` fails because a concurrent `send_stanza`/`send_iq` holds the shared mutex, after
//! which incoming stanzas and IQ replies sit unread forever (seen here as ~1 run in 8 hanging
//! with the stanza already logged as received). `StanzaStream` has no such mutex.
//!
//! tokio-xmpp retries failed logins forever in the background and drops stanzas it cannot
//! parse, so it suits positive tests; the wrong-password test uses its lower layers (connector +
//! `client_login`) to observe the SASL `<failure/>` itself. Set `KABAR_E2E_WIRE=1` to print
//! tokio-xmpp's SEND/RECV trace (see `support::wire_log`).

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use sasl::common::{ChannelBinding, Credentials};
use support::TestServer;
use tokio::time::timeout;
use tokio_xmpp::connect::{DirectTlsServerConnector, DnsConfig, ServerConnector, StartTlsServerConnector};
use tokio_xmpp::error::AuthError;
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::delay::Delay;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::roster::{Ask, Group, Item, Roster, Subscription};
use tokio_xmpp::parsers::sasl::DefinedCondition;
use tokio_xmpp::stanzastream::{Event, StanzaStage, StanzaState, StanzaStream, StreamEvent};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::Stanza;

/// Upper bound for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one network step (log in, one reply, one delivery).
const STEP: Duration = Duration::from_secs(20);

/// Runs a test body under [`TEST_TIMEOUT`].
async fn bounded<F: Future<Output = ()>>(name: &str, body: F) {
    if timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("{name}: did not finish within {TEST_TIMEOUT:?}");
    }
}

fn bare(server: &TestServer, local: &str) -> BareJid {
    BareJid::new(&format!("{local}@{}", server.domain)).expect("valid bare JID")
}

fn text_body(text: &str) -> (Lang, String) {
    (Lang::new(), text.to_string())
}

fn body_of(msg: &Message) -> Option<String> {
    msg.get_best_body_cloned(vec![]).map(|(_, b)| b)
}

fn as_message(s: &Stanza) -> Option<&Message> {
    match s {
        Stanza::Message(m) => Some(m),
        _ => None,
    }
}

/// One logged-in tokio-xmpp stream plus the stanzas read but not yet asked for.
struct Xmpp {
    stream: StanzaStream,
    jid: FullJid,
    pending: VecDeque<Stanza>,
    next_id: u64,
}

impl Xmpp {
    /// Logs in over STARTTLS to the server's loopback port (no DNS SRV) and waits for the bound
    /// session.
    async fn login(server: &TestServer, local: &str, password: &str) -> Xmpp {
        let connector = StartTlsServerConnector::from(DnsConfig::addr(&server.addr()));
        Self::login_with(connector, bare(server, local), password).await
    }

    /// Starts tokio-xmpp's c2s stream with `connector` and waits for its first `Reset` event
    /// (authenticated, resource bound).
    async fn login_with<C: ServerConnector>(connector: C, jid: BareJid, password: &str) -> Xmpp {
        let mut stream =
            StanzaStream::new_c2s(connector, Jid::from(jid.clone()), password.to_string(), Timeouts::tight(), 16);
        let mut seen = Vec::new();
        let waited = timeout(STEP, async {
            loop {
                match stream.next().await {
                    Some(Event::Stream(StreamEvent::Reset { bound_jid, .. })) => return bound_jid,
                    Some(Event::Stream(other)) => seen.push(format!("{other:?}")),
                    Some(Event::Stanza(s)) => seen.push(format!("{s:?}")),
                    None => panic!("{jid}: stream ended before going online"),
                }
            }
        })
        .await;
        let bound = match waited {
            Ok(j) => j,
            Err(_) => panic!(
                "{jid}: not online within {STEP:?} (tokio-xmpp retries failed logins silently; see the server log). Seen: {seen:?}"
            ),
        };
        let jid = bound.try_into_full().unwrap_or_else(|b| panic!("{jid}: bound JID {b} has no resource"));
        Xmpp { stream, jid, pending: VecDeque::new(), next_id: 0 }
    }

    fn new_id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}-{}", self.next_id)
    }

    /// Sends a stanza and waits until it is written to the transport.
    async fn send(&mut self, stanza: impl Into<Stanza>, what: &str) {
        let mut token = self.stream.send(Box::new(stanza.into())).await;
        match timeout(STEP, token.wait_for(StanzaStage::Sent)).await {
            Ok(Some(StanzaState::Sent { .. } | StanzaState::Acked { .. })) => {}
            Ok(other) => panic!("{}: sending {what} failed: {other:?}", self.jid),
            Err(_) => panic!("{}: sending {what}: not written within {STEP:?}", self.jid),
        }
    }

    /// Next stanza that `pick` accepts (earlier unclaimed ones first), bounded by [`STEP`].
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Stanza) -> Option<T>) -> T {
        if let Some(i) = self.pending.iter().position(|s| pick(s).is_some()) {
            let s = self.pending.remove(i).expect("index in range");
            return pick(&s).expect("picked before");
        }
        let jid = self.jid.clone();
        let stream = &mut self.stream;
        let pending = &mut self.pending;
        let res = timeout(STEP, async {
            loop {
                match stream.next().await {
                    Some(Event::Stanza(s)) => match pick(&s) {
                        Some(t) => return t,
                        None => pending.push_back(s),
                    },
                    Some(Event::Stream(ev)) => panic!("{jid}: waiting for {what}: stream event {ev:?} (reconnect?)"),
                    None => panic!("{jid}: waiting for {what}: stream ended"),
                }
            }
        })
        .await;
        match res {
            Ok(t) => t,
            Err(_) => panic!("{}: no {what} within {STEP:?}; other stanzas received: {:?}", self.jid, self.pending),
        }
    }

    /// Sends an IQ get/set and returns the matching result or error (RFC 6120 §8.2.3).
    async fn iq(&mut self, iq: Iq, what: &str) -> Iq {
        let id = iq.id().to_string();
        self.send(iq, what).await;
        self.wait_for(&format!("reply to {what} (id {id})"), |s| match s {
            Stanza::Iq(r @ (Iq::Result { .. } | Iq::Error { .. })) if r.id() == id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// XEP-0199 ping to the server. The reply proves the server has processed everything this
    /// session sent before it (a session's stanzas are handled in order).
    async fn ping_server(&mut self, server: &TestServer) {
        let id = self.new_id("ping");
        let ping = Iq::from_get(id, Ping).with_to(Jid::new(&server.domain).expect("domain JID"));
        match self.iq(ping, "XEP-0199 ping").await {
            Iq::Result { .. } => {}
            other => panic!("{}: XEP-0199 ping to the server failed: {other:?}", self.jid),
        }
    }

    /// Closes the stream cleanly (`</stream:stream>`), bounded by [`STEP`].
    async fn close(self) {
        let jid = self.jid.clone();
        if timeout(STEP, self.stream.close()).await.is_err() {
            panic!("{jid}: closing the stream took longer than {STEP:?}");
        }
    }
}

/// RFC 6120 §5 (STARTTLS), §6 (SASL: tokio-xmpp picks SCRAM-SHA-256-PLUS with tls-exporter under
/// TLS 1.3), §7 (resource binding): a crates.io client logs in and gets a full JID for its account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6120_starttls_scram_login_with_crates_io_client() {
    let mut server = TestServer::new("login");
    server.add_user("alice", "alice-secret-1");
    server.start();
    bounded("rfc6120_starttls_scram_login_with_crates_io_client", async {
        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        assert_eq!(alice.jid.to_bare(), bare(&server, "alice"), "bound JID must be alice's account");
        assert!(!alice.jid.resource().as_str().is_empty(), "bound JID {} must carry a resource (RFC 6120 §7)", alice.jid);
        // The session is usable: a round-trip with the server works.
        alice.ping_server(&server).await;
        alice.close().await;
    })
    .await;
}

/// XEP-0368 / RFC 6120 §5: the same login over the direct-TLS port (TLS from the first byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xep0368_direct_tls_scram_login_with_crates_io_client() {
    let mut server = TestServer::new("directtls");
    server.add_user("alice", "alice-secret-1");
    server.start();
    bounded("xep0368_direct_tls_scram_login_with_crates_io_client", async {
        let addr = format!("127.0.0.1:{}", server.direct_tls_port);
        let connector = DirectTlsServerConnector::from(DnsConfig::addr(&addr));
        let mut alice = Xmpp::login_with(connector, bare(&server, "alice"), "alice-secret-1").await;
        assert_eq!(alice.jid.to_bare(), bare(&server, "alice"));
        alice.ping_server(&server).await;
        alice.close().await;
    })
    .await;
}

/// RFC 6121 §8.5.2.1.1 (message to a bare JID goes to the available resource), §8.5.3.1 (message to
/// a full JID of a connected resource), §4.2 (initial presence): alice and bob, both tokio-xmpp,
/// chat both ways; each side sees the sender's full JID as `from`, type chat and the exact body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6121_8_5_chat_between_two_crates_io_clients() {
    let mut server = TestServer::new("chat");
    server.add_user("alice", "alice-secret-1");
    server.add_user("bob", "bob-secret-1");
    server.start();
    bounded("rfc6121_8_5_chat_between_two_crates_io_clients", async {
        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        let mut bob = Xmpp::login(&server, "bob", "bob-secret-1").await;

        alice.send(Presence::available(), "alice's initial presence").await;
        bob.send(Presence::available(), "bob's initial presence").await;
        // Make sure the server has processed both initial presences before any message is routed,
        // so the message to bob's bare JID finds an available resource (not offline storage).
        alice.ping_server(&server).await;
        bob.ping_server(&server).await;

        let hello = "Hello bob, it's alice \u{1F44B} <&>";
        let (lang, text) = text_body(hello);
        let msg = Message::chat(Jid::from(bare(&server, "bob"))).with_body(lang, text);
        alice.send(msg, "alice's chat message").await;

        let got = bob
            .wait_for("alice's chat message at bob", |s| as_message(s).filter(|m| body_of(m).is_some()).cloned())
            .await;
        assert_eq!(got.from, Some(Jid::from(alice.jid.clone())), "from must be alice's full JID: {got:?}");
        assert_eq!(got.type_, MessageType::Chat, "type must stay chat: {got:?}");
        assert_eq!(body_of(&got).as_deref(), Some(hello), "body must arrive unchanged: {got:?}");
        if let Some(to) = &got.to {
            assert_eq!(to.to_bare(), bare(&server, "bob"), "to must address bob: {got:?}");
        }

        // And back, to alice's full JID as a reply would.
        let answer = "Hi alice, bob here.";
        let (lang, text) = text_body(answer);
        let reply = Message::chat(Jid::from(alice.jid.clone())).with_body(lang, text);
        bob.send(reply, "bob's reply").await;
        let got = alice
            .wait_for("bob's reply at alice", |s| as_message(s).filter(|m| body_of(m).is_some()).cloned())
            .await;
        assert_eq!(got.from, Some(Jid::from(bob.jid.clone())), "from must be bob's full JID: {got:?}");
        assert_eq!(got.type_, MessageType::Chat, "type must stay chat: {got:?}");
        assert_eq!(body_of(&got).as_deref(), Some(answer), "body must arrive unchanged: {got:?}");

        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// RFC 6121 §2.1.3 (roster get), §2.3 (roster set → result + push to interested resources): an item
/// with a name and a group, set by a crates.io client, comes back from a roster get with
/// subscription "none" and no pending ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6121_2_roster_set_and_get_with_crates_io_client() {
    let mut server = TestServer::new("roster");
    server.add_user("alice", "alice-secret-1");
    server.start();
    bounded("rfc6121_2_roster_set_and_get_with_crates_io_client", async {
        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        let carol = bare(&server, "carol");

        // §2.1.3 first: requesting the roster makes this resource "interested" (§2.1.6), the
        // ones that get roster pushes. A fresh account's roster is empty.
        let id = alice.new_id("roster-get");
        match alice.iq(Iq::from_get(id, Roster { ver: None, items: vec![] }), "first roster get").await {
            Iq::Result { payload: Some(payload), .. } => {
                let r = Roster::try_from(payload).expect("roster result parses");
                assert!(r.items.is_empty(), "a new account has an empty roster: {r:?}");
            }
            other => panic!("first roster get: expected a result with <query/> (RFC 6121 §2.1.3), got {other:?}"),
        }

        let set = Roster {
            ver: None,
            items: vec![Item {
                jid: carol.clone(),
                name: Some("Carol C.".into()),
                subscription: Subscription::None,
                ask: Ask::None,
                groups: vec![Group("Friends".into())],
                approved: None,
            }],
        };
        let id = alice.new_id("roster-set");
        match alice.iq(Iq::from_set(id, set), "roster set").await {
            Iq::Result { .. } => {}
            other => panic!("roster set: expected a result (RFC 6121 §2.3.2), got {other:?}"),
        }

        // §2.3.2: the server pushes the change to the user's interested resources; acknowledge it
        // as a client SHOULD.
        let account = alice.jid.to_bare();
        let (push_id, push) = alice
            .wait_for("roster push", |s| match s {
                Stanza::Iq(Iq::Set { id, payload, from, .. }) if payload.is("query", ns::ROSTER) => {
                    assert!(
                        from.is_none() || from.as_ref().map(|f| f.to_bare()) == Some(account.clone()),
                        "roster push must come from the user's bare JID or no one (RFC 6121 §2.1.6), got {from:?}"
                    );
                    Some((id.clone(), Roster::try_from(payload.clone()).expect("roster push parses")))
                }
                _ => None,
            })
            .await;
        assert_eq!(push.items.len(), 1, "a push carries exactly one item: {push:?}");
        assert_eq!(push.items[0].jid, carol);
        alice.send(Iq::empty_result(Jid::from(account.clone()), push_id), "roster push ack").await;

        let id = alice.new_id("roster-get");
        let got = match alice.iq(Iq::from_get(id, Roster { ver: None, items: vec![] }), "roster get").await {
            Iq::Result { payload: Some(payload), .. } => Roster::try_from(payload).expect("roster result parses"),
            other => panic!("roster get: expected a result with <query/>, got {other:?}"),
        };
        let item = got
            .items
            .iter()
            .find(|i| i.jid == carol)
            .unwrap_or_else(|| panic!("roster get lacks {carol}: {got:?}"));
        assert_eq!(item.name.as_deref(), Some("Carol C."), "name kept: {item:?}");
        assert_eq!(item.groups, vec![Group("Friends".into())], "group kept: {item:?}");
        assert_eq!(item.subscription, Subscription::None, "no subscription yet: {item:?}");
        assert_eq!(item.ask, Ask::None, "no pending subscription request: {item:?}");
        assert_eq!(got.items.len(), 1, "only the one item: {got:?}");

        alice.close().await;
    })
    .await;
}

/// RFC 6120 §6.4.5 / §6.5.10: SASL with a wrong password ends in `<failure><not-authorized/>`,
/// and a tokio-xmpp stream with that password never reaches a session. The right password over
/// the same low-level path succeeds, so the failure is the password's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6120_6_wrong_password_fails_with_crates_io_client() {
    let mut server = TestServer::new("badpw");
    server.add_user("alice", "alice-secret-1");
    server.start();
    bounded("rfc6120_6_wrong_password_fails_with_crates_io_client", async {
        let jid = Jid::from(bare(&server, "alice"));

        // tokio-xmpp's own STARTTLS connector and SASL driver (`client_login`), one attempt.
        let attempt = |password: &'static str| {
            let connector = StartTlsServerConnector::from(DnsConfig::addr(&server.addr()));
            let jid = jid.clone();
            async move {
                let (pending, binding) =
                    connector.connect(&jid, ns::JABBER_CLIENT, Timeouts::tight()).await.expect("STARTTLS connection");
                let (features, stream) = pending.recv_features().await.expect("post-TLS stream features");
                assert!(
                    features.sasl_mechanisms.contains("SCRAM-SHA-256-PLUS"),
                    "server offers SCRAM-SHA-256-PLUS after TLS: {:?}",
                    features.sasl_mechanisms
                );
                assert!(
                    matches!(binding, ChannelBinding::TlsExporter(_)),
                    "TLS 1.3 gives tls-exporter channel binding, so SCRAM-SHA-256-PLUS is what runs"
                );
                let creds = Credentials::default()
                    .with_username("alice")
                    .with_password(password)
                    .with_channel_binding(binding);
                tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await.map(|_| ())
            }
        };

        match timeout(STEP, attempt("not-alices-password")).await {
            Ok(Err(tokio_xmpp::Error::Auth(AuthError::Fail(DefinedCondition::NotAuthorized)))) => {}
            Ok(Err(e)) => panic!("wrong password: expected SASL <not-authorized/>, got error {e:?}"),
            Ok(Ok(())) => panic!("wrong password: SASL succeeded"),
            Err(_) => panic!("wrong password: no SASL outcome within {STEP:?}"),
        }

        // The full client stack with the wrong password must never come online (it retries with
        // back-off in the background: attempts at 0 s and 1 s fall in this window).
        let connector = StartTlsServerConnector::from(DnsConfig::addr(&server.addr()));
        let mut bad = StanzaStream::new_c2s(connector, jid.clone(), "not-alices-password".into(), Timeouts::tight(), 16);
        let outcome = timeout(Duration::from_secs(3), async {
            loop {
                match bad.next().await {
                    Some(Event::Stream(StreamEvent::Reset { bound_jid, .. })) => return Some(bound_jid),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await;
        if let Ok(Some(bound)) = outcome {
            panic!("wrong password: got a session bound to {bound}");
        }
        drop(bad);

        // Control: the right password over the same path is accepted.
        match timeout(STEP, attempt("alice-secret-1")).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("right password after failures: SASL failed: {e:?}"),
            Err(_) => panic!("right password: no SASL outcome within {STEP:?}"),
        }
    })
    .await;
}

/// XEP-0160 (offline storage, delivered on initial presence with priority ≥ 0) + XEP-0203 (delay
/// stamp) + RFC 6121 §8.5.2.1.1 (bare JID with no available resource → store): alice messages
/// offline bob; the server is stopped with SIGTERM and restarted on the same data folder; bob
/// logs in, sends initial presence and gets the message with `<delay xmlns='urn:xmpp:delay'/>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xep0160_offline_message_survives_restart() {
    let mut server = TestServer::new("offline");
    server.add_user("alice", "alice-secret-1");
    server.add_user("bob", "bob-secret-1");
    server.start();
    let text = "Stored while you were away, bob.";
    let mut alice_full = None;
    bounded("xep0160_offline_message_survives_restart (before restart)", async {
        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        alice.send(Presence::available(), "alice's initial presence").await;
        let (lang, body) = text_body(text);
        let msg = Message::chat(Jid::from(bare(&server, "bob"))).with_body(lang, body);
        alice.send(msg, "alice's message to offline bob").await;
        // The ping reply means the message was routed (and stored) before the shutdown.
        alice.ping_server(&server).await;
        alice_full = Some(alice.jid.clone());
        alice.close().await;
    })
    .await;
    let alice_full = alice_full.expect("alice logged in");

    let status = tokio::task::block_in_place(|| server.stop_sigterm());
    assert!(status.success(), "SIGTERM must stop kabar cleanly, got {status}; log:\n{}", server.log_text());
    tokio::task::block_in_place(|| server.start());

    bounded("xep0160_offline_message_survives_restart (after restart)", async {
        let mut bob = Xmpp::login(&server, "bob", "bob-secret-1").await;
        bob.send(Presence::available(), "bob's initial presence").await;
        let got = bob
            .wait_for("the offline message at bob", |s| as_message(s).filter(|m| body_of(m).is_some()).cloned())
            .await;
        assert_eq!(body_of(&got).as_deref(), Some(text), "body kept: {got:?}");
        assert_eq!(got.type_, MessageType::Chat, "type kept: {got:?}");
        let from = got.from.clone().expect("stored message has a from");
        assert_eq!(from, Jid::from(alice_full.clone()), "from is alice's full JID as sent: {got:?}");
        let delay: Vec<&Element> = got.payloads.iter().filter(|p| p.is("delay", ns::DELAY)).collect();
        assert_eq!(delay.len(), 1, "exactly one <delay xmlns='urn:xmpp:delay'/>: {got:?}");
        let delay = Delay::try_from(delay[0].clone()).expect("XEP-0203 delay parses (stamp is XEP-0082)");
        let age = stamp_age_secs(&delay);
        assert!((-5..=600).contains(&age), "delay stamp {:?} should be the time of storage (age {age} s)", delay.stamp);
        bob.close().await;
    })
    .await;
}

/// Seconds between the delay stamp and now (the stamp is a chrono time inside xmpp-parsers).
fn stamp_age_secs(delay: &Delay) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    now - delay.stamp.0.timestamp()
}

/// XEP-0045 with the crates.io client: alice creates a room (§10.1: status 110 + 201, instant room by
/// an empty submitted owner form, §10.1.2), bob joins (§7.2: he sees alice's presence, then his own with
/// 110), and alice's groupchat message (§7.4) reaches bob from the room JID with her nick, carrying the
/// room's XEP-0359 stanza-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xep0045_room_created_joined_and_groupchat_with_crates_io_clients() {
    const MUC: &str = "http://jabber.org/protocol/muc";
    const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
    const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
    const SID: &str = "urn:xmpp:sid:0";
    let mut server = TestServer::new("muc");
    server.add_user("alice", "alice-secret-1");
    server.add_user("bob", "bob-secret-1");
    server.start();
    bounded("xep0045_room_created_joined_and_groupchat_with_crates_io_clients", async {
        let room = BareJid::new(&format!("lounge@conference.{}", server.domain)).expect("room JID");
        let occupant = |nick: &str| Jid::from(room.with_resource_str(nick).expect("occupant JID"));
        let statuses = |p: &Presence| -> Vec<String> {
            p.payloads
                .iter()
                .filter(|x| x.is("x", MUC_USER))
                .flat_map(|x| x.children().filter(|c| c.is("status", MUC_USER)).filter_map(|c| c.attr("code")).map(str::to_owned))
                .collect()
        };
        let join = |nick: &str| {
            Presence::available().with_to(occupant(nick)).with_payloads(vec![Element::builder("x", MUC).build()])
        };

        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        alice.send(join("Alice"), "alice joins (creates) the room").await;
        let me = occupant("Alice");
        let own = alice
            .wait_for("alice's self-presence", |s| match s {
                Stanza::Presence(p) if p.from.as_ref() == Some(&me) => Some(p.clone()),
                _ => None,
            })
            .await;
        let codes = statuses(&own);
        assert!(codes.contains(&"110".to_owned()) && codes.contains(&"201".to_owned()), "§10.1.1: 110 and 201, got {own:?}");

        let id = alice.new_id("instant-room");
        let form = Element::builder("query", MUC_OWNER)
            .append(kabar_xml::ElementExt::with_attr(Element::builder("x", "jabber:x:data").build(), "type", "submit"))
            .build();
        let set = Iq::Set { from: None, to: Some(Jid::from(room.clone())), id, payload: form };
        match alice.iq(set, "instant room (empty owner form)").await {
            Iq::Result { .. } => {}
            other => panic!("§10.1.2 instant room: expected a result, got {other:?}"),
        }

        let mut bob = Xmpp::login(&server, "bob", "bob-secret-1").await;
        bob.send(join("Bob"), "bob joins").await;
        let alice_seen = bob
            .wait_for("alice's presence in the room", |s| match s {
                Stanza::Presence(p) if p.from.as_ref() == Some(&me) => Some(p.clone()),
                _ => None,
            })
            .await;
        assert!(!statuses(&alice_seen).contains(&"110".to_owned()), "110 is only for one's own presence");
        let bob_self = occupant("Bob");
        let own = bob
            .wait_for("bob's self-presence", |s| match s {
                Stanza::Presence(p) if p.from.as_ref() == Some(&bob_self) => Some(p.clone()),
                _ => None,
            })
            .await;
        assert!(statuses(&own).contains(&"110".to_owned()), "§7.2.3: self-presence carries 110: {own:?}");

        let text = "Welcome to the lounge, Bob";
        let (lang, body) = text_body(text);
        alice.send(Message::groupchat(Jid::from(room.clone())).with_body(lang, body), "alice's groupchat message").await;
        let got = bob
            .wait_for("the groupchat message at bob", |s| {
                as_message(s).filter(|m| m.type_ == MessageType::Groupchat && body_of(m).is_some()).cloned()
            })
            .await;
        assert_eq!(got.from, Some(me.clone()), "§7.4: from the room JID with the sender's nick: {got:?}");
        assert_eq!(body_of(&got).as_deref(), Some(text));
        let sid = got.payloads.iter().find(|p| p.is("stanza-id", SID)).expect("XEP-0359 stanza-id from the room");
        assert_eq!(sid.attr("by"), Some(room.as_str()), "the room assigns the stanza-id: {sid:?}");

        alice.close().await;
        bob.close().await;
    })
    .await;
}

/// XEP-0163 PEP with XEP-0223 publish-options, as OMEMO (XEP-0384) needs it: alice publishes her
/// device list with `pubsub#access_model = open`, and bob, who is not in her roster, fetches it
/// (XEP-0060 §6.5); a node under the default `presence` model stays closed to him (§6.5.9.13:
/// not-authorized + presence-subscription-required). Payloads built and parsed with xmpp-parsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xep0163_omemo_device_list_with_open_access_fetched_by_a_stranger_with_crates_io_clients() {
    use tokio_xmpp::parsers::data_forms::{DataForm, DataFormType, Field};
    use tokio_xmpp::parsers::legacy_omemo::{Device, DeviceList};
    use tokio_xmpp::parsers::pubsub::pubsub::{Item as PubSubItem, Items, Publish, PublishOptions};
    use tokio_xmpp::parsers::pubsub::{ItemId, NodeName, PubSub};
    const DEVICE_LIST: &str = "eu.siacs.conversations.axolotl.devicelist";
    const NICK: &str = "http://jabber.org/protocol/nick";
    const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

    let mut server = TestServer::new("pep");
    server.add_user("alice", "alice-secret-1");
    server.add_user("bob", "bob-secret-1");
    server.start();
    bounded("xep0163_omemo_device_list_with_open_access_fetched_by_a_stranger_with_crates_io_clients", async {
        let alice_bare = Jid::from(bare(&server, "alice"));
        let mut alice = Xmpp::login(&server, "alice", "alice-secret-1").await;
        let publish = |node: &str, payload: Element, access: Option<&str>| PubSub::Publish {
            publish: Publish {
                node: NodeName(node.to_owned()),
                items: vec![PubSubItem { id: Some(ItemId("current".to_owned())), publisher: None, payload: Some(payload) }],
            },
            publish_options: access.map(|model| PublishOptions {
                form: Some(DataForm::new(
                    DataFormType::Submit,
                    PUBLISH_OPTIONS,
                    vec![Field::text_single("pubsub#access_model", model)],
                )),
            }),
        };
        let devices = DeviceList { devices: vec![Device { id: 4223 }, Device { id: 977 }] };
        let id = alice.new_id("publish-devices");
        match alice.iq(Iq::from_set(id, publish(DEVICE_LIST, devices.clone().into(), Some("open"))), "device list publish").await {
            Iq::Result { .. } => {}
            other => panic!("XEP-0223 publish with access_model=open: expected a result, got {other:?}"),
        }
        let nick = Element::builder("nick", NICK).append("Alice").build();
        let id = alice.new_id("publish-nick");
        match alice.iq(Iq::from_set(id, publish(NICK, nick, None)), "nick publish").await {
            Iq::Result { .. } => {}
            other => panic!("XEP-0172 nick publish: expected a result, got {other:?}"),
        }

        let mut bob = Xmpp::login(&server, "bob", "bob-secret-1").await;
        let id = bob.new_id("fetch-devices");
        let get = Iq::from_get(id, PubSub::Items(Items::new(DEVICE_LIST))).with_to(alice_bare.clone());
        let payload = match bob.iq(get, "device list fetch").await {
            Iq::Result { payload: Some(p), .. } => p,
            other => panic!("XEP-0060 §6.5 items of an open node: expected a result with items, got {other:?}"),
        };
        let items = match PubSub::try_from(payload) {
            Ok(PubSub::Items(items)) => items,
            other => panic!("expected <items/> in the result, got {other:?}"),
        };
        assert_eq!(items.items.len(), 1, "{items:?}");
        let fetched = items.items[0].payload.clone().map(DeviceList::try_from);
        assert!(matches!(fetched, Some(Ok(ref list)) if *list == devices), "the published device list, got {fetched:?}");

        let id = bob.new_id("fetch-nick");
        let get = Iq::from_get(id, PubSub::Items(Items::new(NICK))).with_to(alice_bare.clone());
        match bob.iq(get, "nick fetch").await {
            Iq::Error { error, .. } => {
                assert_eq!(error.defined_condition, tokio_xmpp::parsers::stanza_error::DefinedCondition::NotAuthorized, "{error:?}");
                let specific = error.other.as_ref().map(|e| e.name().to_owned());
                assert_eq!(specific.as_deref(), Some("presence-subscription-required"), "{error:?}");
            }
            other => panic!("§6.5.9.13: a presence-model node refuses a stranger, got {other:?}"),
        }
        alice.close().await;
        bob.close().await;
    })
    .await;
}
