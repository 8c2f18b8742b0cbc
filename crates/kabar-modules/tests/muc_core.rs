//! XEP-0045 multi-user chat through a real server (in-process sessions): rooms, roles,
//! affiliations, channels, XEP-0410 self-ping, XEP-0313 room archives and XEP-0425 moderation.

mod features_harness;

use std::sync::Arc;

use features_harness::*;
use kabar_core::sessions::LocalSessions;
use kabar_core::Server;
use kabar_storage::SharedStore;
use kabar_storage_sqlite::SqliteStore;
use kabar_xml::{elem, Element, ElementExt};

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const DATA: &str = "jabber:x:data";
const SERVICE: &str = "conference.localhost";

async fn ensure_account(server: &Server, user: &str) {
    if !server.account_exists(&bare(&format!("{user}@{DOMAIN}"))).await {
        create_account(server, user).await;
    }
}

fn join_presence(room_nick: &str, password: Option<&str>) -> Element {
    let mut x = elem("x", MUC);
    if let Some(p) = password {
        x.append_child(elem("password", MUC).with_text(p));
    }
    elem("presence", CLIENT).with_attr("to", room_nick).with_child(x)
}

fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", MUC_USER)
        .map(|x| {
            x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).map(str::to_string).collect()
        })
        .unwrap_or_default()
}

fn item_attr(p: &Element, attr: &str) -> Option<String> {
    p.get_child("x", MUC_USER)?.get_child("item", MUC_USER)?.attr(attr).map(str::to_string)
}

fn presences(stanzas: &[Element]) -> Vec<&Element> {
    stanzas.iter().filter(|s| s.name() == "presence").collect()
}

fn groupchat(to: &str, body: &str) -> Element {
    elem("message", CLIENT)
        .with_attr("to", to)
        .with_attr("type", "groupchat")
        .with_attr("id", format!("g-{body}"))
        .with_child(elem("body", CLIENT).with_text(body))
}

fn submit(fields: &[(&str, &str)]) -> Element {
    let mut x = elem("x", DATA).with_attr("type", "submit");
    for (var, value) in fields {
        x.append_child(elem("field", DATA).with_attr("var", *var).with_child(elem("value", DATA).with_text(*value)));
    }
    elem("query", MUC_OWNER).with_child(x)
}

fn admin_item(attrs: &[(&str, &str)]) -> Element {
    let mut item = elem("item", MUC_ADMIN);
    for (k, v) in attrs {
        item.set_attr_str(k, *v);
    }
    elem("query", MUC_ADMIN).with_child(item)
}

/// alice creates `room` and configures it with `fields` (an instant room when empty); returns her
/// client, drained.
async fn create_room(server: &Server, room: &str, fields: &[(&str, &str)]) -> Client {
    create_room_as(server, "alice", room, fields).await
}

async fn create_room_as(server: &Server, user: &str, room: &str, fields: &[(&str, &str)]) -> Client {
    ensure_account(server, user).await;
    let mut alice = Client::online(server, &format!("{user}@localhost/a"));
    alice.send(server, join_presence(&format!("{room}@{SERVICE}/{user}"), None)).await;
    let got = alice.stanzas();
    let own = presences(&got).into_iter().find(|p| codes(p).contains(&"110".to_string())).expect("self presence");
    assert!(codes(own).contains(&"201".to_string()), "created: {own:?}");
    let reply = alice.iq(server, iq("set", "cfg", Some(&format!("{room}@{SERVICE}")), submit(fields))).await;
    assert!(is_result(&reply), "{reply:?}");
    alice.stanzas();
    alice
}

async fn join(server: &Server, user: &str, room: &str, nick: &str) -> (Client, Vec<Element>) {
    ensure_account(server, user).await;
    let mut c = Client::online(server, &format!("{user}@localhost/{nick}"));
    c.send(server, join_presence(&format!("{room}@{SERVICE}/{nick}"), None)).await;
    let got = c.stanzas();
    (c, got)
}

#[tokio::test]
async fn xep0045_10_1_reserved_room_is_locked_until_configured_then_others_join() {
    let server = server();
    ensure_account(&server, "alice").await;
    ensure_account(&server, "bob").await;
    let mut alice = Client::online(&server, "alice@localhost/a");
    alice.send(&server, join_presence("lab@conference.localhost/alice", None)).await;
    let got = alice.stanzas();
    let own = presences(&got)[0];
    assert_eq!(codes(own), vec!["110", "170", "201"]);
    assert_eq!(item_attr(own, "affiliation").as_deref(), Some("owner"));
    assert_eq!(item_attr(own, "role").as_deref(), Some("moderator"));

    let (mut bob, got) = join(&server, "bob", "lab", "bob").await;
    let err = got.iter().find(|s| s.attr("type") == Some("error")).expect("refused while locked");
    assert_eq!(error_condition(err).as_deref(), Some("item-not-found"));

    let reply = alice.iq(&server, iq("set", "inst", Some("lab@conference.localhost"), submit(&[]))).await;
    assert!(is_result(&reply), "{reply:?}");
    bob.send(&server, join_presence("lab@conference.localhost/bob", None)).await;
    let got = bob.stanzas();
    let ps = presences(&got);
    assert_eq!(ps.len(), 2, "alice's presence then bob's own: {got:?}");
    assert_eq!(ps[0].attr("from"), Some("lab@conference.localhost/alice"));
    assert_eq!(ps[1].attr("from"), Some("lab@conference.localhost/bob"));
    assert!(codes(ps[1]).contains(&"110".to_string()));
    // Semi-anonymous: bob (participant) does not see alice's real JID; alice (moderator) sees his.
    assert_eq!(item_attr(ps[0], "jid"), None);
    let to_alice = alice.stanzas();
    assert_eq!(item_attr(presences(&to_alice)[0], "jid").as_deref(), Some("bob@localhost/bob"));
    // The subject comes last, even when empty.
    let last = got.last().unwrap();
    assert!(last.get_child("subject", CLIENT).is_some(), "{last:?}");
}

#[tokio::test]
async fn xep0045_7_2_9_nick_conflict_and_7_6_nick_change_303() {
    let server = server();
    let mut alice = create_room(&server, "r1", &[]).await;
    let (_bob, got) = join(&server, "bob", "r1", "alice").await;
    let err = got.iter().find(|s| s.attr("type") == Some("error")).expect("conflict");
    assert_eq!(error_condition(err).as_deref(), Some("conflict"));

    let (bob, _) = join(&server, "bob", "r1", "bob").await;
    alice.stanzas();
    bob.send(&server, elem("presence", CLIENT).with_attr("to", "r1@conference.localhost/robert")).await;
    let seen = alice.stanzas();
    let ps = presences(&seen);
    assert_eq!(ps[0].attr("type"), Some("unavailable"));
    assert_eq!(codes(ps[0]), vec!["303"]);
    assert_eq!(item_attr(ps[0], "nick").as_deref(), Some("robert"));
    assert_eq!(ps[1].attr("from"), Some("r1@conference.localhost/robert"));
}

#[tokio::test]
async fn xep0045_7_4_groupchat_is_broadcast_with_room_stanza_id_and_kept_for_history() {
    let server = server();
    let mut alice = create_room(&server, "talk", &[]).await;
    let (mut bob, _) = join(&server, "bob", "talk", "bob").await;
    alice.stanzas();
    bob.send(&server, groupchat("talk@conference.localhost", "halo")).await;
    for c in [&mut alice, &mut bob] {
        let got = c.stanzas();
        let m = got.iter().find(|s| s.name() == "message").expect("reflected");
        assert_eq!(m.attr("from"), Some("talk@conference.localhost/bob"));
        assert_eq!(m.attr("id"), Some("g-halo"), "XEP-0045 §15.2 stable id");
        let sid = m.get_child("stanza-id", "urn:xmpp:sid:0").expect("stanza-id");
        assert_eq!(sid.attr("by"), Some("talk@conference.localhost"));
    }
    let (_carol, got) = join(&server, "carol", "talk", "carol").await;
    let hist: Vec<&Element> =
        got.iter().filter(|s| s.name() == "message" && s.get_child("body", CLIENT).is_some()).collect();
    assert_eq!(hist.len(), 1);
    assert!(hist[0].get_child("delay", "urn:xmpp:delay").is_some());
    // maxstanzas='0' asks for none.
    ensure_account(&server, "dave").await;
    let mut dave = Client::online(&server, "dave@localhost/r");
    let mut p = join_presence("talk@conference.localhost/dave", None);
    if let Some(x) = p.get_child_mut("x", MUC) {
        x.append_child(elem("history", MUC).with_attr("maxstanzas", "0"));
    }
    dave.send(&server, p).await;
    assert!(!dave.stanzas().iter().any(|s| s.get_child("body", CLIENT).is_some()));
}

#[tokio::test]
async fn xep0045_7_2_7_members_only_refuses_non_member_until_made_member() {
    let server = server();
    let mut alice = create_room(&server, "club", &[("muc#roomconfig_membersonly", "1")]).await;
    let (mut bob, got) = join(&server, "bob", "club", "bob").await;
    let err = got.iter().find(|s| s.attr("type") == Some("error")).expect("refused");
    assert_eq!(error_condition(err).as_deref(), Some("registration-required"));
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "mem",
                Some("club@conference.localhost"),
                admin_item(&[("jid", "bob@localhost"), ("affiliation", "member")]),
            ),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    bob.send(&server, join_presence("club@conference.localhost/bob", None)).await;
    let got = bob.stanzas();
    assert!(got.iter().all(|s| s.attr("type") != Some("error")), "{got:?}");
    let list = alice
        .iq(&server, iq("get", "list", Some("club@conference.localhost"), admin_item(&[("affiliation", "member")])))
        .await;
    let q = list.get_child("query", MUC_ADMIN).unwrap();
    assert_eq!(q.children().filter_map(|i| i.attr("jid")).collect::<Vec<_>>(), vec!["bob@localhost"]);
}

#[tokio::test]
async fn xep0045_7_2_6_password_protected_room_refuses_wrong_password() {
    let server = server();
    let _alice = create_room(
        &server,
        "vault",
        &[("muc#roomconfig_passwordprotectedroom", "1"), ("muc#roomconfig_roomsecret", "s3cret")],
    )
    .await;
    let (mut bob, got) = join(&server, "bob", "vault", "bob").await;
    let err = got.iter().find(|s| s.attr("type") == Some("error")).expect("refused");
    assert_eq!(error_condition(err).as_deref(), Some("not-authorized"));
    bob.send(&server, join_presence("vault@conference.localhost/bob", Some("s3cret"))).await;
    assert!(bob.stanzas().iter().all(|s| s.attr("type") != Some("error")));
}

#[tokio::test]
async fn xep0045_8_2_kick_307_and_9_1_ban_301_then_banned_join_forbidden() {
    let server = server();
    let mut alice = create_room(&server, "arena", &[]).await;
    let (mut bob, _) = join(&server, "bob", "arena", "bob").await;
    let r = alice
        .iq(
            &server,
            iq("set", "k", Some("arena@conference.localhost"), admin_item(&[("nick", "bob"), ("role", "none")])),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    let got = bob.stanzas();
    let p = presences(&got)[0];
    assert_eq!(p.attr("type"), Some("unavailable"));
    assert_eq!(codes(p), vec!["110", "307"]);

    bob.send(&server, join_presence("arena@conference.localhost/bob", None)).await;
    bob.stanzas();
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "b",
                Some("arena@conference.localhost"),
                admin_item(&[("jid", "bob@localhost"), ("affiliation", "outcast")]),
            ),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    let got = bob.stanzas();
    assert_eq!(codes(presences(&got)[0]), vec!["110", "301"]);
    bob.send(&server, join_presence("arena@conference.localhost/bob", None)).await;
    let got = bob.stanzas();
    assert_eq!(error_condition(&got[0]).as_deref(), Some("forbidden"));
    // A participant may not kick.
    let (mut carol, _) = join(&server, "carol", "arena", "carol").await;
    let r = carol
        .iq(
            &server,
            iq("set", "k2", Some("arena@conference.localhost"), admin_item(&[("nick", "alice"), ("role", "none")])),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    // The last owner cannot step down.
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "o",
                Some("arena@conference.localhost"),
                admin_item(&[("jid", "alice@localhost"), ("affiliation", "member")]),
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"));
}

#[tokio::test]
async fn xep0045_7_4_moderated_room_visitor_cannot_speak_until_given_voice() {
    let server = server();
    let mut alice = create_room(&server, "stage", &[("muc#roomconfig_moderatedroom", "1")]).await;
    let (mut bob, got) = join(&server, "bob", "stage", "bob").await;
    assert_eq!(item_attr(presences(&got).last().unwrap(), "role").as_deref(), Some("visitor"));
    bob.send(&server, groupchat("stage@conference.localhost", "hi")).await;
    let got = bob.stanzas();
    assert_eq!(error_condition(&got[0]).as_deref(), Some("forbidden"));
    let r = alice
        .iq(
            &server,
            iq("set", "v", Some("stage@conference.localhost"), admin_item(&[("nick", "bob"), ("role", "participant")])),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    bob.stanzas();
    bob.send(&server, groupchat("stage@conference.localhost", "hi")).await;
    assert!(bob
        .stanzas()
        .iter()
        .any(|s| s.attr("from") == Some("stage@conference.localhost/bob") && s.name() == "message"));
}

#[tokio::test]
async fn channel_reader_post_is_forbidden_and_reader_presence_goes_only_to_moderators() {
    let server = server();
    let mut alice = create_room(&server, "news", &[(kabar_modules::muc::config::FIELD_CHANNEL, "1")]).await;
    let (mut bob, got) = join(&server, "bob", "news", "bob").await;
    // bob (reader) gets only his own presence: no occupant list.
    let ps = presences(&got);
    assert_eq!(ps.len(), 1, "{got:?}");
    assert_eq!(item_attr(ps[0], "role").as_deref(), Some("visitor"));
    let (mut carol, _) = join(&server, "carol", "news", "carol").await;
    assert!(presences(&bob.stanzas()).is_empty(), "readers do not see each other");
    assert_eq!(presences(&alice.stanzas()).len(), 2, "the owner sees readers come");
    bob.send(&server, groupchat("news@conference.localhost", "me too")).await;
    let got = bob.stanzas();
    assert_eq!(error_condition(&got[0]).as_deref(), Some("forbidden"));
    alice.send(&server, groupchat("news@conference.localhost", "headline")).await;
    for c in [&mut bob, &mut carol] {
        assert!(c.stanzas().iter().any(|s| s.get_child("body", CLIENT).map(|b| b.text()) == Some("headline".into())));
    }
}

#[tokio::test]
async fn xep0410_self_ping_answered_when_joined_not_acceptable_otherwise_and_session_end_leaves() {
    let server = server();
    let mut alice = create_room(&server, "pingy", &[]).await;
    let (mut bob, _) = join(&server, "bob", "pingy", "bob").await;
    let ping = || elem("ping", "urn:xmpp:ping");
    let r = bob.iq(&server, iq("get", "p1", Some("pingy@conference.localhost/bob"), ping())).await;
    assert!(is_result(&r), "{r:?}");
    ensure_account(&server, "carol").await;
    let mut carol = Client::online(&server, "carol@localhost/x");
    let r = carol.iq(&server, iq("get", "p2", Some("pingy@conference.localhost/bob"), ping())).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    alice.stanzas();
    bob.close(&server).await;
    let got = alice.stanzas();
    let p = presences(&got)[0];
    assert_eq!((p.attr("from"), p.attr("type")), (Some("pingy@conference.localhost/bob"), Some("unavailable")));
}

#[tokio::test]
async fn xep0045_7_5_private_message_rewritten_from_occupant_jid() {
    let server = server();
    let mut alice = create_room(&server, "pm", &[]).await;
    let (mut bob, _) = join(&server, "bob", "pm", "bob").await;
    alice.stanzas();
    bob.send(&server, message("pm@conference.localhost/alice", "psst")).await;
    let got = alice.stanzas();
    let m = got.iter().find(|s| s.name() == "message").expect("pm");
    assert_eq!(m.attr("from"), Some("pm@conference.localhost/bob"));
    assert!(m.get_child("x", MUC_USER).is_some());
    bob.send(&server, message("pm@conference.localhost/nobody", "psst")).await;
    assert_eq!(error_condition(&bob.stanzas()[0]).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn xep0313_room_archive_paging_and_xep0425_moderation_tombstones() {
    let server = server();
    let mut alice = create_room(&server, "log", &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        alice.send(&server, groupchat("log@conference.localhost", &format!("m{i}"))).await;
        let got = alice.stanzas();
        ids.push(got[0].get_child("stanza-id", "urn:xmpp:sid:0").unwrap().attr("id").unwrap().to_string());
    }
    let q = elem("query", "urn:xmpp:mam:2").with_attr("queryid", "q1").with_child(
        elem("set", "http://jabber.org/protocol/rsm")
            .with_child(elem("max", "http://jabber.org/protocol/rsm").with_text("2")),
    );
    alice.send(&server, iq("set", "mam1", Some("log@conference.localhost"), q)).await;
    let got = alice.stanzas();
    let results: Vec<&Element> = got.iter().filter(|s| s.name() == "message").collect();
    assert_eq!(results.len(), 2);
    let fin = got.iter().find(|s| s.name() == "iq").unwrap().get_child("fin", "urn:xmpp:mam:2").unwrap().clone();
    assert_eq!(fin.attr("complete"), Some("false"));

    let moderate = elem("moderate", "urn:xmpp:message-moderate:1")
        .with_attr("id", ids[1].as_str())
        .with_child(elem("retract", "urn:xmpp:message-retract:1"))
        .with_child(elem("reason", "urn:xmpp:message-moderate:1").with_text("spam"));
    alice.send(&server, iq("set", "mod", Some("log@conference.localhost"), moderate)).await;
    let got = alice.stanzas();
    let r = got.iter().find(|s| s.name() == "iq").unwrap();
    assert!(is_result(r), "{r:?}");
    let b = got.iter().find(|s| s.name() == "message").expect("retraction broadcast");
    assert_eq!(b.get_child("retract", "urn:xmpp:message-retract:1").and_then(|r| r.attr("id")), Some(ids[1].as_str()));
    let item = server.store.archive_get("log@conference.localhost", &ids[1]).await.unwrap().unwrap();
    assert!(item.retracted);
    assert!(!String::from_utf8_lossy(&item.stanza).contains("<body"), "the body is gone from the tombstone");
}

#[tokio::test]
async fn xep0045_persistent_room_survives_restart_and_temporary_room_vanishes() {
    let store: SharedStore = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let build = || {
        let cfg = config();
        let mut b = Server::builder(Arc::new(cfg.clone()), store.clone(), Arc::new(LocalSessions::new()));
        for m in kabar_modules::default_modules(&cfg) {
            b = b.module(m);
        }
        b.build().expect("server")
    };
    let server = build();
    let alice =
        create_room(&server, "keep", &[("muc#roomconfig_persistentroom", "1"), ("muc#roomconfig_roomname", "Kept")])
            .await;
    let tmp = create_room_as(&server, "bob", "tmp", &[]).await;
    let items = |r: Element| -> Vec<String> {
        r.get_child("query", "http://jabber.org/protocol/disco#items")
            .unwrap()
            .children()
            .filter_map(|i| i.attr("jid"))
            .map(str::to_string)
            .collect()
    };
    let mut carol = Client::online(&server, "carol@localhost/x");
    let r = carol
        .iq(&server, iq("get", "i0", Some(SERVICE), elem("query", "http://jabber.org/protocol/disco#items")))
        .await;
    assert_eq!(items(r), vec!["keep@conference.localhost", "tmp@conference.localhost"]);
    alice.close(&server).await;
    tmp.close(&server).await;
    let r = carol
        .iq(&server, iq("get", "i1", Some(SERVICE), elem("query", "http://jabber.org/protocol/disco#items")))
        .await;
    assert_eq!(items(r), vec!["keep@conference.localhost"], "the empty temporary room is gone");
    let server2 = build();
    let mut bob = Client::online(&server2, "bob@localhost/x");
    let r = bob
        .iq(&server2, iq("get", "items", Some(SERVICE), elem("query", "http://jabber.org/protocol/disco#items")))
        .await;
    assert_eq!(items(r), vec!["keep@conference.localhost"]);
    let r = bob
        .iq(
            &server2,
            iq(
                "get",
                "info",
                Some("keep@conference.localhost"),
                elem("query", "http://jabber.org/protocol/disco#info"),
            ),
        )
        .await;
    let q = r.get_child("query", "http://jabber.org/protocol/disco#info").unwrap();
    assert_eq!(
        q.get_child("identity", "http://jabber.org/protocol/disco#info").and_then(|i| i.attr("name")),
        Some("Kept")
    );
    assert!(q.children().any(|f| f.attr("var") == Some("muc_persistent")));
}
