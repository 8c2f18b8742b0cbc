//! XEP-0012 last activity through a real server.

mod features_harness;

use features_harness::*;
use kabar_core::time::unix_now;
use kabar_modules::last::{decode_record, encode_record, NS_LAST, STORE};
use kabar_storage::{RosterItem, Subscription};
use kabar_xml::{elem, Element, ElementExt};

fn seconds(reply: &Element) -> u64 {
    reply.get_child("query", NS_LAST).expect("query").attr("seconds").expect("seconds").parse().expect("number")
}

async fn subscribe_from(server: &kabar_core::Server, user: &str, contact: &str, sub: Subscription) {
    let item = RosterItem { jid: contact.into(), subscription: sub, ..RosterItem::default() };
    server.store.put_roster_item(user, &item).await.unwrap();
}

#[tokio::test]
async fn xep0012_5_server_query_reports_uptime() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "l1", Some(DOMAIN), elem("query", NS_LAST))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert!(seconds(&reply) <= server.started_at.elapsed().as_secs());
    assert_eq!(reply.get_child("query", NS_LAST).unwrap().text(), "", "no character data (§5)");
}

#[tokio::test]
async fn xep0012_3_account_with_an_available_resource_reports_zero() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "l2", None, elem("query", NS_LAST))).await;
    assert_eq!(seconds(&reply), 0);
    let reply = alice.iq(&server, iq("get", "l3", Some("alice@localhost"), elem("query", NS_LAST))).await;
    assert_eq!(seconds(&reply), 0);
}

#[tokio::test]
async fn xep0012_3_offline_account_reports_seconds_since_logout_and_status() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    subscribe_from(&server, "alice@localhost", "bob@localhost", Subscription::From).await;
    let mut bob = Client::connect(&server, "bob@localhost/b");

    // Stored record, as written at logout 903 seconds ago.
    let record = encode_record(unix_now() - 903, Some("Heading Home"));
    server.store.kv_put("alice@localhost", STORE, "", &record).await.unwrap();
    let reply = bob.iq(&server, iq("get", "l4", Some("alice@localhost"), elem("query", NS_LAST))).await;
    assert!(is_result(&reply), "{reply:?}");
    let s = seconds(&reply);
    assert!((903..=905).contains(&s), "{s}");
    assert_eq!(reply.get_child("query", NS_LAST).unwrap().text(), "Heading Home");
}

#[tokio::test]
async fn xep0012_3_logout_with_unavailable_status_is_recorded() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    subscribe_from(&server, "alice@localhost", "bob@localhost", Subscription::Both).await;
    let alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::connect(&server, "bob@localhost/b");

    let unavailable = elem("presence", CLIENT)
        .with_attr("type", "unavailable")
        .with_child(elem("status", CLIENT).with_text("Heading Home"));
    alice.send(&server, unavailable).await;
    server.sessions.update(&alice.jid, &mut |s| s.available = false);
    alice.close(&server).await;

    let stored = server.store.kv_get("alice@localhost", STORE, "").await.unwrap().expect("recorded");
    let (when, status) = decode_record(&stored).expect("record");
    assert!(unix_now() - when <= 2);
    assert_eq!(status.as_deref(), Some("Heading Home"));

    let reply = bob.iq(&server, iq("get", "l5", Some("alice@localhost"), elem("query", NS_LAST))).await;
    assert!(seconds(&reply) <= 2);
    assert_eq!(reply.get_child("query", NS_LAST).unwrap().text(), "Heading Home");
}

#[tokio::test]
async fn xep0012_3_closing_one_of_several_available_sessions_records_nothing() {
    let server = server();
    create_account(&server, "alice").await;
    let a = Client::online(&server, "alice@localhost/a");
    let _b = Client::online(&server, "alice@localhost/b");
    a.close(&server).await;
    assert!(server.store.kv_get("alice@localhost", STORE, "").await.unwrap().is_none());
}

#[tokio::test]
async fn xep0012_3_requester_without_presence_subscription_is_forbidden() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    create_account(&server, "carol").await;
    // Alice is subscribed to bob's presence, not the other way round.
    subscribe_from(&server, "alice@localhost", "bob@localhost", Subscription::To).await;
    let _alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::connect(&server, "bob@localhost/b");
    let mut carol = Client::connect(&server, "carol@localhost/c");
    let reply = bob.iq(&server, iq("get", "l6", Some("alice@localhost"), elem("query", NS_LAST))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    let reply = carol.iq(&server, iq("get", "l7", Some("alice@localhost"), elem("query", NS_LAST))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn xep0012_3_account_never_seen_offline_is_item_not_found() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "l8", None, elem("query", NS_LAST))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn xep0012_6_last_activity_is_advertised_on_server_and_accounts() {
    let server = server();
    assert!(server.server_features().contains(&NS_LAST));
    assert!(server.account_features().contains(&NS_LAST));
}
