//! XEP-0280 Message Carbons (and the XEP-0334 `<no-copy/>` hint) through a real server.

mod common;

use std::sync::Arc;

use common::*;
use kabar_core::{Config, Module};
use kabar_modules::carbons::{CarbonsModule, NS_CARBONS, NS_CARBONS_RULES, NS_FORWARD};
use kabar_modules::{
    disco::DiscoModule, offline::OfflineModule, presence::PresenceModule, roster::RosterModule,
};
use kabar_xml::{elem, Element, ElementExt};

const A1: &str = "alice@localhost/phone";
const A2: &str = "alice@localhost/laptop";
const A3: &str = "alice@localhost/tablet";
const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost/pc";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn modules() -> Vec<Arc<dyn Module>> {
    vec![
        Arc::new(DiscoModule::new()),
        Arc::new(CarbonsModule::new()),
        Arc::new(RosterModule::new()),
        Arc::new(PresenceModule::new()),
        Arc::new(OfflineModule::new()),
    ]
}

fn carbons_iq(op: &str, id: &str, to: Option<&str>) -> Element {
    let mut iq = elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_child(elem(op, NS_CARBONS));
    if let Some(to) = to {
        iq.set_attr_str("to", to);
    }
    iq
}

fn reply_to<'a>(got: &'a [Element], id: &str) -> &'a Element {
    got.iter()
        .find(|s| s.name() == "iq" && s.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no reply {id} in {got:?}"))
}

fn error_condition(s: &Element) -> Option<String> {
    s.get_child("error", NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_STANZAS)
        .map(|c| c.name().to_string())
}

async fn set_carbons(h: &Harness, jid: &str, rx: &mut Rx, op: &str) {
    h.send(jid, carbons_iq(op, "c", None)).await;
    let got = recv_all(rx);
    assert_eq!(reply_to(&got, "c").attr("type"), Some("result"), "{got:?}");
}

fn with_priority(priority: i8) -> Element {
    presence(None, None).with_child(elem("priority", NS_CLIENT).with_text(priority.to_string()))
}

/// Logs `jid` in, sends available presence (with `priority`) and, if asked, enables carbons.
async fn online(h: &Harness, jid: &str, priority: i8, carbons: bool) -> Rx {
    let mut rx = h.login(jid).await;
    h.send(jid, with_priority(priority)).await;
    if carbons {
        set_carbons(h, jid, &mut rx, "enable").await;
    }
    rx
}

/// Alice on three resources (phone and laptop with carbons, tablet without) and Bob, all available.
async fn setup() -> (Harness, Rx, Rx, Rx, Rx) {
    let h = Harness::new(modules()).await;
    let a1 = online(&h, A1, 0, true).await;
    let a2 = online(&h, A2, 0, true).await;
    let a3 = online(&h, A3, 0, false).await;
    let b = online(&h, BOB, 0, false).await;
    let mut rxs = (h, a1, a2, a3, b);
    drain(&mut rxs);
    rxs
}

fn drain((_, a1, a2, a3, b): &mut (Harness, Rx, Rx, Rx, Rx)) {
    for rx in [a1, a2, a3, b] {
        recv_all(rx);
    }
}

fn messages(rx: &mut Rx) -> Vec<Element> {
    recv_all(rx)
        .into_iter()
        .filter(|s| s.name() == "message")
        .collect()
}

/// Checks `copy` is a carbon of kind `kind` ("sent"/"received") for `to`, and returns the forwarded message.
fn unwrap_carbon<'a>(copy: &'a Element, kind: &str, to: &str) -> &'a Element {
    assert_eq!(copy.name(), "message");
    assert_eq!(copy.ns(), NS_CLIENT);
    assert_eq!(copy.attr("from"), Some(ALICE), "{copy:?}");
    assert_eq!(copy.attr("to"), Some(to), "{copy:?}");
    let wrapper = copy
        .get_child(kind, NS_CARBONS)
        .unwrap_or_else(|| panic!("no <{kind}/> in {copy:?}"));
    let forwarded = wrapper
        .get_child("forwarded", NS_FORWARD)
        .expect("forwarded");
    let inner = forwarded
        .get_child("message", NS_CLIENT)
        .expect("forwarded message");
    assert_eq!(
        copy.attr("type"),
        inner.attr("type"),
        "wrapper keeps the type"
    );
    inner
}

fn body(m: &Element) -> Option<String> {
    m.get_child("body", NS_CLIENT).map(|b| b.text())
}

fn chat(to: &str, text: &str) -> Element {
    message(to, text)
}

// --- discovery, enabling, disabling ---------------------------------------------------------------

#[tokio::test]
async fn xep0280_3_server_advertises_carbons_and_rules() {
    let h = Harness::new(kabar_modules::default_modules(&Config::default())).await;
    let features = h.server.server_features();
    assert!(features.contains(&NS_CARBONS), "{features:?}");
    assert!(features.contains(&NS_CARBONS_RULES), "{features:?}");

    let h = Harness::new(modules()).await;
    let mut a = h.login(A1).await;
    h.send(
        A1,
        elem("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "d")
            .with_attr("to", "localhost")
            .with_child(elem("query", "http://jabber.org/protocol/disco#info")),
    )
    .await;
    let got = recv_all(&mut a);
    let query = reply_to(&got, "d")
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    assert!(
        query
            .children()
            .any(|f| f.name() == "feature" && f.attr("var") == Some(NS_CARBONS)),
        "{query:?}"
    );
}

#[tokio::test]
async fn xep0280_4_5_enable_and_disable_answer_results_and_repeat_without_error() {
    let h = Harness::new(modules()).await;
    let mut a = h.login(A1).await;
    // §4: no 'to'; also accepted addressed to the server or to the account's own bare JID.
    for (i, (op, to)) in [
        ("enable", None),
        ("enable", None), // §9.1: a repeated enable is not an error
        ("disable", Some("localhost")),
        ("disable", Some(ALICE)), // nor is a repeated disable
        ("enable", Some(ALICE)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("i{i}");
        h.send(A1, carbons_iq(op, &id, to)).await;
        let got = recv_all(&mut a);
        let reply = reply_to(&got, &id);
        assert_eq!(
            reply.attr("type"),
            Some("result"),
            "{op} to {to:?}: {reply:?}"
        );
        assert_eq!(reply.children().count(), 0);
    }
}

#[tokio::test]
async fn xep0280_4_1_get_is_bad_request_and_another_account_is_not_allowed() {
    let h = Harness::new(modules()).await;
    let mut a = h.login(A1).await;
    let mut b = h.login(BOB).await;
    let mut get = carbons_iq("enable", "g", None);
    get.set_attr_str("type", "get");
    h.send(A1, get).await;
    let got = recv_all(&mut a);
    assert_eq!(
        error_condition(reply_to(&got, "g")).as_deref(),
        Some("bad-request")
    );

    // §5 example: trying to switch another user's carbons.
    h.send(BOB, carbons_iq("enable", "x", Some(ALICE))).await;
    let got = recv_all(&mut b);
    assert_eq!(
        error_condition(reply_to(&got, "x")).as_deref(),
        Some("not-allowed")
    );
    assert!(recv_all(&mut a).is_empty());
}

// --- received copies (§6) -------------------------------------------------------------------------

#[tokio::test]
async fn xep0280_6_message_to_full_jid_is_copied_to_other_enabled_resources() {
    let (h, mut a1, mut a2, mut a3, mut b) = setup().await;
    h.send(BOB, chat(A1, "to the phone")).await;

    let original = messages(&mut a1);
    assert_eq!(original.len(), 1, "{original:?}");
    assert_eq!(body(&original[0]).as_deref(), Some("to the phone"));
    assert!(
        original[0].get_child("received", NS_CARBONS).is_none(),
        "the addressee gets the original"
    );

    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let inner = unwrap_carbon(&copies[0], "received", A2);
    assert_eq!(copies[0].attr("type"), Some("chat"));
    assert_eq!(
        inner, &original[0],
        "the forwarded message is the original as delivered"
    );
    assert_eq!(inner.attr("from"), Some(BOB));
    assert_eq!(inner.attr("to"), Some(A1));

    assert!(
        messages(&mut a3).is_empty(),
        "carbons not enabled on the tablet"
    );
    assert!(recv_all(&mut b).is_empty());
}

#[tokio::test]
async fn xep0280_6_message_to_bare_jid_reaching_every_resource_is_not_duplicated() {
    let (h, mut a1, mut a2, mut a3, _b) = setup().await;
    h.send(BOB, chat(ALICE, "to everyone")).await;
    for rx in [&mut a1, &mut a2, &mut a3] {
        let got = messages(rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(body(&got[0]).as_deref(), Some("to everyone"));
        assert!(got[0].get_child("received", NS_CARBONS).is_none());
    }
}

#[tokio::test]
async fn xep0280_6_enabled_resource_left_out_by_delivery_rules_gets_a_copy() {
    let h = Harness::new(modules()).await;
    let mut a1 = online(&h, A1, 1, false).await;
    // Negative priority: RFC 6121 §8.5.2.1.1 does not deliver bare-JID messages here.
    let mut a2 = online(&h, A2, -1, true).await;
    let _b = online(&h, BOB, 0, false).await;
    recv_all(&mut a1);
    recv_all(&mut a2);
    h.send(BOB, chat(ALICE, "hi")).await;
    assert_eq!(messages(&mut a1).len(), 1);
    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        unwrap_carbon(&copies[0], "received", A2).attr("to"),
        Some(ALICE)
    );
}

#[tokio::test]
async fn xep0280_6_message_stored_offline_is_copied_to_enabled_negative_priority_resource() {
    let h = Harness::new(modules()).await;
    let mut a2 = online(&h, A2, -1, true).await;
    let mut b = online(&h, BOB, 0, false).await;
    recv_all(&mut a2);
    recv_all(&mut b);
    h.send(BOB, chat(ALICE, "later")).await;
    assert_eq!(
        h.server
            .store
            .offline_messages(ALICE)
            .await
            .expect("store")
            .len(),
        1
    );
    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        body(unwrap_carbon(&copies[0], "received", A2)).as_deref(),
        Some("later")
    );
    assert!(recv_all(&mut b).is_empty());
}

// --- sent copies (§7) -----------------------------------------------------------------------------

#[tokio::test]
async fn xep0280_7_sent_message_is_copied_to_other_enabled_resources_not_the_sender() {
    let (h, mut a1, mut a2, mut a3, mut b) = setup().await;
    h.send(A1, chat(BOB, "from the phone")).await;

    let delivered = messages(&mut b);
    assert_eq!(delivered.len(), 1);
    assert!(
        messages(&mut a1).is_empty(),
        "the sender gets no copy of its own message"
    );
    assert!(
        messages(&mut a3).is_empty(),
        "carbons not enabled on the tablet"
    );

    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let inner = unwrap_carbon(&copies[0], "sent", A2);
    assert_eq!(inner.attr("from"), Some(A1));
    assert_eq!(inner.attr("to"), Some(BOB));
    assert_eq!(inner, &delivered[0]);
}

#[tokio::test]
async fn xep0280_7_sender_need_not_enable_carbons_itself() {
    let (h, mut a1, mut a2, mut a3, _b) = setup().await;
    h.send(A3, chat(BOB, "from the tablet")).await;
    for (rx, to) in [(&mut a1, A1), (&mut a2, A2)] {
        let copies = messages(rx);
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(unwrap_carbon(&copies[0], "sent", to).attr("from"), Some(A3));
    }
    assert!(messages(&mut a3).is_empty());
}

#[tokio::test]
async fn xep0280_7_message_between_own_resources_is_not_echoed() {
    let (h, mut a1, mut a2, mut a3, _b) = setup().await;
    // Carbons on the tablet too, so every resource is a candidate.
    set_carbons(&h, A3, &mut a3, "enable").await;
    h.send(A1, chat(A2, "note to self")).await;
    assert!(
        messages(&mut a1).is_empty(),
        "no sent or received copy for the sender"
    );
    let got = messages(&mut a2);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].get_child("sent", NS_CARBONS).is_none()
            && got[0].get_child("received", NS_CARBONS).is_none()
    );
    let copies = messages(&mut a3);
    assert_eq!(copies.len(), 1, "{copies:?}");
    unwrap_carbon(&copies[0], "received", A3);
}

#[tokio::test]
async fn xep0280_5_disabled_or_unavailable_resources_get_nothing() {
    let (h, mut a1, mut a2, mut a3, _b) = setup().await;
    set_carbons(&h, A2, &mut a2, "disable").await;
    // Enabled but not available (never sent presence).
    let a4 = "alice@localhost/watch";
    let mut a4rx = h.login(a4).await;
    set_carbons(&h, a4, &mut a4rx, "enable").await;
    recv_all(&mut a3);

    h.send(BOB, chat(A1, "in")).await;
    h.send(A1, chat(BOB, "out")).await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert!(messages(&mut a2).is_empty());
    assert!(messages(&mut a3).is_empty());
    assert!(messages(&mut a4rx).is_empty());
}

#[tokio::test]
async fn xep0280_closed_session_forgets_carbons() {
    let (h, mut a1, _a2, _a3, _b) = setup().await;
    h.logout(A2).await;
    let mut a2 = online(&h, A2, 0, false).await;
    recv_all(&mut a1);
    recv_all(&mut a2);
    h.send(BOB, chat(A1, "in")).await;
    h.send(A1, chat(BOB, "out")).await;
    assert!(
        messages(&mut a2).is_empty(),
        "the new session has not enabled carbons"
    );
}

// --- eligibility (§6.1, §8, XEP-0334) -------------------------------------------------------------

#[tokio::test]
async fn xep0280_8_private_and_xep0334_no_copy_are_not_copied_and_arrive_intact() {
    let (h, mut a1, mut a2, _a3, mut b) = setup().await;
    for marker in [
        elem("private", NS_CARBONS),
        elem("no-copy", "urn:xmpp:hints"),
    ] {
        let outgoing = chat(BOB, "secret").with_child(marker.clone());
        h.send(A1, outgoing.clone()).await;
        let delivered = messages(&mut b);
        assert_eq!(delivered.len(), 1);
        let mut expected = outgoing;
        expected.set_attr_str("from", A1);
        assert_eq!(
            delivered[0], expected,
            "the stanza keeps its tree, marker included"
        );

        h.send(BOB, chat(A1, "secret").with_child(marker)).await;
        assert_eq!(messages(&mut a1).len(), 1);
        assert!(messages(&mut a2).is_empty(), "no copies");
    }
}

#[tokio::test]
async fn xep0280_6_1_groupchat_and_headline_are_not_copied() {
    let (h, mut a1, mut a2, _a3, _b) = setup().await;
    for kind in ["groupchat", "headline"] {
        let mut m = chat(A1, "news");
        m.set_attr_str("type", kind);
        h.send(BOB, m.clone()).await;
        assert_eq!(messages(&mut a1).len(), 1, "{kind} delivered");
        h.send(A1, {
            let mut m = m;
            m.set_attr_str("to", BOB);
            m
        })
        .await;
        assert!(messages(&mut a2).is_empty(), "{kind} not copied");
    }
}

#[tokio::test]
async fn xep0280_6_1_normal_messages_need_a_body_or_im_payload() {
    let (h, mut a1, mut a2, _a3, _b) = setup().await;
    let normal = |child: Element| {
        elem("message", NS_CLIENT)
            .with_attr("to", A1)
            .with_attr("id", "n")
            .with_child(child)
    };

    h.send(BOB, normal(elem("body", NS_CLIENT).with_text("plain")))
        .await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert_eq!(messages(&mut a2).len(), 1, "type normal with a body");

    h.send(BOB, normal(elem("x", "jabber:x:oob"))).await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert!(
        messages(&mut a2).is_empty(),
        "type normal without body or IM payload"
    );

    h.send(
        BOB,
        normal(elem("displayed", "urn:xmpp:chat-markers:0").with_attr("id", "m1")),
    )
    .await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert_eq!(messages(&mut a2).len(), 1, "XEP-0333 marker");
}

#[tokio::test]
async fn xep0280_6_1_chat_receipts_markers_and_states_are_copied_and_passed_through_unchanged() {
    let (h, mut a1, mut a2, _a3, mut b) = setup().await;
    let payloads = [
        elem("received", "urn:xmpp:receipts").with_attr("id", "m1"),
        elem("displayed", "urn:xmpp:chat-markers:0").with_attr("id", "m1"),
        elem("composing", "http://jabber.org/protocol/chatstates"),
    ];
    for payload in payloads {
        let sent = elem("message", NS_CLIENT)
            .with_attr("to", A1)
            .with_attr("type", "chat")
            .with_attr("id", "r1")
            .with_child(payload.clone());
        h.send(BOB, sent.clone()).await;
        let mut expected = sent;
        expected.set_attr_str("from", BOB);
        assert_eq!(
            messages(&mut a1),
            vec![expected.clone()],
            "delivered unchanged"
        );
        let copies = messages(&mut a2);
        assert_eq!(copies.len(), 1, "{payload:?}: {copies:?}");
        assert_eq!(unwrap_carbon(&copies[0], "received", A2), &expected);

        // The same from Alice: a sent copy.
        let mut reply = expected.clone();
        reply.set_attr_str("to", BOB);
        reply.remove_attr_str("from");
        h.send(A1, reply).await;
        assert_eq!(messages(&mut b).len(), 1);
        let copies = messages(&mut a2);
        assert_eq!(copies.len(), 1, "{copies:?}");
        unwrap_carbon(&copies[0], "sent", A2);
    }
}

#[tokio::test]
async fn xep0280_6_1_bounce_of_an_eligible_message_is_copied() {
    let (h, mut a1, mut a2, _a3, _b) = setup().await;
    // An unknown account: the chat message bounces with <service-unavailable/>.
    h.send(A1, chat("nobody@localhost", "anyone?")).await;
    let got = messages(&mut a1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attr("type"), Some("error"));
    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert_eq!(
        unwrap_carbon(&copies[0], "sent", A2).attr("type"),
        Some("chat")
    );
    let bounce = unwrap_carbon(&copies[1], "received", A2);
    assert_eq!(bounce.attr("type"), Some("error"));
    assert_eq!(
        error_condition(bounce).as_deref(),
        Some("service-unavailable")
    );
}

#[tokio::test]
async fn xep0280_6_1_muc_rules() {
    let (h, mut a1, mut a2, _a3, mut b) = setup().await;
    let muc_x = || elem("x", "http://jabber.org/protocol/muc#user");
    // The "room" is played by Bob's account: what counts is the <x/> and the addresses.

    // A private message from a MUC participant (a full JID) is not copied.
    h.send(BOB, chat(A1, "pm").with_child(muc_x())).await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert!(messages(&mut a2).is_empty());

    // A private message the user sends to a participant is.
    h.send(A1, chat(BOB, "pm back").with_child(muc_x())).await;
    assert_eq!(messages(&mut b).len(), 1);
    let copies = messages(&mut a2);
    assert_eq!(copies.len(), 1, "{copies:?}");
    unwrap_carbon(&copies[0], "sent", A2);

    // A mediated invitation (from the room's bare JID) is copied.
    let invite = elem("message", NS_CLIENT)
        .with_attr("to", A1)
        .with_child(muc_x().with_child(
            elem("invite", "http://jabber.org/protocol/muc#user").with_attr("from", "x@y"),
        ));
    h.send(BOB, invite).await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert_eq!(messages(&mut a2).len(), 1, "mediated invitation");

    // A XEP-0249 direct invitation is copied.
    let direct = elem("message", NS_CLIENT)
        .with_attr("to", A1)
        .with_child(elem("x", "jabber:x:conference").with_attr("jid", "room@conference.localhost"));
    h.send(BOB, direct).await;
    assert_eq!(messages(&mut a1).len(), 1);
    assert_eq!(messages(&mut a2).len(), 1, "direct invitation");
}

// --- forged carbons (§11) -------------------------------------------------------------------------

fn forged(kind: &str, to: &str) -> Element {
    let inner = elem("message", NS_CLIENT)
        .with_attr("from", "mallory@evil.example/x")
        .with_attr("to", A1)
        .with_attr("type", "chat")
        .with_child(elem("body", NS_CLIENT).with_text("trust me"));
    elem("message", NS_CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_child(
            elem(kind, NS_CARBONS).with_child(elem("forwarded", NS_FORWARD).with_child(inner)),
        )
}

#[tokio::test]
async fn xep0280_11_forged_carbons_are_dropped_silently_and_never_copied() {
    let (h, mut a1, mut a2, mut a3, mut b) = setup().await;
    for kind in ["sent", "received"] {
        for to in [A1, ALICE] {
            // From another user…
            h.send(BOB, forged(kind, to)).await;
            // … or from another of the user's own resources (not its bare JID).
            h.send(A2, forged(kind, to)).await;
        }
    }
    for rx in [&mut a1, &mut a2, &mut a3, &mut b] {
        assert!(recv_all(rx).is_empty(), "dropped, no error, no copies");
    }
}

#[tokio::test]
async fn xep0280_11_routed_carbon_from_own_bare_jid_is_dropped() {
    // A copy re-routed from a closed session's queue must not reach another resource.
    let (h, mut a1, mut a2, mut a3, _b) = setup().await;
    let mut copy = forged("received", A1);
    copy.set_attr_str("from", ALICE);
    h.server.route(copy).await;
    for rx in [&mut a1, &mut a2, &mut a3] {
        assert!(recv_all(rx).is_empty());
    }
}

#[tokio::test]
async fn xep0280_6_copy_survives_the_wire_with_the_forwarded_message_in_jabber_client() {
    use kabar_xml::{HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamWriter};
    let (h, _a1, mut a2, _a3, _b) = setup().await;
    h.send(BOB, chat(A1, "over the wire")).await;
    let copy = messages(&mut a2).pop().expect("a copy");

    let mut w = StreamWriter::new();
    let header = HeaderAttrs {
        content_ns: NS_CLIENT,
        from: Some("localhost"),
        to: None,
        id: "s",
        version: Some("1.0"),
        lang: None,
    };
    w.open(&header).expect("header");
    w.element(&copy).expect("copy serialises");
    let bytes = w.take();
    let mut framer = StreamFramer::new(Limits::default());
    let mut out = Vec::new();
    framer.feed(&bytes, &mut out).expect("parses back");
    let parsed = out.iter().find_map(|e| {
        if let StreamEvent::Element(el) = e {
            Some(el)
        } else {
            None
        }
    });
    let parsed = parsed.expect("the copy");
    assert_eq!(parsed, &copy);
    assert_eq!(
        body(unwrap_carbon(parsed, "received", A2)).as_deref(),
        Some("over the wire")
    );
}
