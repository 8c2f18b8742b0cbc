//! XEP-0054 vcard-temp through a real server.

mod features_harness;

use features_harness::*;
use kabar_modules::vcard::{MAX_VCARD_BYTES, NS_VCARD, STORE};
use kabar_xml::{elem, Element, ElementExt};

fn vcard(fn_: &str) -> Element {
    elem("vCard", NS_VCARD)
        .with_child(elem("FN", NS_VCARD).with_text(fn_))
        .with_child(elem("NICKNAME", NS_VCARD).with_text("stpeter"))
}

fn fn_of(reply: &Element) -> Option<String> {
    reply.get_child("vCard", NS_VCARD)?.get_child("FN", NS_VCARD).map(|f| f.text())
}

#[tokio::test]
async fn xep0054_3_1_own_vcard_is_empty_until_published() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "v1", None, elem("vCard", NS_VCARD))).await;
    assert!(is_result(&reply), "{reply:?}");
    let card = reply.get_child("vCard", NS_VCARD).expect("empty vCard element");
    assert_eq!(card.children().count(), 0);
}

#[tokio::test]
async fn xep0054_3_2_published_vcard_is_returned_and_stored_in_the_vcard_store() {
    let server = server();
    let alice_jid = create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("set", "v2", None, vcard("Alice Liddell"))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.children().count(), 0);

    let reply = alice.iq(&server, iq("get", "v3", None, elem("vCard", NS_VCARD))).await;
    assert_eq!(fn_of(&reply).as_deref(), Some("Alice Liddell"));
    let card = reply.get_child("vCard", NS_VCARD).unwrap();
    assert_eq!(card.get_child("NICKNAME", NS_VCARD).map(|n| n.text()).as_deref(), Some("stpeter"));
    // Also when asked at the own bare JID.
    let reply = alice.iq(&server, iq("get", "v4", Some("alice@localhost"), elem("vCard", NS_VCARD))).await;
    assert_eq!(fn_of(&reply).as_deref(), Some("Alice Liddell"));

    let stored = server.store.kv_get(alice_jid.as_str(), STORE, "").await.unwrap().expect("stored");
    let parsed: Element = std::str::from_utf8(&stored).unwrap().parse().unwrap();
    assert_eq!(parsed.get_child("FN", NS_VCARD).map(|f| f.text()).as_deref(), Some("Alice Liddell"));

    // Publishing again replaces it.
    let reply = alice.iq(&server, iq("set", "v5", Some("alice@localhost"), vcard("Alice L."))).await;
    assert!(is_result(&reply), "{reply:?}");
    let reply = alice.iq(&server, iq("get", "v6", None, elem("vCard", NS_VCARD))).await;
    assert_eq!(fn_of(&reply).as_deref(), Some("Alice L."));
}

#[tokio::test]
async fn xep0054_3_3_another_users_vcard_is_readable_and_empty_when_unset() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let mut bob = Client::connect(&server, "bob@localhost/b");
    let reply = bob.iq(&server, iq("get", "v7", Some("alice@localhost"), elem("vCard", NS_VCARD))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.attr("from"), Some("alice@localhost"));
    assert_eq!(reply.get_child("vCard", NS_VCARD).expect("vCard").children().count(), 0);

    alice.iq(&server, iq("set", "v8", None, vcard("Alice"))).await;
    let reply = bob.iq(&server, iq("get", "v9", Some("alice@localhost"), elem("vCard", NS_VCARD))).await;
    assert_eq!(fn_of(&reply).as_deref(), Some("Alice"));
}

#[tokio::test]
async fn xep0054_3_2_only_the_account_itself_may_publish_its_vcard() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let mut bob = Client::connect(&server, "bob@localhost/b");
    let reply = bob.iq(&server, iq("set", "v10", Some("alice@localhost"), vcard("Mallory"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    let reply = alice.iq(&server, iq("get", "v11", None, elem("vCard", NS_VCARD))).await;
    assert_eq!(fn_of(&reply), None, "unchanged");
}

#[tokio::test]
async fn xep0054_oversized_vcard_is_not_acceptable_and_not_stored() {
    let server = server();
    let alice_jid = create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let big = "x".repeat(MAX_VCARD_BYTES + 1);
    let card = elem("vCard", NS_VCARD).with_child(
        elem("PHOTO", NS_VCARD)
            .with_child(elem("TYPE", NS_VCARD).with_text("image/png"))
            .with_child(elem("BINVAL", NS_VCARD).with_text(big)),
    );
    let reply = alice.iq(&server, iq("set", "v12", None, card)).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    assert!(server.store.kv_get(alice_jid.as_str(), STORE, "").await.unwrap().is_none());
}

#[tokio::test]
async fn xep0054_server_has_no_vcard() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "v13", Some(DOMAIN), elem("vCard", NS_VCARD))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
    let reply = alice.iq(&server, iq("set", "v14", Some(DOMAIN), vcard("Server"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-allowed"));
}

#[tokio::test]
async fn xep0054_vcard_temp_is_advertised() {
    let server = server();
    assert!(server.server_features().contains(&"vcard-temp"));
}
