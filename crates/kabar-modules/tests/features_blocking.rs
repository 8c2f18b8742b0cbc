//! XEP-0191 blocking command through a real server: the IQ protocol, pushes, presence on
//! (un)block, and the filters in both directions.

mod features_harness;

use features_harness::*;
use kabar_modules::blocking::{blocked_error, NS_BLOCKING, NS_BLOCKING_ERRORS, STORE};
use kabar_storage::{RosterItem, Subscription};
use kabar_xml::{elem, Element, ElementExt};

fn items(name: &str, jids: &[&str]) -> Element {
    let mut el = elem(name, NS_BLOCKING);
    for j in jids {
        el.append_child(elem("item", NS_BLOCKING).with_attr("jid", *j));
    }
    el
}

fn listed(reply: &Element) -> Vec<String> {
    reply
        .get_child("blocklist", NS_BLOCKING)
        .expect("blocklist")
        .children()
        .filter_map(|i| i.attr("jid"))
        .map(str::to_string)
        .collect()
}

async fn block(c: &mut Client, server: &kabar_core::Server, id: &str, jids: &[&str]) -> Element {
    c.iq(server, iq("set", id, None, items("block", jids))).await
}

/// Pushes (IQ sets with a blocking payload) among the stanzas.
fn pushes(stanzas: &[Element]) -> Vec<Element> {
    stanzas
        .iter()
        .filter(|s| s.name() == "iq" && s.attr("type") == Some("set"))
        .filter(|s| s.children().any(|c| c.ns() == NS_BLOCKING))
        .cloned()
        .collect()
}

async fn setup() -> (std::sync::Arc<kabar_core::Server>, std::sync::Arc<Probe>) {
    let (server, probe) = server_with(config());
    for u in ["alice", "bob", "carol"] {
        create_account(&server, u).await;
    }
    (server, probe)
}

#[tokio::test]
async fn xep0191_3_1_blocking_is_advertised() {
    let server = server();
    assert!(server.server_features().contains(&NS_BLOCKING));
}

#[tokio::test]
async fn xep0191_3_2_blocklist_is_empty_then_lists_blocked_jids_and_is_stored() {
    let (server, _) = setup().await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "b1", None, elem("blocklist", NS_BLOCKING))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert!(listed(&reply).is_empty());

    let reply = block(&mut alice, &server, "b2", &["bob@localhost", "spam.example", "Carol@LocalHost/Phone"]).await;
    assert!(is_result(&reply), "{reply:?}");
    let reply = alice.iq(&server, iq("get", "b3", None, elem("blocklist", NS_BLOCKING))).await;
    let mut got = listed(&reply);
    got.sort();
    // JIDs are normalised (RFC 7622): the localpart and domain are case-folded, the resource kept.
    assert_eq!(got, vec!["bob@localhost", "carol@localhost/Phone", "spam.example"]);

    let keys: Vec<String> =
        server.store.kv_list("alice@localhost", STORE).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["bob@localhost", "carol@localhost/Phone", "spam.example"]);
}

#[tokio::test]
async fn xep0191_3_3_block_without_items_is_bad_request() {
    let (server, _) = setup().await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = block(&mut alice, &server, "b4", &[]).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn xep0191_3_3_block_with_invalid_jid_is_jid_malformed_and_blocks_nothing() {
    let (server, _) = setup().await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = block(&mut alice, &server, "b5", &["bob@localhost", "@@bad@@"]).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("jid-malformed"));
    let reply = alice.iq(&server, iq("get", "b6", None, elem("blocklist", NS_BLOCKING))).await;
    assert!(listed(&reply).is_empty());
}

#[tokio::test]
async fn xep0191_3_2_only_the_account_itself_may_use_its_blocklist() {
    let (server, _) = setup().await;
    let mut bob = Client::connect(&server, "bob@localhost/b");
    let reply = bob.iq(&server, iq("get", "b7", Some("alice@localhost"), elem("blocklist", NS_BLOCKING))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    let reply = bob.iq(&server, iq("set", "b8", Some("alice@localhost"), items("block", &["carol@localhost"]))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn xep0191_3_3_block_is_pushed_only_to_resources_that_requested_the_blocklist() {
    let (server, _) = setup().await;
    let mut a = Client::online(&server, "alice@localhost/a");
    let mut b = Client::online(&server, "alice@localhost/b");
    let mut c = Client::online(&server, "alice@localhost/c");
    a.iq(&server, iq("get", "g1", None, elem("blocklist", NS_BLOCKING))).await;
    b.iq(&server, iq("get", "g2", None, elem("blocklist", NS_BLOCKING))).await;
    c.drain();

    let reply = block(&mut a, &server, "b9", &["bob@localhost"]).await;
    assert!(is_result(&reply));
    // `a` got its result (checked by `block`); its push was drained with it, so check b and c.
    let b_pushes = pushes(&b.stanzas());
    assert_eq!(b_pushes.len(), 1, "{b_pushes:?}");
    let push = &b_pushes[0];
    assert_eq!(push.attr("to"), Some("alice@localhost/b"));
    let payload = push.get_child("block", NS_BLOCKING).expect("block push");
    assert_eq!(payload.children().filter_map(|i| i.attr("jid")).collect::<Vec<_>>(), vec!["bob@localhost"]);
    assert!(pushes(&c.stanzas()).is_empty(), "c never asked for the blocklist");

    // A closed session stops being interested; a new session with the same resource too.
    b.close(&server).await;
    let mut b2 = Client::online(&server, "alice@localhost/b");
    block(&mut a, &server, "b10", &["carol@localhost"]).await;
    assert!(pushes(&b2.stanzas()).is_empty());
}

#[tokio::test]
async fn xep0191_3_3_push_to_requesting_resource_too() {
    let (server, _) = setup().await;
    let mut a = Client::online(&server, "alice@localhost/a");
    a.iq(&server, iq("get", "g1", None, elem("blocklist", NS_BLOCKING))).await;
    a.send(&server, iq("set", "b11", None, items("block", &["bob@localhost"]))).await;
    let stanzas = a.stanzas();
    assert_eq!(pushes(&stanzas).len(), 1, "{stanzas:?}");
    assert!(stanzas.iter().any(|s| s.attr("id") == Some("b11") && is_result(s)));
}

#[tokio::test]
async fn xep0191_3_3_inbound_message_from_blocked_jid_bounces_service_unavailable() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::online(&server, "bob@localhost/b");
    block(&mut alice, &server, "b12", &["bob@localhost"]).await;
    alice.drain();

    bob.send(&server, message("alice@localhost", "hello?")).await;
    let bounced = bob.stanzas();
    let err = bounced.iter().find(|s| s.name() == "message").expect("error bounced to bob");
    assert_eq!(error_condition(err).as_deref(), Some("service-unavailable"));
    assert!(alice.stanzas().iter().all(|s| s.name() != "message"), "alice received nothing");

    // To a full JID as well.
    bob.send(&server, message("alice@localhost/a", "hello?")).await;
    let err = bob.stanzas().into_iter().find(|s| s.name() == "message").expect("error");
    assert_eq!(error_condition(&err).as_deref(), Some("service-unavailable"));
    assert!(alice.stanzas().is_empty());
}

#[tokio::test]
async fn xep0191_3_3_inbound_presence_from_blocked_jid_is_dropped_without_error() {
    let (server, probe) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::online(&server, "bob@localhost/b");
    block(&mut alice, &server, "b13", &["bob@localhost"]).await;
    alice.drain();

    for typ in [None, Some("subscribe"), Some("probe")] {
        let mut p = elem("presence", CLIENT).with_attr("to", "alice@localhost");
        if let Some(t) = typ {
            p.set_attr_str("type", t);
        }
        bob.send(&server, p).await;
    }
    // Also presence the server routes on bob's behalf.
    server
        .route(elem("presence", CLIENT).with_attr("from", "bob@localhost/b").with_attr("to", "alice@localhost/a"))
        .await;
    assert!(probe.presences_to("alice@localhost").is_empty());
    assert!(alice.stanzas().is_empty());
    assert!(bob.stanzas().is_empty(), "no error for presence");
}

#[tokio::test]
async fn xep0191_3_3_inbound_iq_from_blocked_jid_get_set_bounce_result_error_dropped() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::online(&server, "bob@localhost/b");
    block(&mut alice, &server, "b14", &["bob@localhost"]).await;
    alice.drain();

    // To the bare JID (answered by the server on alice's behalf).
    let reply = bob.iq(&server, iq("get", "q1", Some("alice@localhost"), elem("vCard", "vcard-temp"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
    // To the full JID (would be delivered to alice's session).
    let reply = bob.iq(&server, iq("set", "q2", Some("alice@localhost/a"), elem("query", "urn:example"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
    assert!(alice.stanzas().is_empty());

    let result =
        elem("iq", CLIENT).with_attr("type", "result").with_attr("id", "q3").with_attr("to", "alice@localhost/a");
    bob.send(&server, result).await;
    let error = elem("iq", CLIENT)
        .with_attr("type", "error")
        .with_attr("id", "q4")
        .with_attr("to", "alice@localhost/a")
        .with_child(kabar_core::StanzaError::bad_request().to_element());
    bob.send(&server, error).await;
    assert!(alice.stanzas().is_empty());
    assert!(bob.stanzas().is_empty(), "results and errors are dropped silently");
}

#[tokio::test]
async fn xep0191_3_3_outbound_stanza_to_blocked_jid_is_not_acceptable_with_blocked_condition() {
    let (server, probe) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut bob = Client::online(&server, "bob@localhost/b");
    block(&mut alice, &server, "b15", &["bob@localhost"]).await;
    alice.drain();
    bob.drain();

    alice.send(&server, message("bob@localhost/b", "psst")).await;
    let err = alice.stanzas().into_iter().find(|s| s.name() == "message").expect("error to alice");
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
    assert_eq!(error_type(&err).as_deref(), Some("cancel"));
    assert!(err.get_child("error", CLIENT).unwrap().has_child("blocked", NS_BLOCKING_ERRORS));
    assert!(bob.stanzas().is_empty());

    let reply = alice.iq(&server, iq("get", "o1", Some("bob@localhost"), elem("vCard", "vcard-temp"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));

    alice.send(&server, elem("presence", CLIENT).with_attr("to", "bob@localhost")).await;
    let err = alice.stanzas().into_iter().find(|s| s.name() == "presence").expect("presence error");
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
    assert!(probe.presences_to("bob@localhost").is_empty());

    // Bob cannot forge such an error to get through.
    let forged = elem("message", CLIENT)
        .with_attr("type", "error")
        .with_attr("id", "m1")
        .with_attr("to", "alice@localhost/a")
        .with_child(elem("body", CLIENT).with_text("gotcha"))
        .with_child(blocked_error().to_element());
    bob.send(&server, forged).await;
    assert!(alice.stanzas().is_empty());
}

#[tokio::test]
async fn xep0191_3_3_presence_the_server_sends_for_the_blocker_does_not_reach_the_blocked() {
    let (server, probe) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    block(&mut alice, &server, "b16", &["bob@localhost"]).await;
    // As the presence module would broadcast or answer a probe:
    server
        .route(elem("presence", CLIENT).with_attr("from", "alice@localhost/a").with_attr("to", "bob@localhost"))
        .await;
    assert!(probe.presences_to("bob@localhost").is_empty());
    // Unavailable presence still goes (the blocked contact must see the user offline).
    server
        .route(
            elem("presence", CLIENT)
                .with_attr("from", "alice@localhost/a")
                .with_attr("to", "bob@localhost")
                .with_attr("type", "unavailable"),
        )
        .await;
    assert_eq!(probe.presences_to("bob@localhost").len(), 1);
    // Carol is not blocked.
    server
        .route(elem("presence", CLIENT).with_attr("from", "alice@localhost/a").with_attr("to", "carol@localhost"))
        .await;
    assert_eq!(probe.presences_to("carol@localhost").len(), 1);
}

#[tokio::test]
async fn xep0191_3_3_blocking_sends_unavailable_presence_to_contacts_allowed_to_see_presence() {
    let (server, probe) = setup().await;
    for (contact, sub) in [("bob@localhost", Subscription::From), ("carol@localhost", Subscription::To)] {
        let item = RosterItem { jid: contact.into(), subscription: sub, ..RosterItem::default() };
        server.store.put_roster_item("alice@localhost", &item).await.unwrap();
    }
    let mut a1 = Client::online(&server, "alice@localhost/a1");
    let _a2 = Client::online(&server, "alice@localhost/a2");
    let _offline = Client::connect(&server, "alice@localhost/invisible");
    block(&mut a1, &server, "b17", &["bob@localhost", "carol@localhost"]).await;

    let to_bob = probe.presences_to("bob@localhost");
    let mut from: Vec<&str> = to_bob.iter().filter_map(|p| p.attr("from")).collect();
    from.sort();
    assert_eq!(from, vec!["alice@localhost/a1", "alice@localhost/a2"], "one per available resource");
    assert!(to_bob.iter().all(|p| p.attr("type") == Some("unavailable")));
    assert!(probe.presences_to("carol@localhost").is_empty(), "carol has no subscription to alice");

    // Blocking an already blocked JID sends nothing more.
    block(&mut a1, &server, "b18", &["bob@localhost"]).await;
    assert_eq!(probe.presences_to("bob@localhost").len(), 2);
}

#[tokio::test]
async fn xep0191_3_3_blocking_sends_unavailable_to_directed_presence_targets() {
    let (server, probe) = setup().await;
    let mut a = Client::online(&server, "alice@localhost/a");
    server.sessions.update(&a.jid, &mut |s| s.directed_to.push("carol@localhost/c".into()));
    block(&mut a, &server, "b19", &["carol@localhost"]).await;
    let to_carol = probe.presences_to("carol@localhost");
    assert_eq!(to_carol.len(), 1, "{to_carol:?}");
    assert_eq!(to_carol[0].attr("type"), Some("unavailable"));
    assert_eq!(to_carol[0].attr("to"), Some("carol@localhost/c"));
}

#[tokio::test]
async fn xep0191_3_4_unblock_restores_delivery_pushes_and_sends_current_presence() {
    let (server, probe) = setup().await;
    let item = RosterItem { jid: "bob@localhost".into(), subscription: Subscription::Both, ..RosterItem::default() };
    server.store.put_roster_item("alice@localhost", &item).await.unwrap();
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut other = Client::online(&server, "alice@localhost/o");
    let mut bob = Client::online(&server, "bob@localhost/b");
    other.iq(&server, iq("get", "g", None, elem("blocklist", NS_BLOCKING))).await;
    block(&mut alice, &server, "b20", &["bob@localhost", "carol@localhost"]).await;
    other.drain();

    let reply = alice.iq(&server, iq("set", "u1", None, items("unblock", &["bob@localhost"]))).await;
    assert!(is_result(&reply), "{reply:?}");
    let p = pushes(&other.stanzas());
    assert_eq!(p.len(), 1);
    let unblock = p[0].get_child("unblock", NS_BLOCKING).expect("unblock push");
    assert_eq!(unblock.children().filter_map(|i| i.attr("jid")).collect::<Vec<_>>(), vec!["bob@localhost"]);

    // Current presence (available) went to bob from each available resource.
    let available: Vec<Element> =
        probe.presences_to("bob@localhost").into_iter().filter(|p| p.attr("type").is_none()).collect();
    assert_eq!(available.len(), 2, "{available:?}");

    bob.drain();
    alice.drain();
    bob.send(&server, message("alice@localhost/a", "back?")).await;
    assert!(alice.stanzas().iter().any(|s| s.name() == "message"), "delivered again");
    let reply = alice.iq(&server, iq("get", "u2", None, elem("blocklist", NS_BLOCKING))).await;
    assert_eq!(listed(&reply), vec!["carol@localhost"]);
}

#[tokio::test]
async fn xep0191_3_5_empty_unblock_clears_the_list_and_pushes_empty_unblock() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut other = Client::online(&server, "alice@localhost/o");
    other.iq(&server, iq("get", "g", None, elem("blocklist", NS_BLOCKING))).await;
    block(&mut alice, &server, "b21", &["bob@localhost", "carol@localhost", "spam.example"]).await;
    other.drain();

    let reply = alice.iq(&server, iq("set", "u3", None, elem("unblock", NS_BLOCKING))).await;
    assert!(is_result(&reply), "{reply:?}");
    let p = pushes(&other.stanzas());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].get_child("unblock", NS_BLOCKING).expect("unblock").children().count(), 0);
    let reply = alice.iq(&server, iq("get", "u4", None, elem("blocklist", NS_BLOCKING))).await;
    assert!(listed(&reply).is_empty());
    assert!(server.store.kv_list("alice@localhost", STORE).await.unwrap().is_empty());
}

#[tokio::test]
async fn xep0191_6_domain_block_covers_users_and_subdomains_of_that_domain() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    block(&mut alice, &server, "b22", &["evil.example"]).await;
    alice.drain();
    for from in ["spammer@evil.example/x", "evil.example", "room@muc.evil.example/nick"] {
        server
            .route(
                elem("message", CLIENT)
                    .with_attr("from", from)
                    .with_attr("to", "alice@localhost")
                    .with_attr("type", "chat")
                    .with_child(elem("body", CLIENT).with_text("buy")),
            )
            .await;
    }
    assert!(alice.stanzas().is_empty());
    server
        .route(
            elem("message", CLIENT)
                .with_attr("from", "friend@notevil.example/x")
                .with_attr("to", "alice@localhost")
                .with_attr("type", "chat")
                .with_child(elem("body", CLIENT).with_text("hi")),
        )
        .await;
    assert_eq!(alice.stanzas().len(), 1, "other domains pass");
}

#[tokio::test]
async fn xep0191_6_full_jid_block_covers_only_that_resource() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut phone = Client::online(&server, "bob@localhost/phone");
    let mut laptop = Client::online(&server, "bob@localhost/laptop");
    block(&mut alice, &server, "b23", &["bob@localhost/phone"]).await;
    alice.drain();

    phone.send(&server, message("alice@localhost/a", "from phone")).await;
    assert!(alice.stanzas().is_empty());
    let err = phone.stanzas().into_iter().find(|s| s.name() == "message").expect("bounced");
    assert_eq!(error_condition(&err).as_deref(), Some("service-unavailable"));
    laptop.send(&server, message("alice@localhost/a", "from laptop")).await;
    assert_eq!(alice.stanzas().len(), 1);
    assert!(laptop.stanzas().is_empty());
}

#[tokio::test]
async fn xep0191_own_server_and_own_resources_are_never_filtered() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let mut alice2 = Client::online(&server, "alice@localhost/b");
    // Blocking the own domain blocks every local user, but not the server itself.
    block(&mut alice, &server, "b24", &["localhost"]).await;
    alice.drain();
    let reply = alice.iq(&server, iq("get", "s1", Some(DOMAIN), elem("ping", "urn:xmpp:ping"))).await;
    assert!(is_result(&reply), "{reply:?}");
    alice.send(&server, message("alice@localhost/b", "note to self")).await;
    assert_eq!(alice2.stanzas().len(), 1);
    alice.send(&server, message("bob@localhost", "hi")).await;
    let err = alice.stanzas().into_iter().find(|s| s.name() == "message").expect("blocked");
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn xep0191_blocklist_survives_account_deletion_and_recreation_as_empty() {
    let (server, _) = setup().await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    block(&mut alice, &server, "b25", &["bob@localhost"]).await;
    alice.drain();
    let reply = alice
        .iq(
            &server,
            iq(
                "set",
                "del",
                None,
                elem("query", "jabber:iq:register").with_child(elem("remove", "jabber:iq:register")),
            ),
        )
        .await;
    assert!(is_result(&reply), "{reply:?}");
    alice.close(&server).await;
    create_account(&server, "alice").await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "b26", None, elem("blocklist", NS_BLOCKING))).await;
    assert!(listed(&reply).is_empty(), "a re-created account starts with an empty blocklist");
    let bob = Client::online(&server, "bob@localhost/b");
    bob.send(&server, message("alice@localhost/a", "hi")).await;
    assert_eq!(alice.stanzas().len(), 1);
}

/// End to end with the real presence module: the blocked contact's sessions see the user go
/// offline when blocked, see none of its later broadcasts, and see it again after unblocking.
#[tokio::test]
async fn xep0191_3_3_and_3_4_blocked_contact_sees_the_user_offline_through_the_presence_module() {
    let (server, _) = setup().await;
    let mutual = |jid: &str| RosterItem { jid: jid.into(), subscription: Subscription::Both, ..RosterItem::default() };
    server.store.put_roster_item("alice@localhost", &mutual("bob@localhost")).await.unwrap();
    server.store.put_roster_item("bob@localhost", &mutual("alice@localhost")).await.unwrap();
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let mut bob = Client::connect(&server, "bob@localhost/b");
    bob.send(&server, elem("presence", CLIENT)).await;
    alice.send(&server, elem("presence", CLIENT)).await;
    let from_alice = |stanzas: &[Element]| -> Vec<Element> {
        stanzas
            .iter()
            .filter(|s| s.name() == "presence" && s.attr("from") == Some("alice@localhost/a"))
            .cloned()
            .collect()
    };
    assert_eq!(from_alice(&bob.stanzas()).len(), 1, "bob sees alice come online");
    alice.drain();

    block(&mut alice, &server, "e1", &["bob@localhost"]).await;
    let seen = from_alice(&bob.stanzas());
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].attr("type"), Some("unavailable"));

    alice.send(&server, elem("presence", CLIENT).with_child(elem("status", CLIENT).with_text("here"))).await;
    assert!(from_alice(&bob.stanzas()).is_empty(), "broadcasts no longer reach bob");

    alice.iq(&server, iq("set", "e2", None, items("unblock", &["bob@localhost"]))).await;
    let seen = from_alice(&bob.stanzas());
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].attr("type"), None, "current presence after unblocking");
    assert_eq!(seen[0].get_child("status", CLIENT).map(|s| s.text()).as_deref(), Some("here"));
}
