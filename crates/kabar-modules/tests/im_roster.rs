//! RFC 6121 §2 roster management and XEP-0237 / RFC 6121 §2.6 roster versioning.

mod common;

use std::sync::Arc;

use common::*;
use kabar_core::{Config, Module};
use kabar_modules::{offline::OfflineModule, presence::PresenceModule, roster::RosterModule};
use kabar_storage::Subscription;
use kabar_xml::{elem, Element, ElementExt};

fn im_modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(RosterModule::new()), Arc::new(PresenceModule::new()), Arc::new(OfflineModule::new())]
}

const ALICE: &str = "alice@localhost/phone";
const ALICE2: &str = "alice@localhost/laptop";
const BOB: &str = "bob@localhost/pc";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn roster_set(id: &str, item: Element) -> Element {
    elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_child(elem("query", NS_ROSTER).with_child(item))
}

fn item(jid: &str) -> Element {
    elem("item", NS_ROSTER).with_attr("jid", jid)
}

fn group(name: &str) -> Element {
    elem("group", NS_ROSTER).with_text(name)
}

fn reply<'a>(stanzas: &'a [Element], id: &str) -> &'a Element {
    stanzas.iter().find(|s| s.name() == "iq" && s.attr("id") == Some(id)).expect("an answer to the request")
}

fn error_condition(iq: &Element) -> Option<String> {
    assert_eq!(iq.attr("type"), Some("error"), "{iq:?}");
    let error = iq.get_child("error", NS_CLIENT)?;
    error.children().find(|c| c.ns() == STANZAS && c.name() != "text").map(|c| c.name().to_string())
}

fn items(result: &Element) -> Vec<Element> {
    result.get_child("query", NS_ROSTER).map(|q| q.children().cloned().collect()).unwrap_or_default()
}

#[tokio::test]
async fn rfc6121_2_2_roster_get_returns_items_with_version() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, roster_set("s1", item("bob@localhost").with_attr("name", "Bob").with_child(group("Friends")))).await;
    recv_all(&mut a);

    let result = h.roster_get(ALICE, &mut a).await;
    assert_eq!(result.attr("type"), Some("result"));
    assert_eq!(result.attr("to"), Some(ALICE));
    let query = result.get_child("query", NS_ROSTER).expect("query");
    assert!(query.attr("ver").is_some_and(|v| !v.is_empty()));
    let items = items(&result);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("jid"), Some("bob@localhost"));
    assert_eq!(items[0].attr("name"), Some("Bob"));
    assert_eq!(items[0].attr("subscription"), Some("none"));
    assert_eq!(items[0].get_child("group", NS_ROSTER).map(|g| g.text()), Some("Friends".to_string()));
    // §2.2: the requesting resource is now interested.
    assert!(h.server.sessions.get(&full(ALICE)).is_some_and(|s| s.interested));
}

#[tokio::test]
async fn rfc6121_2_3_2_roster_set_is_pushed_to_interested_resources_only() {
    let h = Harness::new(im_modules()).await;
    let mut phone = h.login(ALICE).await;
    let mut laptop = h.login(ALICE2).await;
    let mut other = h.login("alice@localhost/watch").await; // never asks for the roster
    h.roster_get(ALICE, &mut phone).await;
    h.roster_get(ALICE2, &mut laptop).await;

    h.send(ALICE, roster_set("add", item("nurse@localhost").with_attr("name", "Nurse").with_child(group("Servants"))))
        .await;
    let got_phone = recv_all(&mut phone);
    assert_eq!(reply(&got_phone, "add").attr("type"), Some("result"));
    // The push goes to every interested resource, including the one that made the change.
    for got in [&got_phone, &recv_all(&mut laptop)] {
        let p = pushes(got);
        assert_eq!(p.len(), 1, "{got:?}");
        assert_eq!(p[0].attr("jid"), Some("nurse@localhost"));
        assert_eq!(p[0].attr("subscription"), Some("none"));
        let push_iq = got.iter().find(|s| s.attr("type") == Some("set")).expect("push iq");
        assert!(push_iq.attr("from").is_none(), "a push comes from the account itself (§2.1.6)");
        assert!(push_iq.get_child("query", NS_ROSTER).and_then(|q| q.attr("ver")).is_some());
    }
    assert!(recv_all(&mut other).is_empty(), "a resource that did not request the roster gets no push");
}

#[tokio::test]
async fn rfc6121_2_4_update_keeps_subscription_and_ignores_client_subscription_attribute() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    let _b = h.login(BOB).await;
    h.roster_get(ALICE, &mut a).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    recv_all(&mut a);

    h.send(
        ALICE,
        roster_set(
            "upd",
            item("bob@localhost")
                .with_attr("name", "Bobby")
                .with_attr("subscription", "both")
                .with_child(group("Work")),
        ),
    )
    .await;
    let got = recv_all(&mut a);
    assert_eq!(reply(&got, "upd").attr("type"), Some("result"));
    let p = pushes(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].attr("name"), Some("Bobby"));
    assert_eq!(p[0].attr("subscription"), Some("none"), "the client cannot set the subscription (§2.1.2.5)");
    assert_eq!(p[0].attr("ask"), Some("subscribe"), "pending out survives the update");
    // Removing all groups: send the item without any.
    h.send(ALICE, roster_set("upd2", item("bob@localhost"))).await;
    let got = recv_all(&mut a);
    let p = pushes(&got);
    assert!(p[0].get_child("group", NS_ROSTER).is_none());
    assert_eq!(p[0].attr("name"), None);
}

#[tokio::test]
async fn rfc6121_2_3_3_invalid_roster_sets_are_refused() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    let two_items = elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "two")
        .with_child(elem("query", NS_ROSTER).with_child(item("a@localhost")).with_child(item("b@localhost")));
    let cases: Vec<(Element, &str)> = vec![
        (two_items, "bad-request"),
        (roster_set("none", elem("item", NS_ROSTER)), "bad-request"),
        (roster_set("dup", item("b@localhost").with_child(group("X")).with_child(group("X"))), "bad-request"),
        (roster_set("empty", item("b@localhost").with_child(group(""))), "not-acceptable"),
        (roster_set("longgroup", item("b@localhost").with_child(group(&"g".repeat(2000)))), "not-acceptable"),
        (roster_set("longname", item("b@localhost").with_attr("name", "n".repeat(2000))), "not-acceptable"),
        (roster_set("self", item("alice@localhost")), "not-allowed"),
        (roster_set("malformed", item("@@bad")), "jid-malformed"),
    ];
    for (stanza, condition) in cases {
        let id = stanza.attr("id").unwrap_or_default().to_string();
        h.send(ALICE, stanza).await;
        let got = recv_all(&mut a);
        assert_eq!(error_condition(reply(&got, &id)).as_deref(), Some(condition), "case {id}");
    }
    let (roster, _) = h.server.store.roster("alice@localhost").await.expect("store");
    assert!(roster.is_empty());
}

#[tokio::test]
async fn rfc6121_2_3_3_only_the_account_itself_may_touch_its_roster() {
    let h = Harness::new(im_modules()).await;
    let mut b = h.login(BOB).await;
    h.create_account("alice").await;
    let get = parse(
        "<iq xmlns='jabber:client' type='get' id='peek' to='alice@localhost'><query xmlns='jabber:iq:roster'/></iq>",
    );
    h.send(BOB, get).await;
    assert_eq!(error_condition(reply(&recv_all(&mut b), "peek")).as_deref(), Some("forbidden"));
    let mut set = roster_set("meddle", item("eve@localhost"));
    set.set_attr_str("to", "alice@localhost");
    h.send(BOB, set).await;
    assert_eq!(error_condition(reply(&recv_all(&mut b), "meddle")).as_deref(), Some("forbidden"));
    // Addressing one's own bare JID is fine (RFC 6120 §10.3.3).
    let own = parse(
        "<iq xmlns='jabber:client' type='get' id='own' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>",
    );
    h.send(BOB, own).await;
    assert_eq!(reply(&recv_all(&mut b), "own").attr("type"), Some("result"));
}

#[tokio::test]
async fn rfc6121_2_5_3_removing_an_unknown_item_is_item_not_found() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, roster_set("rm", item("ghost@localhost").with_attr("subscription", "remove"))).await;
    assert_eq!(error_condition(reply(&recv_all(&mut a), "rm")).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn rfc6121_2_5_2_removing_a_contact_cancels_both_subscriptions() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    let mut b = h.login(BOB).await;
    h.roster_get(ALICE, &mut a).await;
    h.roster_get(BOB, &mut b).await;
    h.send(ALICE, presence(None, None)).await;
    h.send(BOB, presence(None, None)).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribe"))).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribed"))).await;
    recv_all(&mut a);
    recv_all(&mut b);

    h.send(ALICE, roster_set("rm", item("bob@localhost").with_attr("subscription", "remove"))).await;
    let got_a = recv_all(&mut a);
    assert_eq!(reply(&got_a, "rm").attr("type"), Some("result"));
    let p = pushes(&got_a);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].attr("subscription"), Some("remove"));
    assert!(h.server.store.roster_item("alice@localhost", "bob@localhost").await.expect("store").is_none());

    // Bob is told both ways, loses Alice's presence, and his item drops to none.
    let got_b = recv_all(&mut b);
    assert!(got_b.iter().any(|s| s.attr("type") == Some("unsubscribe") && s.attr("from") == Some("alice@localhost")));
    assert!(got_b.iter().any(|s| s.attr("type") == Some("unsubscribed") && s.attr("from") == Some("alice@localhost")));
    assert!(got_b.iter().any(|s| is_presence(s, Some("unavailable"), ALICE)), "{got_b:?}");
    let bob_item = h.server.store.roster_item("bob@localhost", "alice@localhost").await.expect("store");
    assert_eq!(bob_item.map(|i| i.subscription), Some(Subscription::None));
}

#[tokio::test]
async fn xep0237_roster_get_with_current_version_returns_empty_result() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, roster_set("s1", item("bob@localhost"))).await;
    let first = h.roster_get(ALICE, &mut a).await;
    let ver = first.get_child("query", NS_ROSTER).and_then(|q| q.attr("ver")).expect("ver").to_string();

    let versioned = |id: &str, ver: &str| {
        elem("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_child(elem("query", NS_ROSTER).with_attr("ver", ver))
    };
    // §2.6.3: up to date → empty result.
    h.send(ALICE, versioned("same", &ver)).await;
    let got = recv_all(&mut a);
    let r = reply(&got, "same");
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.children().next().is_none());

    // A change moves the version; the push carries the new one.
    h.send(ALICE, roster_set("s2", item("carol@localhost"))).await;
    let got = recv_all(&mut a);
    let push_ver = got
        .iter()
        .find(|s| s.attr("type") == Some("set"))
        .and_then(|s| s.get_child("query", NS_ROSTER))
        .and_then(|q| q.attr("ver"))
        .expect("push with ver")
        .to_string();
    assert_ne!(push_ver, ver);

    // Stale or empty version → the full roster with the current version.
    for (id, v) in [("stale", ver.as_str()), ("bootstrap", "")] {
        h.send(ALICE, versioned(id, v)).await;
        let got = recv_all(&mut a);
        let r = reply(&got, id);
        assert_eq!(r.get_child("query", NS_ROSTER).and_then(|q| q.attr("ver")), Some(push_ver.as_str()));
        assert_eq!(items(r).len(), 2);
    }
}

#[tokio::test]
async fn rfc6121_2_6_1_and_3_4_1_stream_features_advertise_versioning_and_pre_approval() {
    let h = Harness::new(im_modules()).await;
    let features = h.server.stream_features();
    assert!(features.iter().any(|f| f.is("ver", "urn:xmpp:features:rosterver")));
    assert!(features.iter().any(|f| f.is("sub", "urn:xmpp:features:pre-approval")));
}

#[tokio::test]
async fn default_modules_include_roster_presence_and_offline() {
    let h = Harness::new(kabar_modules::default_modules(&Config::default())).await;
    let names: Vec<&str> = h.server.modules().iter().map(|m| m.name()).collect();
    for name in ["roster", "presence", "offline"] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert!(h.server.server_features().contains(&"msgoffline"));
}
