//! XEP-0357 Push Notifications (the user's server side) through a real server, with a fake app
//! server registered as the component `push.localhost`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kabar_core::{Config, Module};
use kabar_modules::push::{
    self, PushModule, FORM_PUBLISH_OPTIONS, FORM_SUMMARY, MAX_REGISTRATIONS, NS_DATA, NS_PUBSUB, NS_PUSH,
};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tokio::sync::mpsc;

const A1: &str = "alice@localhost/phone";
const A2: &str = "alice@localhost/laptop";
const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost/pc";
const APP: &str = "push.localhost";
const NODE: &str = "yxs32uqsflafdk3iuqo";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const SECRET_BODY: &str = "the launch code is 0000";

/// The default modules, with the push module replaced by `push` when given.
fn modules(push: Option<PushModule>) -> Vec<Arc<dyn Module>> {
    let mut list = kabar_modules::default_modules(&Config::default());
    if let Some(push) = push {
        let at = list.iter().position(|m| m.name() == "push").expect("push is a default module");
        list[at] = Arc::new(push);
    }
    list
}

struct Setup {
    h: Harness,
    app: Rx,
    alice: Rx,
}

/// A server with the app server component connected and alice logged in (not yet available) as A1.
async fn setup_with(push: Option<PushModule>) -> Setup {
    let h = Harness::new(modules(push)).await;
    let (tx, app) = mpsc::channel(256);
    assert!(h.server.register_component(APP, tx));
    let alice = h.login(A1).await;
    h.create_account("bob").await;
    Setup { h, app, alice }
}

async fn setup() -> Setup {
    setup_with(None).await
}

fn form(fields: &[(&str, &str)]) -> Element {
    let mut x = elem("x", NS_DATA).with_attr("type", "submit");
    for (var, value) in fields {
        x.append_child(
            elem("field", NS_DATA).with_attr("var", *var).with_child(elem("value", NS_DATA).with_text(*value)),
        );
    }
    x
}

fn publish_options() -> Element {
    form(&[("FORM_TYPE", FORM_PUBLISH_OPTIONS), ("secret", "eruio234vzxc2kla-91")])
}

fn enable_iq(id: &str, jid: Option<&str>, node: Option<&str>, options: Option<Element>) -> Element {
    let mut enable = elem("enable", NS_PUSH);
    if let Some(jid) = jid {
        enable.set_attr_str("jid", jid);
    }
    if let Some(node) = node {
        enable.set_attr_str("node", node);
    }
    if let Some(options) = options {
        enable.append_child(options);
    }
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", id).with_child(enable)
}

fn disable_iq(id: &str, jid: &str, node: Option<&str>) -> Element {
    let mut disable = elem("disable", NS_PUSH).with_attr("jid", jid);
    if let Some(node) = node {
        disable.set_attr_str("node", node);
    }
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", id).with_child(disable)
}

fn reply_to<'a>(got: &'a [Element], id: &str) -> &'a Element {
    got.iter()
        .find(|s| s.name() == "iq" && s.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no reply {id} in {got:?}"))
}

fn error_condition(s: &Element) -> Option<String> {
    s.get_child("error", NS_CLIENT)?.children().find(|c| c.ns() == NS_STANZAS).map(|c| c.name().to_string())
}

/// Sends `iq` from `jid` and returns the answer with its id.
async fn ask(h: &Harness, jid: &str, rx: &mut Rx, iq: Element) -> Element {
    let id = iq.attr("id").expect("test iqs have ids").to_string();
    h.send(jid, iq).await;
    reply_to(&recv_all(rx), &id).clone()
}

async fn enable(s: &mut Setup, options: Option<Element>) {
    let reply = ask(&s.h, A1, &mut s.alice, enable_iq("en", Some(APP), Some(NODE), options)).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

async fn stored(h: &Harness) -> Vec<(String, String, Option<Element>)> {
    push::registrations(&h.server, &bare(ALICE))
        .await
        .expect("registrations load")
        .into_iter()
        .map(|r| (r.registration.jid, r.registration.node, r.form))
        .collect()
}

/// Every publish IQ the app server received so far.
fn notifications(app: &mut Rx) -> Vec<Element> {
    recv_all(app).into_iter().filter(|s| s.name() == "iq" && s.attr("type") == Some("set")).collect()
}

fn summary_fields(iq: &Element) -> Vec<(String, String)> {
    let x = iq
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("publish", NS_PUBSUB))
        .and_then(|p| p.get_child("item", NS_PUBSUB))
        .and_then(|i| i.get_child("notification", NS_PUSH))
        .and_then(|n| n.get_child("x", NS_DATA))
        .unwrap_or_else(|| panic!("no summary form in {iq:?}"));
    assert_eq!(x.attr("type"), Some("submit"));
    x.children()
        .filter(|f| f.is("field", NS_DATA))
        .map(|f| {
            let value = f.get_child("value", NS_DATA).map(|v| v.text()).unwrap_or_default();
            (f.attr("var").unwrap_or("").to_string(), value)
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], var: &str) -> Option<&'a str> {
    fields.iter().find(|(v, _)| v == var).map(|(_, value)| value.as_str())
}

fn message_count(iq: &Element) -> u64 {
    field(&summary_fields(iq), "message-count").and_then(|c| c.parse().ok()).expect("message-count")
}

fn encrypted_message(to: &str) -> Element {
    elem("message", NS_CLIENT).with_attr("to", to).with_attr("type", "chat").with_child(
        elem("encrypted", "eu.siacs.conversations.axolotl")
            .with_child(elem("header", "eu.siacs.conversations.axolotl").with_attr("sid", "1"))
            .with_child(elem("payload", "eu.siacs.conversations.axolotl").with_text("c2VjcmV0")),
    )
}

async fn go_available(h: &Harness, jid: &str) {
    h.send(jid, presence(None, None)).await;
}

async fn answer(h: &Harness, iq: &Element, kind: &str, error: Option<(&str, &str)>) {
    let mut reply = elem("iq", NS_CLIENT)
        .with_attr("type", kind)
        .with_attr("from", iq.attr("to").expect("to"))
        .with_attr("to", iq.attr("from").expect("from"))
        .with_attr("id", iq.attr("id").expect("id"));
    if let Some((error_type, condition)) = error {
        reply.append_child(
            elem("error", NS_CLIENT).with_attr("type", error_type).with_child(elem(condition, NS_STANZAS)),
        );
    }
    h.server.from_component(APP, reply).await.expect("component may send from its domain");
}

// --- registration ---------------------------------------------------------------------------------

#[tokio::test]
async fn xep0357_5_enable_and_6_disable_answer_result_and_store_the_registration() {
    let mut s = setup().await;
    enable(&mut s, Some(publish_options())).await;
    let regs = stored(&s.h).await;
    assert_eq!(regs.len(), 1);
    assert_eq!((regs[0].0.as_str(), regs[0].1.as_str()), (APP, NODE));
    assert_eq!(
        regs[0].2.as_ref().map(|f| element_to_bytes(f).expect("bytes")),
        Some(element_to_bytes(&publish_options()).expect("bytes"))
    );

    // Enabling the same (jid, node) again replaces the form.
    enable(&mut s, None).await;
    let regs = stored(&s.h).await;
    assert_eq!(regs.len(), 1);
    assert!(regs[0].2.is_none());

    let reply = ask(&s.h, A1, &mut s.alice, disable_iq("dis", APP, Some(NODE))).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert!(stored(&s.h).await.is_empty());
    // Disabling what is not there is fine.
    let reply = ask(&s.h, A1, &mut s.alice, disable_iq("dis2", APP, Some(NODE))).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

#[tokio::test]
async fn xep0357_5_enable_addressed_to_own_bare_jid_or_domain_is_accepted() {
    let mut s = setup().await;
    let mut iq = enable_iq("e1", Some(APP), Some("n1"), None);
    iq.set_attr_str("to", ALICE);
    assert_eq!(ask(&s.h, A1, &mut s.alice, iq).await.attr("type"), Some("result"));
    let mut iq = enable_iq("e2", Some(APP), Some("n2"), None);
    iq.set_attr_str("to", "localhost");
    assert_eq!(ask(&s.h, A1, &mut s.alice, iq).await.attr("type"), Some("result"));
    assert_eq!(stored(&s.h).await.len(), 2);
}

#[tokio::test]
async fn xep0357_6_disable_without_node_removes_every_node_of_that_app_server() {
    let mut s = setup().await;
    for node in ["n1", "n2"] {
        let reply = ask(&s.h, A1, &mut s.alice, enable_iq("e", Some(APP), Some(node), None)).await;
        assert_eq!(reply.attr("type"), Some("result"));
    }
    let reply = ask(&s.h, A1, &mut s.alice, enable_iq("e", Some("other.example"), Some("n3"), None)).await;
    assert_eq!(reply.attr("type"), Some("result"));
    let reply = ask(&s.h, A1, &mut s.alice, disable_iq("d", APP, None)).await;
    assert_eq!(reply.attr("type"), Some("result"));
    let regs = stored(&s.h).await;
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].0, "other.example");
}

#[tokio::test]
async fn xep0357_5_malformed_requests_are_refused() {
    let mut s = setup().await;
    let cases: Vec<(Element, &str)> = vec![
        (enable_iq("m1", None, Some(NODE), None), "bad-request"),
        (enable_iq("m2", Some(APP), None, None), "bad-request"),
        (enable_iq("m3", Some(APP), Some(""), None), "bad-request"),
        (enable_iq("m4", Some("@@bad"), Some(NODE), None), "jid-malformed"),
        (enable_iq("m5", Some(ALICE), Some(NODE), None), "bad-request"),
        (enable_iq("m6", Some(APP), Some(NODE), Some(form(&[("FORM_TYPE", "urn:example:other")]))), "bad-request"),
        (enable_iq("m7", Some(APP), Some(NODE), Some(elem("x", NS_DATA).with_attr("type", "form"))), "bad-request"),
        (enable_iq("m8", Some(APP), Some(&"n".repeat(2000)), None), "bad-request"),
        (
            enable_iq(
                "m9",
                Some(APP),
                Some(NODE),
                Some(form(&[("FORM_TYPE", FORM_PUBLISH_OPTIONS), ("big", &"x".repeat(5000))])),
            ),
            "not-acceptable",
        ),
    ];
    for (iq, condition) in cases {
        let id = iq.attr("id").expect("id").to_string();
        let reply = ask(&s.h, A1, &mut s.alice, iq).await;
        assert_eq!(reply.attr("type"), Some("error"), "{id}: {reply:?}");
        assert_eq!(error_condition(&reply).as_deref(), Some(condition), "{id}: {reply:?}");
    }
    let mut get = enable_iq("g", Some(APP), Some(NODE), None);
    get.set_attr_str("type", "get");
    let reply = ask(&s.h, A1, &mut s.alice, get).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"), "{reply:?}");
    assert!(stored(&s.h).await.is_empty());
}

#[tokio::test]
async fn xep0357_5_other_accounts_and_components_are_forbidden() {
    let mut s = setup().await;
    let mut bob = s.h.login(BOB).await;
    for (id, op) in [("f1", enable_iq("f1", Some(APP), Some(NODE), None)), ("f2", disable_iq("f2", APP, None))] {
        let mut iq = op;
        iq.set_attr_str("to", ALICE);
        let reply = ask(&s.h, BOB, &mut bob, iq).await;
        assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"), "{id}: {reply:?}");
    }
    // A component asking the server on nobody's behalf.
    let mut iq = enable_iq("f3", Some(APP), Some(NODE), None);
    iq.set_attr_str("from", APP);
    iq.set_attr_str("to", "localhost");
    s.h.server.from_component(APP, iq).await.expect("component may send from its domain");
    let got = recv_all(&mut s.app);
    assert_eq!(error_condition(reply_to(&got, "f3")).as_deref(), Some("forbidden"), "{got:?}");
    assert!(stored(&s.h).await.is_empty());
    let _ = recv_all(&mut s.alice);
}

#[tokio::test]
async fn xep0357_registrations_per_account_are_limited() {
    let mut s = setup().await;
    for i in 0..MAX_REGISTRATIONS {
        let reply = ask(&s.h, A1, &mut s.alice, enable_iq("e", Some(APP), Some(&format!("n{i}")), None)).await;
        assert_eq!(reply.attr("type"), Some("result"), "{i}: {reply:?}");
    }
    let reply = ask(&s.h, A1, &mut s.alice, enable_iq("over", Some(APP), Some("one-too-many"), None)).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("policy-violation"), "{reply:?}");
    // Updating an existing registration is still possible.
    let reply = ask(&s.h, A1, &mut s.alice, enable_iq("upd", Some(APP), Some("n0"), Some(publish_options()))).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert_eq!(stored(&s.h).await.len(), MAX_REGISTRATIONS);
}

#[tokio::test]
async fn xep0357_4_push_is_an_account_feature() {
    let mut s = setup().await;
    let iq = elem("iq", NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "disco")
        .with_attr("to", ALICE)
        .with_child(elem("query", NS_DISCO_INFO));
    let reply = ask(&s.h, A1, &mut s.alice, iq).await;
    let query = reply.get_child("query", NS_DISCO_INFO).unwrap_or_else(|| panic!("{reply:?}"));
    assert!(query.children().any(|f| f.name() == "feature" && f.attr("var") == Some(NS_PUSH)), "{reply:?}");
}

// --- notifications ------------------------------------------------------------------------------

#[tokio::test]
async fn xep0357_7_offline_message_is_announced_with_summary_and_publish_options_but_no_body() {
    let mut s = setup().await;
    enable(&mut s, Some(publish_options())).await;
    s.h.logout(A1).await;
    s.h.send(BOB, message(ALICE, SECRET_BODY)).await;

    let got = notifications(&mut s.app);
    assert_eq!(got.len(), 1, "{got:?}");
    let iq = &got[0];
    assert_eq!(iq.attr("from"), Some(ALICE));
    assert_eq!(iq.attr("to"), Some(APP));
    assert!(iq.attr("id").is_some_and(|id| !id.is_empty()));
    let pubsub = iq.get_child("pubsub", NS_PUBSUB).expect("pubsub");
    let publish = pubsub.get_child("publish", NS_PUBSUB).expect("publish");
    assert_eq!(publish.attr("node"), Some(NODE));
    let fields = summary_fields(iq);
    assert_eq!(field(&fields, "FORM_TYPE"), Some(FORM_SUMMARY));
    assert_eq!(field(&fields, "message-count"), Some("1"));
    assert_eq!(field(&fields, "last-message-sender"), Some(BOB));
    assert_eq!(field(&fields, "last-message-body"), None);
    let options = pubsub
        .get_child("publish-options", NS_PUBSUB)
        .and_then(|p| p.get_child("x", NS_DATA))
        .expect("publish-options form");
    assert_eq!(element_to_bytes(options).expect("bytes"), element_to_bytes(&publish_options()).expect("bytes"));

    let wire = String::from_utf8(element_to_bytes(iq).expect("bytes")).expect("utf-8");
    assert!(!wire.contains(SECRET_BODY), "the body leaked: {wire}");
    assert!(!wire.contains("launch"), "the body leaked: {wire}");

    // The message itself went to offline storage and comes with the next session.
    let mut again = s.h.login(A1).await;
    go_available(&s.h, A1).await;
    let got = recv_all(&mut again);
    assert!(
        got.iter()
            .any(|m| m.name() == "message" && m.get_child("body", NS_CLIENT).is_some_and(|b| b.text() == SECRET_BODY)),
        "{got:?}"
    );
}

#[tokio::test]
async fn xep0357_7_without_publish_options_there_is_no_publish_options_element() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    s.h.send(BOB, message(ALICE, "hi")).await;
    let got = notifications(&mut s.app);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].get_child("pubsub", NS_PUBSUB).expect("pubsub").get_child("publish-options", NS_PUBSUB).is_none());
}

#[tokio::test]
async fn xep0357_no_notification_when_an_awake_session_got_the_message() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    go_available(&s.h, A1).await;
    s.h.send(BOB, message(ALICE, "to the bare JID")).await;
    s.h.send(BOB, message(A1, "to the full JID")).await;
    assert!(notifications(&mut s.app).is_empty());
    let got = recv_all(&mut s.alice);
    assert_eq!(got.iter().filter(|m| m.name() == "message").count(), 2, "{got:?}");
}

#[tokio::test]
async fn xep0352_inactive_sessions_count_as_awake() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    go_available(&s.h, A1).await;
    s.h.server.sessions.update(&full(A1), &mut |info| info.inactive = true);
    s.h.send(BOB, message(ALICE, "hi")).await;
    assert!(notifications(&mut s.app).is_empty());
}

#[tokio::test]
async fn xep0198_detached_only_session_gets_a_notification() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    go_available(&s.h, A1).await;
    s.h.server.sessions.update(&full(A1), &mut |info| info.detached = true);
    s.h.send(BOB, message(ALICE, "are you there?")).await;
    let got = notifications(&mut s.app);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(message_count(&got[0]), 1);
    // The message itself waits in the detached session's queue.
    assert!(recv_all(&mut s.alice).iter().any(|m| m.name() == "message"));
}

#[tokio::test]
async fn xep0357_a_detached_session_with_an_awake_sibling_that_got_the_message_is_not_announced() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    let mut laptop = s.h.login(A2).await;
    go_available(&s.h, A1).await;
    go_available(&s.h, A2).await;
    s.h.server.sessions.update(&full(A1), &mut |info| info.detached = true);
    s.h.send(BOB, message(ALICE, "to both")).await;
    assert!(notifications(&mut s.app).is_empty());
    // To the detached resource alone: nobody awake received it.
    s.h.send(BOB, message(A1, "to the phone")).await;
    assert_eq!(notifications(&mut s.app).len(), 1);
    let _ = recv_all(&mut laptop);
}

#[tokio::test]
async fn xep0357_only_messages_worth_waking_for_are_announced() {
    let mut s = setup_with(Some(PushModule::with_min_interval(Duration::ZERO))).await;
    enable(&mut s, None).await;
    s.h.logout(A1).await;
    // A chat state without a body: not worth it.
    let typing = elem("message", NS_CLIENT)
        .with_attr("to", ALICE)
        .with_attr("type", "chat")
        .with_child(elem("composing", "http://jabber.org/protocol/chatstates"));
    s.h.send(BOB, typing).await;
    assert!(notifications(&mut s.app).is_empty());
    // An OMEMO message has no body but is.
    s.h.send(BOB, encrypted_message(ALICE)).await;
    assert_eq!(notifications(&mut s.app).len(), 1);
    // The account's own messages are not announced to it.
    let mut laptop = s.h.login(A2).await;
    s.h.send(A2, message(ALICE, "note to self")).await;
    assert!(notifications(&mut s.app).is_empty());
    let _ = recv_all(&mut laptop);
}

#[tokio::test]
async fn xep0357_6_disable_stops_notifications() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    let reply = ask(&s.h, A1, &mut s.alice, disable_iq("dis", APP, Some(NODE))).await;
    assert_eq!(reply.attr("type"), Some("result"));
    s.h.logout(A1).await;
    s.h.send(BOB, message(ALICE, "hi")).await;
    assert!(notifications(&mut s.app).is_empty());
}

#[tokio::test]
async fn xep0357_7_message_count_grows_until_the_user_is_back_and_bursts_are_coalesced() {
    // No rate limit: every message is announced with the running count.
    let mut s = setup_with(Some(PushModule::with_min_interval(Duration::ZERO))).await;
    enable(&mut s, None).await;
    s.h.logout(A1).await;
    for _ in 0..3 {
        s.h.send(BOB, message(ALICE, "hi")).await;
    }
    let counts: Vec<u64> = notifications(&mut s.app).iter().map(message_count).collect();
    assert_eq!(counts, vec![1, 2, 3]);
    // The user comes back: the count starts again.
    let mut alice = s.h.login(A1).await;
    go_available(&s.h, A1).await;
    s.h.logout(A1).await;
    let _ = recv_all(&mut alice);
    s.h.send(BOB, message(ALICE, "hi again")).await;
    let counts: Vec<u64> = notifications(&mut s.app).iter().map(message_count).collect();
    assert_eq!(counts, vec![1]);
}

#[tokio::test]
async fn xep0357_bursts_get_one_notification_per_interval_and_the_count_keeps_growing() {
    let mut s = setup_with(Some(PushModule::with_min_interval(Duration::from_millis(500)))).await;
    enable(&mut s, None).await;
    s.h.logout(A1).await;
    for _ in 0..3 {
        s.h.send(BOB, message(ALICE, "burst")).await;
    }
    let counts: Vec<u64> = notifications(&mut s.app).iter().map(message_count).collect();
    assert_eq!(counts, vec![1], "the first message is announced at once, the rest are coalesced");
    tokio::time::sleep(Duration::from_millis(550)).await;
    s.h.send(BOB, message(ALICE, "later")).await;
    let counts: Vec<u64> = notifications(&mut s.app).iter().map(message_count).collect();
    assert_eq!(counts, vec![4]);
}

#[tokio::test]
async fn xep0357_default_rate_limit_coalesces_a_burst() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    s.h.logout(A1).await;
    for _ in 0..5 {
        s.h.send(BOB, message(ALICE, "burst")).await;
    }
    assert_eq!(notifications(&mut s.app).len(), 1);
}

#[tokio::test]
async fn xep0357_every_registration_is_notified() {
    let mut s = setup().await;
    for node in ["n1", "n2"] {
        let reply = ask(&s.h, A1, &mut s.alice, enable_iq("e", Some(APP), Some(node), None)).await;
        assert_eq!(reply.attr("type"), Some("result"));
    }
    s.h.logout(A1).await;
    s.h.send(BOB, message(ALICE, "hi")).await;
    let mut nodes: Vec<String> = notifications(&mut s.app)
        .iter()
        .filter_map(|iq| {
            iq.get_child("pubsub", NS_PUBSUB)?.get_child("publish", NS_PUBSUB)?.attr("node").map(str::to_string)
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2"]);
}

// --- app server answers -------------------------------------------------------------------------

#[tokio::test]
async fn xep0357_7_1_error_from_the_app_server_disables_the_registration() {
    let mut s = setup_with(Some(PushModule::with_min_interval(Duration::ZERO))).await;
    enable(&mut s, None).await;
    go_available(&s.h, A1).await;
    s.h.server.sessions.update(&full(A1), &mut |info| info.detached = true);
    s.h.send(BOB, message(ALICE, "one")).await;
    let got = notifications(&mut s.app);
    assert_eq!(got.len(), 1);
    let _ = recv_all(&mut s.alice);
    answer(&s.h, &got[0], "error", Some(("cancel", "item-not-found"))).await;
    assert!(stored(&s.h).await.is_empty(), "the registration is disabled");
    // The answer is consumed, not passed on to the user's sessions.
    assert!(recv_all(&mut s.alice).iter().all(|st| st.name() != "iq"));
    s.h.send(BOB, message(ALICE, "two")).await;
    assert!(notifications(&mut s.app).is_empty());
}

#[tokio::test]
async fn xep0357_7_1_result_and_temporary_errors_keep_the_registration() {
    let mut s = setup_with(Some(PushModule::with_min_interval(Duration::ZERO))).await;
    enable(&mut s, None).await;
    s.h.send(BOB, message(ALICE, "one")).await;
    s.h.send(BOB, message(ALICE, "two")).await;
    let got = notifications(&mut s.app);
    assert_eq!(got.len(), 2);
    answer(&s.h, &got[0], "result", None).await;
    answer(&s.h, &got[1], "error", Some(("wait", "resource-constraint"))).await;
    assert_eq!(stored(&s.h).await.len(), 1);
    s.h.send(BOB, message(ALICE, "three")).await;
    assert_eq!(notifications(&mut s.app).len(), 1);
}

#[tokio::test]
async fn xep0357_7_1_errors_for_ids_the_server_did_not_send_change_nothing() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    let fake = elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("from", ALICE)
        .with_attr("to", APP)
        .with_attr("id", "push-999");
    answer(&s.h, &fake, "error", Some(("cancel", "item-not-found"))).await;
    assert_eq!(stored(&s.h).await.len(), 1);
}

#[tokio::test]
async fn xep0357_7_1_unreachable_app_server_disables_the_registration() {
    let mut s = setup().await;
    let reply = ask(&s.h, A1, &mut s.alice, enable_iq("e", Some("push.nowhere.example"), Some(NODE), None)).await;
    assert_eq!(reply.attr("type"), Some("result"));
    enable(&mut s, None).await;
    s.h.logout(A1).await;
    s.h.send(BOB, message(ALICE, "hi")).await;
    // The bounce (remote-server-not-found) disabled the unreachable one; the component got its own.
    let regs = stored(&s.h).await;
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(regs[0].0, APP);
    assert_eq!(notifications(&mut s.app).len(), 1);
}

#[tokio::test]
async fn account_deletion_forgets_registrations() {
    let mut s = setup().await;
    enable(&mut s, None).await;
    assert_eq!(stored(&s.h).await.len(), 1);
    s.h.server.store.delete_account(ALICE).await.expect("deleted");
    assert!(stored(&s.h).await.is_empty());
}
