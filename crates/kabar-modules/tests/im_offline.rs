//! XEP-0160 offline messages (RFC 6121 §8.5.2.1.1), with XEP-0203 delay stamps.

mod common;

use std::sync::Arc;

use common::*;
use kabar_core::{Config, Module};
use kabar_modules::{offline::OfflineModule, presence::PresenceModule, roster::RosterModule};
use kabar_xml::{elem, Element, ElementExt};

fn im_modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(RosterModule::new()), Arc::new(PresenceModule::new()), Arc::new(OfflineModule::new())]
}

const ALICE: &str = "alice@localhost/phone";
const BOB: &str = "bob@localhost/pc";

fn body_of(m: &Element) -> Option<String> {
    m.get_child("body", NS_CLIENT).map(|b| b.text())
}

async fn held(h: &Harness, user: &str) -> usize {
    h.server.store.offline_messages(user).await.expect("store").len()
}

#[tokio::test]
async fn xep0160_message_for_offline_user_is_stored_and_delivered_oldest_first_with_delay() {
    let h = Harness::new(im_modules()).await;
    let mut b = h.login(BOB).await;
    h.create_account("alice").await;
    h.send(BOB, message("alice@localhost", "first")).await;
    h.send(BOB, message("alice@localhost/phone", "second")).await; // no such resource → bare
    assert!(recv_all(&mut b).is_empty(), "stored, so no error to the sender");
    assert_eq!(held(&h, "alice@localhost").await, 2);

    let mut a = h.login(ALICE).await;
    assert!(recv_all(&mut a).is_empty(), "held until the user is available");
    h.send(ALICE, presence(None, None)).await;
    let messages: Vec<Element> = recv_all(&mut a).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(messages.iter().map(body_of).collect::<Vec<_>>(), vec![Some("first".into()), Some("second".into())]);
    for m in &messages {
        assert_eq!(m.ns(), NS_CLIENT);
        assert_eq!(m.attr("from"), Some(BOB));
        let delay = m.get_child("delay", "urn:xmpp:delay").expect("XEP-0203 delay");
        assert_eq!(delay.attr("from"), Some("localhost"));
        assert!(delay.attr("stamp").is_some_and(|s| s.ends_with('Z') && s.len() == 20), "{delay:?}");
    }
    // Handed over, so forgotten.
    assert_eq!(held(&h, "alice@localhost").await, 0);
    h.logout(ALICE).await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, presence(None, None)).await;
    assert!(recv_all(&mut a).iter().all(|s| s.name() != "message"));
}

#[tokio::test]
async fn xep0160_full_store_bounces_with_service_unavailable() {
    let mut config = Config::default();
    config.limits.max_offline_messages = 2;
    let h = Harness::with_config(config, im_modules()).await;
    let mut b = h.login(BOB).await;
    h.create_account("alice").await;
    for text in ["1", "2", "3"] {
        h.send(BOB, message("alice@localhost", text)).await;
    }
    let got = recv_all(&mut b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].attr("type"), Some("error"));
    assert_eq!(got[0].attr("from"), Some("alice@localhost"));
    assert_eq!(body_of(&got[0]).as_deref(), Some("3"));
    let error = got[0].get_child("error", NS_CLIENT).expect("error");
    assert!(error.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    assert_eq!(held(&h, "alice@localhost").await, 2);
}

#[tokio::test]
async fn xep0160_negative_priority_resource_does_not_receive_offline_messages() {
    let h = Harness::new(im_modules()).await;
    let _b = h.login(BOB).await;
    h.create_account("alice").await;
    h.send(BOB, message("alice@localhost", "later")).await;
    let mut a = h.login(ALICE).await;
    let negative = presence(None, None).with_child(elem("priority", NS_CLIENT).with_text("-1"));
    h.send(ALICE, negative).await;
    assert!(recv_all(&mut a).iter().all(|s| s.name() != "message"));
    assert_eq!(held(&h, "alice@localhost").await, 1);
}

#[tokio::test]
async fn xep0160_only_normal_and_chat_messages_with_content_are_stored() {
    let h = Harness::new(im_modules()).await;
    let mut b = h.login(BOB).await;
    h.create_account("alice").await;
    // A bare chat state notification: dropped quietly (nothing to show later).
    let composing = elem("message", NS_CLIENT)
        .with_attr("to", "alice@localhost")
        .with_attr("type", "chat")
        .with_child(elem("composing", "http://jabber.org/protocol/chatstates"));
    h.send(BOB, composing).await;
    // Headlines are never stored (RFC 6121 §8.5.2.1.1: the core drops them).
    let mut headline = message("alice@localhost", "news");
    headline.set_attr_str("type", "headline");
    h.send(BOB, headline).await;
    // A normal message (no type) is stored.
    let normal = elem("message", NS_CLIENT)
        .with_attr("to", "alice@localhost")
        .with_child(elem("body", NS_CLIENT).with_text("hi"));
    h.send(BOB, normal).await;
    assert!(recv_all(&mut b).is_empty());
    assert_eq!(held(&h, "alice@localhost").await, 1);
}

/// docs/CLUSTER.md "Failure behaviour": while cut off from the other nodes, a node stores messages for
/// users online over there; when the cluster heals, each node hands what is held to its own available
/// sessions as at initial presence (XEP-0160 §3), once, and not to a session without initial presence.
#[tokio::test]
async fn xep0160_cluster_rejoined_hands_held_messages_to_available_sessions_once() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, presence(None, None)).await;
    let mut b = h.login(BOB).await;
    recv_all(&mut a);
    // As another node would have stored it while it could not see alice's session.
    let mut held_msg = message("alice@localhost", "while apart");
    held_msg.set_attr_str("from", BOB);
    held_msg.append_child(kabar_core::stanza::delay("localhost", kabar_core::time::unix_now()));
    let bytes = kabar_xml::element_to_bytes(&held_msg).expect("serialise");
    h.server.store.push_offline("alice@localhost", &bytes, 100).await.expect("store");
    h.server.store.push_offline("bob@localhost", &bytes, 100).await.expect("store");

    h.server.notify(kabar_core::Event::ClusterRejoined).await;
    h.server.notify(kabar_core::Event::ClusterRejoined).await;
    let got: Vec<Element> = recv_all(&mut a).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(got.iter().map(body_of).collect::<Vec<_>>(), vec![Some("while apart".into())]);
    assert!(got[0].has_child("delay", "urn:xmpp:delay"), "{:?}", got[0]);
    assert_eq!(held(&h, "alice@localhost").await, 0);
    // Bob never sent initial presence (RFC 6121 §8.5.2.1.1): his stays held.
    assert!(recv_all(&mut b).iter().all(|s| s.name() != "message"));
    assert_eq!(held(&h, "bob@localhost").await, 1);
}
