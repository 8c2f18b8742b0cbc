//! XEP-0313 archiving: what goes into whose archive, XEP-0359 stanza ids, XEP-0334 hints,
//! XEP-0441 preferences, XEP-0424 retraction, XEP-0308 correction, deletion and retention.

mod common;
mod mam_common;

use std::time::Duration;

use common::*;
use kabar_modules::mam::{self, NS_MAM, NS_RETRACT, NS_SID};
use kabar_xml::{elem, Element, ElementExt};
use mam_common::*;

const HINTS: &str = "urn:xmpp:hints";

fn with_child(mut m: Element, child: Element) -> Element {
    m.append_child(child);
    m
}

#[tokio::test]
async fn xep0313_3_1_both_directions_archived_and_recipient_gets_stanza_id() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    h.send(ALICE, chat("bob@localhost", "m1", "Wherefore art thou")).await;
    h.send(BOB, chat("alice@localhost", "m2", "Here")).await;

    let got: Vec<Element> = recv_all(&mut b).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let ids = stanza_ids(&got[0]);
    assert_eq!(ids.len(), 1, "exactly one stanza-id, by the recipient's archive: {ids:?}");
    assert_eq!(ids[0].1, "bob@localhost");
    assert!(!ids[0].0.is_empty());
    let bob_id = ids[0].0.clone();

    let got: Vec<Element> = recv_all(&mut a).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(got.len(), 1);
    assert_eq!(stanza_ids(&got[0]).len(), 1);
    assert!(stanza_ids(&got[0]).iter().all(|(_, by)| by == "alice@localhost"), "no stanza-id by the sender's archive");

    // Bob's archive: in (from Alice), then out (to Alice). The archive id is the stanza-id he got.
    let ans = query(&h, BOB, &mut b, &[], None).await;
    assert_eq!(ans.bodies(), ["Wherefore art thou", "Here"]);
    assert_eq!(ans.ids()[0], bob_id, "the result id is the stanza-id the message carried");
    let first = forwarded_message(&ans.results[0]);
    assert_eq!(first.attr("from"), Some(ALICE));
    assert_eq!(first.attr("to"), Some("bob@localhost"));
    assert_eq!(first.attr("id"), Some("m1"));
    let second = forwarded_message(&ans.results[1]);
    assert_eq!(second.attr("from"), Some(BOB));
    assert_eq!(second.attr("to"), Some("alice@localhost"));

    // Alice's archive: out, then in; ids of her own archive.
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.bodies(), ["Wherefore art thou", "Here"]);
    assert!(!ans.ids().contains(&bob_id), "archives have their own ids");
    assert!(ans.complete());
    assert_eq!(ans.count(), Some(2));
}

#[tokio::test]
async fn xep0313_3_1_stanza_id_survives_offline_storage() {
    let h = server().await;
    let _a = online(&h, ALICE).await;
    h.create_account("bob").await;
    h.send(ALICE, chat("bob@localhost", "m1", "while you were out")).await;
    let mut b = h.login(BOB).await;
    h.send(BOB, presence(None, None)).await;
    let got: Vec<Element> = recv_all(&mut b).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let ids = stanza_ids(&got[0]);
    assert_eq!(ids.len(), 1);
    let ans = query(&h, BOB, &mut b, &[], None).await;
    assert_eq!(ans.ids(), [ids[0].0.clone()], "the offline copy carries the archive id");
}

#[tokio::test]
async fn xep0359_5_forged_stanza_id_by_the_recipient_is_removed() {
    let h = server().await;
    let _a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    let forged = |id: &str| elem("stanza-id", NS_SID).with_attr("id", id).with_attr("by", "bob@localhost");
    let foreign = elem("stanza-id", NS_SID).with_attr("id", "theirs").with_attr("by", "elsewhere.example");
    let m = with_child(with_child(chat("bob@localhost", "m1", "hi"), forged("forged")), foreign);
    h.send(ALICE, m).await;
    let got = recv_all(&mut b);
    let ids = stanza_ids(&got[0]);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&("theirs".into(), "elsewhere.example".into())), "other archives' ids stay");
    let own: Vec<_> = ids.iter().filter(|(_, by)| by == "bob@localhost").collect();
    assert_eq!(own.len(), 1);
    assert_ne!(own[0].0, "forged");

    // Also when the message is not archived.
    let m = with_child(with_child(chat("bob@localhost", "m2", "secret"), forged("forged2")), elem("no-store", HINTS));
    h.send(ALICE, m).await;
    let got = recv_all(&mut b);
    assert!(stanza_ids(&got[0]).is_empty(), "forgery removed, none added: {got:?}");
}

#[tokio::test]
async fn xep0313_5_1_1_only_chat_and_normal_messages_with_a_body_are_archived() {
    let h = server().await;
    let _a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    let chatstate = elem("message", NS_CLIENT)
        .with_attr("to", "bob@localhost")
        .with_attr("type", "chat")
        .with_child(elem("composing", "http://jabber.org/protocol/chatstates"));
    h.send(ALICE, chatstate).await;
    let mut headline = message("bob@localhost", "headline news");
    headline.set_attr_str("type", "headline");
    h.send(ALICE, headline).await;
    let mut groupchat = message(BOB, "groupchat line");
    groupchat.set_attr_str("type", "groupchat");
    h.send(ALICE, groupchat).await;
    let mut error = message("bob@localhost", "error body");
    error.set_attr_str("type", "error");
    h.send(ALICE, error).await;
    let normal = elem("message", NS_CLIENT)
        .with_attr("to", "bob@localhost")
        .with_child(elem("body", NS_CLIENT).with_text("a normal message"));
    h.send(ALICE, normal).await;
    h.send(ALICE, message("bob@localhost", "a chat message")).await;
    assert_eq!(archived_bodies(&h, BOB, &mut b).await, ["a normal message", "a chat message"]);
    let mut a = h.login("alice@localhost/laptop").await;
    assert_eq!(archived_bodies(&h, "alice@localhost/laptop", &mut a).await, ["a normal message", "a chat message"]);
}

#[tokio::test]
async fn xep0313_message_to_own_account_is_archived_once() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let mut l = online(&h, "alice@localhost/laptop").await;
    h.send(ALICE, chat("alice@localhost/laptop", "s1", "note to self")).await;
    let got: Vec<Element> = recv_all(&mut l).into_iter().filter(|s| s.name() == "message").collect();
    let ids = stanza_ids(&got[0]);
    assert_eq!(ids.len(), 1);
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.bodies(), ["note to self"]);
    assert_eq!(ans.ids(), [ids[0].0.clone()]);
    // §4.1.1: with = the own JID finds exactly the messages to oneself.
    let ans = query(&h, ALICE, &mut a, &[("with", &["alice@localhost"])], None).await;
    assert_eq!(ans.bodies(), ["note to self"]);
}

#[tokio::test]
async fn xep0334_no_store_and_no_permanent_store_are_not_archived_store_is() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    h.send(ALICE, with_child(message("bob@localhost", "ephemeral 1"), elem("no-store", HINTS))).await;
    h.send(ALICE, with_child(message("bob@localhost", "ephemeral 2"), elem("no-permanent-store", HINTS))).await;
    h.send(ALICE, message("bob@localhost", "kept")).await;
    let bodyless = elem("message", NS_CLIENT)
        .with_attr("to", "bob@localhost")
        .with_attr("type", "chat")
        .with_child(elem("store", HINTS))
        .with_child(elem("x", "urn:example:payload"));
    h.send(ALICE, bodyless).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.bodies(), ["kept", ""], "no-store/no-permanent-store skipped; <store/> archived without a body");
    assert!(forwarded_message(&ans.results[1]).has_child("x", "urn:example:payload"), "the whole stanza is kept");
    let mut b = h.login("bob@localhost/other").await;
    assert_eq!(archived_bodies(&h, "bob@localhost/other", &mut b).await, ["kept", ""]);
}

fn prefs_iq(id: &str, default: &str, always: &[&str], never: &[&str]) -> Element {
    let list = |name: &str, jids: &[&str]| {
        jids.iter().fold(elem(name, NS_MAM), |e, j| e.with_child(elem("jid", NS_MAM).with_text(*j)))
    };
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", id).with_child(
        elem("prefs", NS_MAM)
            .with_attr("default", default)
            .with_child(list("always", always))
            .with_child(list("never", never)),
    )
}

fn prefs_lists(prefs: &Element) -> (String, Vec<String>, Vec<String>) {
    let list = |name: &str| {
        prefs.get_child(name, NS_MAM).map(|l| l.children().map(Element::text).collect()).unwrap_or_default()
    };
    (prefs.attr("default").unwrap_or("").to_owned(), list("always"), list("never"))
}

#[tokio::test]
async fn xep0441_prefs_get_set_round_trip() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let get = elem("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "p0").with_child(elem("prefs", NS_MAM));
    let ans = ask(&h, ALICE, &mut a, get.clone()).await;
    let prefs = ans.iq.get_child("prefs", NS_MAM).expect("prefs");
    assert_eq!(prefs_lists(prefs), ("always".into(), vec![], vec![]), "default: archive everything");
    assert!(prefs.has_child("always", NS_MAM) && prefs.has_child("never", NS_MAM), "both lists present even if empty");

    let ans =
        ask(&h, ALICE, &mut a, prefs_iq("p1", "roster", &["Romeo@Montague.lit"], &["nurse@capulet.lit/Room"])).await;
    let expected =
        ("roster".to_owned(), vec!["romeo@montague.lit".to_owned()], vec!["nurse@capulet.lit/Room".to_owned()]);
    assert_eq!(prefs_lists(ans.iq.get_child("prefs", NS_MAM).expect("applied prefs")), expected);
    let ans = ask(&h, ALICE, &mut a, get).await;
    assert_eq!(prefs_lists(ans.iq.get_child("prefs", NS_MAM).expect("prefs")), expected, "stored");

    let ans = ask(&h, ALICE, &mut a, prefs_iq("p2", "sometimes", &[], &[])).await;
    assert_eq!(ans.error_condition().as_deref(), Some("bad-request"));
    let ans = ask(&h, ALICE, &mut a, prefs_iq("p3", "never", &["not@a@jid"], &[])).await;
    assert_eq!(ans.error_condition().as_deref(), Some("jid-malformed"));

    // Only the account itself.
    let mut b = online(&h, BOB).await;
    let mut other = prefs_iq("p4", "never", &[], &[]);
    other.set_attr_str("to", "alice@localhost");
    let ans = ask(&h, BOB, &mut b, other).await;
    assert_eq!(ans.error_condition().as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn xep0441_prefs_never_default_and_always_never_lists() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    let _c = online(&h, "carol@localhost/x").await;
    let _d = online(&h, "dave@localhost/y").await;
    // Default never; Bob always; Carol's tablet never (a full JID); Dave in neither.
    ask(&h, ALICE, &mut a, prefs_iq("p", "never", &["bob@localhost"], &["carol@localhost/tablet"])).await;
    h.send(ALICE, message("bob@localhost", "to bob")).await;
    h.send(ALICE, message("dave@localhost", "to dave")).await;
    h.send(ALICE, message("carol@localhost/tablet", "to carol's tablet")).await;
    h.send("bob@localhost/pc", message("alice@localhost", "from bob")).await;
    h.send("dave@localhost/y", message("alice@localhost", "from dave")).await;
    assert_eq!(archived_bodies(&h, ALICE, &mut a).await, ["to bob", "from bob"]);

    // Default always, with Bob in both lists: never wins.
    ask(&h, ALICE, &mut a, prefs_iq("p", "always", &["bob@localhost"], &["bob@localhost", "carol@localhost/tablet"]))
        .await;
    h.send(ALICE, message("bob@localhost", "to bob again")).await;
    h.send(ALICE, message("carol@localhost/tablet", "to the tablet")).await;
    h.send(ALICE, message("carol@localhost/x", "to another resource")).await;
    h.send(ALICE, message("dave@localhost", "to dave again")).await;
    assert_eq!(
        archived_bodies(&h, ALICE, &mut a).await,
        ["to bob", "from bob", "to another resource", "to dave again"],
        "a full JID in a list matches only that resource"
    );
}

#[tokio::test]
async fn xep0441_prefs_roster_default_archives_only_contacts() {
    let h = server().await;
    h.befriend(ALICE, BOB).await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    let _c = online(&h, "carol@localhost/x").await;
    ask(&h, ALICE, &mut a, prefs_iq("p", "roster", &[], &[])).await;
    h.send(ALICE, message("bob@localhost", "to a contact")).await;
    h.send(ALICE, message("carol@localhost", "to a stranger")).await;
    h.send("carol@localhost/x", message("alice@localhost", "from a stranger")).await;
    h.send(BOB, message("alice@localhost", "from a contact")).await;
    h.send(ALICE, message("alice@localhost", "to myself")).await;
    assert_eq!(archived_bodies(&h, ALICE, &mut a).await, ["to a contact", "from a contact", "to myself"]);
    // Carol's own archive follows her own (default) preferences.
    let mut c = h.login("carol@localhost/z").await;
    assert_eq!(archived_bodies(&h, "carol@localhost/z", &mut c).await, ["to a stranger", "from a stranger"]);
}

fn retract(to: &str, id: &str, target: &str) -> Element {
    elem("message", NS_CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("id", id)
        .with_child(elem("retract", NS_RETRACT).with_attr("id", target))
        .with_child(elem("fallback", "urn:xmpp:fallback:0").with_attr("for", NS_RETRACT))
        .with_child(elem("body", NS_CLIENT).with_text("This person attempted to retract a previous message"))
        .with_child(elem("store", HINTS))
}

fn origin_id(id: &str) -> Element {
    elem("origin-id", NS_SID).with_attr("id", id)
}

#[tokio::test]
async fn xep0424_retraction_leaves_a_tombstone_in_both_archives() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    h.send(ALICE, with_child(chat("bob@localhost", "m1", "wrong recipient secret"), origin_id("origin-1"))).await;
    h.send(ALICE, chat("bob@localhost", "m2", "stays")).await;
    h.send(ALICE, retract("bob@localhost", "r1", "origin-1")).await;

    for (jid, rx) in [(ALICE, &mut a), (BOB, &mut b)] {
        let ans = query(&h, jid, rx, &[], None).await;
        assert_eq!(ans.results.len(), 3, "original (now a tombstone), the other message, the retraction");
        let tomb = forwarded_message(&ans.results[0]);
        assert!(tomb.get_child("body", NS_CLIENT).is_none(), "{jid}: the text is gone: {tomb:?}");
        let marker = tomb.get_child("retracted", NS_RETRACT).expect("<retracted/> marker");
        assert_eq!(marker.attr("id"), Some("r1"), "points at the retraction");
        assert!(marker.attr("stamp").is_some_and(|s| s.ends_with('Z')));
        assert_eq!(tomb.attr("id"), Some("m1"), "attributes stay");
        assert_eq!(tomb.get_child("origin-id", NS_SID).and_then(|o| o.attr("id")), Some("origin-1"));
        assert_eq!(ans.bodies()[1], "stays");
        assert!(forwarded_message(&ans.results[2]).has_child("retract", NS_RETRACT), "the retraction is archived");
        let search = query(&h, jid, rx, &[(mam::FULLTEXT_FIELD, &["secret"])], None).await;
        assert!(search.results.is_empty(), "{jid}: retracted text is not searchable");
        let search = query(&h, jid, rx, &[(mam::FULLTEXT_FIELD, &["attempted"])], None).await;
        assert!(search.results.is_empty(), "{jid}: the fallback text is not indexed");
    }
}

#[tokio::test]
async fn xep0424_only_the_sender_can_retract() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    let _c = online(&h, "carol@localhost/x").await;
    h.send(ALICE, with_child(chat("bob@localhost", "m1", "from alice"), origin_id("o1"))).await;
    h.send(BOB, with_child(chat("alice@localhost", "m1", "from bob"), origin_id("o1"))).await;
    // Carol tries to retract both; Bob tries to retract Alice's (same ids as his own message).
    h.send("carol@localhost/x", retract("alice@localhost", "r1", "o1")).await;
    h.send(BOB, retract("alice@localhost", "r2", "o1")).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    let tombstoned: Vec<bool> =
        ans.results.iter().map(|m| forwarded_message(m).has_child("retracted", NS_RETRACT)).collect();
    assert_eq!(ans.bodies()[0], "from alice", "Alice's message is not Bob's or Carol's to retract");
    assert_eq!(tombstoned, [false, true, false, false], "only Bob's own message went: {:?}", ans.bodies());
}

#[tokio::test]
async fn xep0424_legacy_fasten_retraction_is_applied() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    h.send(ALICE, with_child(chat("bob@localhost", "m1", "old style"), origin_id("o1"))).await;
    let legacy = elem("message", NS_CLIENT).with_attr("to", "bob@localhost").with_attr("type", "chat").with_child(
        elem("apply-to", "urn:xmpp:fasten:0")
            .with_attr("id", "o1")
            .with_child(elem("retract", "urn:xmpp:message-retract:0")),
    );
    h.send(ALICE, legacy).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    let tomb = forwarded_message(&ans.results[0]);
    let marker =
        tomb.get_child("retracted", "urn:xmpp:message-retract:0").expect("tombstone in the retraction's namespace");
    assert!(marker.has_child("origin-id", NS_SID), "v0 tombstones hold the origin-id");
    assert!(!tomb.has_child("body", NS_CLIENT));
    assert_eq!(ans.results.len(), 2, "the bodyless retraction is archived too");
}

fn correction(to: &str, id: &str, target: &str, body: &str) -> Element {
    chat(to, id, body).with_child(elem("replace", "urn:xmpp:message-correct:0").with_attr("id", target))
}

#[tokio::test]
async fn xep0308_correction_is_archived_and_applied_to_the_original() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    h.send(ALICE, chat("bob@localhost", "m1", "I lvoe you")).await;
    h.send(ALICE, chat("bob@localhost", "m2", "unrelated")).await;
    h.send(ALICE, correction("bob@localhost", "c1", "m1", "I love you")).await;
    h.send(ALICE, correction("bob@localhost", "c2", "m1", "I love you, really")).await;
    for (jid, rx) in [(ALICE, &mut a), (BOB, &mut b)] {
        let ans = query(&h, jid, rx, &[], None).await;
        assert_eq!(
            ans.bodies(),
            ["I love you, really", "unrelated", "I love you", "I love you, really"],
            "{jid}: the original shows the latest correction; the corrections stay in order"
        );
        let original = forwarded_message(&ans.results[0]);
        assert_eq!(original.attr("id"), Some("m1"));
        assert_eq!(original.children().filter(|c| c.is("body", NS_CLIENT)).count(), 1, "one body");
        let hits = query(&h, jid, rx, &[(mam::FULLTEXT_FIELD, &["really"])], None).await;
        assert_eq!(hits.ids(), [ans.ids()[0].clone()], "{jid}: the corrected text is found once, on the original");
        let hits = query(&h, jid, rx, &[(mam::FULLTEXT_FIELD, &["lvoe"])], None).await;
        assert!(hits.results.is_empty(), "{jid}: the typo is gone");
    }
    // A correction by someone else does not touch Alice's message; one of an unknown id stays searchable.
    h.send(BOB, correction("alice@localhost", "c3", "m1", "hijacked")).await;
    h.send(ALICE, correction("bob@localhost", "c4", "never-sent", "orphan fix")).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.bodies()[0], "I love you, really");
    let hits = query(&h, ALICE, &mut a, &[(mam::FULLTEXT_FIELD, &["orphan"])], None).await;
    assert_eq!(hits.results.len(), 1);
}

#[tokio::test]
async fn xep0424_retraction_also_removes_corrected_text() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    h.send(ALICE, chat("bob@localhost", "m1", "first draft")).await;
    h.send(ALICE, correction("bob@localhost", "c1", "m1", "second draft")).await;
    h.send(ALICE, retract("bob@localhost", "r1", "m1")).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.results.len(), 3);
    for m in &ans.results[..2] {
        let f = forwarded_message(m);
        assert!(f.has_child("retracted", NS_RETRACT) && !f.has_child("body", NS_CLIENT), "{f:?}");
    }
    let hits = query(&h, ALICE, &mut a, &[(mam::FULLTEXT_FIELD, &["draft"])], None).await;
    assert!(hits.results.is_empty());
    // A correction after the retraction does not bring the text back.
    h.send(ALICE, correction("bob@localhost", "c2", "m1", "third draft")).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert!(forwarded_message(&ans.results[0]).has_child("retracted", NS_RETRACT));
}

#[tokio::test]
async fn xep0313_archive_is_deleted_with_the_account() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    h.send(ALICE, message("bob@localhost", "goodbye")).await;
    let remove = elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "rm")
        .with_child(elem("query", "jabber:iq:register").with_child(elem("remove", "jabber:iq:register")));
    h.send(ALICE, remove).await;
    recv_all(&mut a);
    let q = kabar_storage::ArchiveQuery { max: 10, ..Default::default() };
    let left = h.server.store.archive_query("alice@localhost", &q).await.expect("query").expect("page");
    assert_eq!(left.count, 0, "archive deleted with the account");
    assert_eq!(archived_bodies(&h, BOB, &mut b).await, ["goodbye"], "the peer's archive keeps its copy");
}

#[tokio::test]
async fn retention_removes_only_messages_older_than_the_limit() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    h.send(ALICE, message("bob@localhost", "one")).await;
    h.send(ALICE, message("bob@localhost", "two")).await;
    assert_eq!(mam::DEFAULT_RETENTION, None, "kept forever unless configured");
    assert_eq!(mam::apply_retention(&h.server, Duration::from_secs(3600)).await.expect("retention"), 0);
    assert_eq!(archived_bodies(&h, ALICE, &mut a).await, ["one", "two"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(mam::apply_retention(&h.server, Duration::ZERO).await.expect("retention"), 4, "two in each archive");
    assert!(archived_bodies(&h, ALICE, &mut a).await.is_empty());
}

#[tokio::test]
async fn xep0313_5_1_1_a_message_routed_again_is_archived_once() {
    let h = server().await;
    let _a = online(&h, ALICE).await;
    let mut b = online(&h, BOB).await;
    h.send(ALICE, chat("bob@localhost", "m1", "only once")).await;
    let delivered = recv_all(&mut b).into_iter().find(|s| s.name() == "message").expect("delivered");
    let id = stanza_ids(&delivered)[0].0.clone();
    // What the c2s layer does with a message a closing session never acknowledged.
    h.server.route(delivered.clone()).await;
    let again = recv_all(&mut b).into_iter().find(|s| s.name() == "message").expect("delivered again");
    assert_eq!(stanza_ids(&again), [(id.clone(), "bob@localhost".to_owned())], "same id, one stanza-id");
    let ans = query(&h, BOB, &mut b, &[], None).await;
    assert_eq!(ans.ids(), std::slice::from_ref(&id), "archived once");

    // The same stanza-id on a message from someone else, or with another message id, is a forgery.
    let mut forged = delivered.clone();
    forged.set_attr_str("from", "carol@localhost/x");
    h.create_account("carol").await;
    h.server.route(forged).await;
    let mut other_id = delivered;
    other_id.set_attr_str("id", "m2");
    h.server.route(other_id).await;
    let got: Vec<Element> = recv_all(&mut b).into_iter().filter(|s| s.name() == "message").collect();
    assert_eq!(got.len(), 2);
    for m in &got {
        let ids = stanza_ids(m);
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0].0, id, "a fresh id replaces the copied one");
    }
    assert_eq!(query(&h, BOB, &mut b, &[], None).await.results.len(), 3);
}

#[tokio::test]
async fn imported_messages_keep_their_time_and_importing_twice_adds_nothing() {
    use kabar_storage::Direction;
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    h.send(ALICE, message("bob@localhost", "live")).await;
    let (alice, bob) = (bare("alice@localhost"), bare("bob@localhost"));
    // 2020-01-01T00:00:00Z and a minute later.
    let t0 = 1_577_836_800_000_000;
    let old = [(Direction::In, t0, "imported hello"), (Direction::Out, t0 + 60_000_000, "imported reply")];
    for round in 0..2 {
        for (n, (dir, ts, body)) in old.iter().enumerate() {
            let item = mam::imported_item(&alice, &bob, *dir, *ts, 0, body).expect("item");
            let inserted = h.server.store.archive_append(alice.as_str(), &item, Some(&format!("wa:{n}"))).await;
            assert_eq!(inserted.expect("append"), round == 0, "round {round}: only the first import inserts");
        }
    }
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.bodies(), ["imported hello", "imported reply", "live"], "in time order, before the live message");
    assert_eq!(delay_stamp(&ans.results[0]), "2020-01-01T00:00:00Z");
    let first = forwarded_message(&ans.results[0]);
    assert_eq!((first.attr("from"), first.attr("to")), (Some("bob@localhost"), Some("alice@localhost")));
    let ans =
        query(&h, ALICE, &mut a, &[(mam::FULLTEXT_FIELD, &["imported"]), ("with", &["bob@localhost"])], None).await;
    assert_eq!(ans.results.len(), 2);
    let ans = query(&h, ALICE, &mut a, &[("end", &["2020-01-01T00:00:59Z"])], None).await;
    assert_eq!(ans.bodies(), ["imported hello"]);
}

#[test]
fn imported_ids_sharing_a_timestamp_sort_in_file_order() {
    let ids: Vec<String> = (0..50).map(|seq| mam::archive_id_in_order(1_609_425_660_000_000, seq)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids must sort in sequence order");
    assert!(mam::archive_id_in_order(1_609_425_600_000_000, 900) < mam::archive_id_in_order(1_609_425_660_000_000, 0));
}
