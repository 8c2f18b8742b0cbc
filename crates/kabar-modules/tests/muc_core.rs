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
    alice.send(&server, groupchat("keep@conference.localhost", "before the restart")).await;
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
    // The owner is still the owner, and the history came back from the room's archive.
    bob.send(&server2, join_presence("keep@conference.localhost/bob", None)).await;
    let got = bob.stanzas();
    let hist: Vec<String> = got.iter().filter_map(|s| s.get_child("body", CLIENT)).map(|b| b.text()).collect();
    assert_eq!(hist, vec!["before the restart"]);
    let mut alice2 = Client::online(&server2, "alice@localhost/again");
    let r = alice2.iq(&server2, iq("get", "cfg", Some("keep@conference.localhost"), elem("query", MUC_OWNER))).await;
    assert!(is_result(&r), "{r:?}");
}

fn errors_in(stanzas: &[Element]) -> Vec<String> {
    stanzas.iter().filter(|s| s.attr("type") == Some("error")).filter_map(error_condition).collect()
}

#[tokio::test]
async fn xep0045_8_1_subject_needs_permission_and_comes_last_on_join() {
    let server = server();
    let alice = create_room(&server, "topic", &[]).await;
    let (mut bob, _) = join(&server, "bob", "topic", "bob").await;
    let subject = |text: &str| {
        elem("message", CLIENT)
            .with_attr("to", "topic@conference.localhost")
            .with_attr("type", "groupchat")
            .with_child(elem("subject", CLIENT).with_text(text))
    };
    bob.send(&server, subject("mine")).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["forbidden"]);
    alice.send(&server, subject("Rapat jam 10")).await;
    let got = bob.stanzas();
    assert_eq!(got[0].get_child("subject", CLIENT).map(|s| s.text()).as_deref(), Some("Rapat jam 10"));
    assert_eq!(got[0].attr("from"), Some("topic@conference.localhost/alice"));
    let (_carol, got) = join(&server, "carol", "topic", "carol").await;
    let last = got.last().unwrap();
    assert_eq!(last.get_child("subject", CLIENT).map(|s| s.text()).as_deref(), Some("Rapat jam 10"));
}

#[tokio::test]
async fn xep0045_7_2_10_full_room_refuses_with_service_unavailable() {
    let server = server();
    let _alice = create_room(&server, "tiny", &[("muc#roomconfig_maxusers", "1")]).await;
    let (_bob, got) = join(&server, "bob", "tiny", "bob").await;
    let err = got.iter().find(|s| s.attr("type") == Some("error")).expect("refused");
    assert_eq!(error_condition(err).as_deref(), Some("service-unavailable"));
    assert_eq!(error_type(err).as_deref(), Some("wait"));
}

#[tokio::test]
async fn xep0045_7_8_2_mediated_invitation_makes_member_and_decline_returns() {
    let server = server();
    let mut alice = create_room(&server, "inv", &[("muc#roomconfig_membersonly", "1")]).await;
    ensure_account(&server, "bob").await;
    let mut bob = Client::online(&server, "bob@localhost/x");
    let invite = elem("message", CLIENT).with_attr("to", "inv@conference.localhost").with_child(
        elem("x", MUC_USER).with_child(
            elem("invite", MUC_USER)
                .with_attr("to", "bob@localhost")
                .with_child(elem("reason", MUC_USER).with_text("ayo")),
        ),
    );
    alice.send(&server, invite).await;
    let got = bob.stanzas();
    let m = got.iter().find(|s| s.name() == "message").expect("invitation");
    assert_eq!(m.attr("from"), Some("inv@conference.localhost"));
    let inv = m.get_child("x", MUC_USER).and_then(|x| x.get_child("invite", MUC_USER)).expect("invite");
    assert_eq!(inv.attr("from"), Some("alice@localhost/a"));
    bob.send(&server, join_presence("inv@conference.localhost/bob", None)).await;
    assert!(errors_in(&bob.stanzas()).is_empty(), "the invitee became a member");
    let decline = elem("message", CLIENT)
        .with_attr("to", "inv@conference.localhost")
        .with_child(elem("x", MUC_USER).with_child(elem("decline", MUC_USER).with_attr("to", "alice@localhost/a")));
    bob.send(&server, decline).await;
    let got = alice.stanzas();
    let d =
        got.iter().find_map(|s| s.get_child("x", MUC_USER)?.get_child("decline", MUC_USER).cloned()).expect("decline");
    assert_eq!(d.attr("from"), Some("bob@localhost"));
    // A plain member may not invite when allowinvites is off.
    create_account(&server, "carol").await;
    let invite2 = elem("message", CLIENT)
        .with_attr("to", "inv@conference.localhost")
        .with_child(elem("x", MUC_USER).with_child(elem("invite", MUC_USER).with_attr("to", "carol@localhost")));
    bob.send(&server, invite2).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["forbidden"]);
}

#[tokio::test]
async fn xep0045_10_9_destroy_tells_occupants_and_room_is_gone() {
    let server = server();
    let mut alice = create_room(&server, "bye", &[("muc#roomconfig_persistentroom", "1")]).await;
    let (mut bob, _) = join(&server, "bob", "bye", "bob").await;
    let destroy = elem("query", MUC_OWNER).with_child(
        elem("destroy", MUC_OWNER)
            .with_attr("jid", "next@conference.localhost")
            .with_child(elem("reason", MUC_OWNER).with_text("moved")),
    );
    let r = bob.iq(&server, iq("set", "d0", Some("bye@conference.localhost"), destroy.clone())).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = alice.iq(&server, iq("set", "d1", Some("bye@conference.localhost"), destroy)).await;
    assert!(is_result(&r), "{r:?}");
    let got = bob.stanzas();
    let p = presences(&got)[0];
    let d = p.get_child("x", MUC_USER).and_then(|x| x.get_child("destroy", MUC_USER)).expect("destroy");
    assert_eq!(d.attr("jid"), Some("next@conference.localhost"));
    assert_eq!(d.get_child("reason", MUC_USER).map(|r| r.text()).as_deref(), Some("moved"));
    let info = bob
        .iq(
            &server,
            iq("get", "i", Some("bye@conference.localhost"), elem("query", "http://jabber.org/protocol/disco#info")),
        )
        .await;
    assert_eq!(error_condition(&info).as_deref(), Some("item-not-found"));
    assert!(server.store.kv_get(SERVICE, "muc-rooms", "bye").await.unwrap().is_none(), "stored room deleted");
}

#[tokio::test]
async fn xep0045_7_4_non_occupant_and_misaddressed_messages_get_errors() {
    let server = server();
    let _alice = create_room(&server, "guard", &[]).await;
    ensure_account(&server, "bob").await;
    let mut bob = Client::online(&server, "bob@localhost/x");
    bob.send(&server, groupchat("guard@conference.localhost", "from outside")).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["not-acceptable"]);
    bob.send(&server, groupchat("guard@conference.localhost/alice", "wrong address")).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["bad-request"]);
    bob.send(&server, groupchat("nosuch@conference.localhost", "x")).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["item-not-found"]);
    bob.send(&server, message("conference.localhost", "to the service")).await;
    assert_eq!(errors_in(&bob.stanzas()), vec!["service-unavailable"]);
}

#[tokio::test]
async fn xep0045_10_2_config_change_104_and_members_only_switch_removes_non_members_322() {
    let server = server();
    let mut alice = create_room(&server, "switch", &[]).await;
    let (mut bob, _) = join(&server, "bob", "switch", "bob").await;
    let r = alice
        .iq(
            &server,
            iq("set", "c", Some("switch@conference.localhost"), submit(&[("muc#roomconfig_membersonly", "1")])),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    let got = bob.stanzas();
    let note = got.iter().find(|s| s.name() == "message").expect("104 notice");
    assert_eq!(codes(note), vec!["104"]);
    let p = presences(&got)[0];
    assert_eq!(p.attr("type"), Some("unavailable"));
    assert_eq!(codes(p), vec!["110", "322"]);
    // Bad form values are refused and change nothing.
    let r = alice
        .iq(
            &server,
            iq("set", "c2", Some("switch@conference.localhost"), submit(&[("muc#roomconfig_whois", "everybody")])),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "c3",
                Some("switch@conference.localhost"),
                submit(&[("muc#roomconfig_passwordprotectedroom", "1")]),
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn xep0045_9_admin_may_not_touch_owners() {
    let server = server();
    let mut alice = create_room(&server, "ranks", &[]).await;
    let (mut bob, _) = join(&server, "bob", "ranks", "bob").await;
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "a",
                Some("ranks@conference.localhost"),
                admin_item(&[("jid", "bob@localhost"), ("affiliation", "admin")]),
            ),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    bob.stanzas();
    let r = bob
        .iq(
            &server,
            iq("set", "k", Some("ranks@conference.localhost"), admin_item(&[("nick", "alice"), ("role", "none")])),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    let r = bob
        .iq(
            &server,
            iq(
                "set",
                "o",
                Some("ranks@conference.localhost"),
                admin_item(&[("jid", "bob@localhost"), ("affiliation", "owner")]),
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    // An admin may manage members.
    let r = bob
        .iq(
            &server,
            iq(
                "set",
                "m",
                Some("ranks@conference.localhost"),
                admin_item(&[("jid", "carol@localhost"), ("affiliation", "member")]),
            ),
        )
        .await;
    assert!(is_result(&r), "{r:?}");
    // A participant may not read affiliation lists.
    let (mut dave, _) = join(&server, "dave", "ranks", "dave").await;
    let r = dave
        .iq(&server, iq("get", "l", Some("ranks@conference.localhost"), admin_item(&[("affiliation", "member")])))
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn xep0045_7_2_15_history_maxchars_and_seconds() {
    let server = server();
    let mut alice = create_room(&server, "hist", &[]).await;
    for body in ["satu", "dua", "tiga"] {
        alice.send(&server, groupchat("hist@conference.localhost", body)).await;
    }
    alice.stanzas();
    let bodies_for = |got: &[Element]| -> Vec<String> {
        got.iter().filter_map(|s| s.get_child("body", CLIENT)).map(|b| b.text()).collect()
    };
    for (user, attr, value, want) in [
        ("bob", "maxchars", "9", vec!["dua", "tiga"]),
        ("carol", "maxstanzas", "1", vec!["tiga"]),
        ("dave", "seconds", "3600", vec!["satu", "dua", "tiga"]),
        ("erin", "since", "2999-01-01T00:00:00Z", vec![]),
    ] {
        ensure_account(&server, user).await;
        let mut c = Client::online(&server, &format!("{user}@localhost/h"));
        let mut p = join_presence(&format!("hist@conference.localhost/{user}"), None);
        if let Some(x) = p.get_child_mut("x", MUC) {
            x.append_child(elem("history", MUC).with_attr(attr, value));
        }
        c.send(&server, p).await;
        assert_eq!(bodies_for(&c.stanzas()), want, "{attr}={value}");
    }
}

#[tokio::test]
async fn xep0425_v0_moderation_uses_fasten_and_non_moderator_is_refused() {
    let server = server();
    let mut alice = create_room(&server, "mod0", &[]).await;
    let (mut bob, _) = join(&server, "bob", "mod0", "bob").await;
    bob.send(&server, groupchat("mod0@conference.localhost", "oops")).await;
    let got = alice.stanzas();
    let m = got.iter().find(|s| s.name() == "message").expect("reflected");
    let id = m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap().attr("id").unwrap().to_string();
    bob.stanzas();
    let req = elem("apply-to", "urn:xmpp:fasten:0").with_attr("id", id.as_str()).with_child(
        elem("moderate", "urn:xmpp:message-moderate:0").with_child(elem("retract", "urn:xmpp:message-retract:0")),
    );
    let r = bob.iq(&server, iq("set", "m0", Some("mod0@conference.localhost"), req.clone())).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    let r = alice.iq(&server, iq("set", "m1", Some("mod0@conference.localhost"), req)).await;
    assert!(is_result(&r), "{r:?}");
    let got = bob.stanzas();
    let apply = got.iter().find_map(|s| s.get_child("apply-to", "urn:xmpp:fasten:0")).expect("v0 retraction");
    assert_eq!(apply.attr("id"), Some(id.as_str()));
    assert!(apply.get_child("moderated", "urn:xmpp:message-moderate:0").is_some());
    // The retracted message is out of the history.
    let (_carol, got) = join(&server, "carol", "mod0", "carol").await;
    assert!(!got.iter().any(|s| s.get_child("body", CLIENT).is_some()));
    let r = alice
        .iq(
            &server,
            iq(
                "set",
                "m2",
                Some("mod0@conference.localhost"),
                elem("moderate", "urn:xmpp:message-moderate:1")
                    .with_attr("id", "no-such-id")
                    .with_child(elem("retract", "urn:xmpp:message-retract:1")),
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn xep0045_10_1_room_creation_limited_per_user_and_by_creators_list() {
    let mut cfg = config();
    cfg.muc.max_rooms_per_user = 1;
    cfg.muc.creators = vec!["alice@localhost".into()];
    let (server, _) = server_with(cfg);
    let _alice = create_room(&server, "first", &[]).await;
    let mut alice2 = Client::online(&server, "alice@localhost/b");
    alice2.send(&server, join_presence("second@conference.localhost/alice", None)).await;
    assert_eq!(errors_in(&alice2.stanzas()), vec!["not-allowed"]);
    let (_bob, got) = join(&server, "bob", "bobs", "bob").await;
    assert_eq!(errors_in(&got), vec!["not-allowed"]);
}

#[tokio::test]
async fn xep0045_7_2_4_non_anonymous_room_shows_jids_to_all_with_status_100() {
    let server = server();
    let _alice = create_room(&server, "open", &[("muc#roomconfig_whois", "anyone")]).await;
    let (_bob, got) = join(&server, "bob", "open", "bob").await;
    let ps = presences(&got);
    assert_eq!(item_attr(ps[0], "jid").as_deref(), Some("alice@localhost/a"));
    assert!(codes(ps[1]).contains(&"100".to_string()));
}

#[tokio::test]
async fn xep0045_7_5_iq_between_occupants_is_passed_through_occupant_jids() {
    let server = server();
    let mut alice = create_room(&server, "iqs", &[]).await;
    let (mut bob, _) = join(&server, "bob", "iqs", "bob").await;
    alice.stanzas();
    bob.send(&server, iq("get", "v1", Some("iqs@conference.localhost/alice"), elem("query", "jabber:iq:version")))
        .await;
    let got = alice.stanzas();
    let req = got.iter().find(|s| s.name() == "iq").expect("forwarded");
    assert_eq!(req.attr("from"), Some("iqs@conference.localhost/bob"));
    assert_eq!(req.attr("to"), Some("alice@localhost/a"));
    let answer = elem("iq", CLIENT)
        .with_attr("type", "result")
        .with_attr("id", "v1")
        .with_attr("to", "iqs@conference.localhost/bob")
        .with_child(elem("query", "jabber:iq:version").with_child(elem("name", "jabber:iq:version").with_text("t")));
    alice.send(&server, answer).await;
    let got = bob.stanzas();
    let res = got.iter().find(|s| s.name() == "iq").expect("answer passed back");
    assert_eq!((res.attr("from"), res.attr("type")), (Some("iqs@conference.localhost/alice"), Some("result")));
}

/// The room side of a large channel, without sockets: 10,000 reader sessions (100 accounts × 100
/// resources) join, the owner posts 20 messages, and every session's queue holds every message.
/// Prints the room-side rate (posting time only: build once, clone per recipient, try_send).
#[tokio::test]
async fn channel_fanout_to_10000_sessions_reaches_every_queue() {
    let mut cfg = config();
    cfg.muc.max_occupants = 20_000;
    let (server, _) = server_with(cfg);
    let owner = create_room(
        &server,
        "wide",
        &[(kabar_modules::muc::config::FIELD_CHANNEL, "1"), ("muc#roomconfig_maxusers", "20000")],
    )
    .await;
    let mut readers = Vec::new();
    let t = std::time::Instant::now();
    for i in 0..10_000 {
        let mut c = Client::connect(&server, &format!("u{}@localhost/r{i}", i % 100));
        c.send(&server, join_presence(&format!("wide@conference.localhost/n{i}"), None)).await;
        c.drain();
        readers.push(c);
    }
    let joined = t.elapsed();
    let t = std::time::Instant::now();
    for k in 0..20 {
        owner.send(&server, groupchat("wide@conference.localhost", &format!("post-{k}"))).await;
    }
    let posting = t.elapsed();
    for c in &mut readers {
        let bodies: Vec<String> =
            c.stanzas().iter().filter_map(|s| s.get_child("body", CLIENT)).map(|b| b.text()).collect();
        assert_eq!(bodies, (0..20).map(|k| format!("post-{k}")).collect::<Vec<_>>(), "{}", c.jid);
    }
    println!(
        "10,000 joins in {joined:?}; 200,000 deliveries queued in {posting:?} ({:.0}/s room side)",
        200_000.0 / posting.as_secs_f64()
    );
}

#[tokio::test]
async fn xep0045_7_13_voice_request_reaches_moderators_and_approval_grants_voice() {
    let server = server();
    let mut alice = create_room(&server, "askvoice", &[("muc#roomconfig_moderatedroom", "1")]).await;
    let (mut bob, _) = join(&server, "bob", "askvoice", "bob").await;
    alice.stanzas();
    let request = elem("message", CLIENT).with_attr("to", "askvoice@conference.localhost").with_child(
        elem("x", DATA)
            .with_attr("type", "submit")
            .with_child(
                elem("field", DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_child(elem("value", DATA).with_text("http://jabber.org/protocol/muc#request")),
            )
            .with_child(
                elem("field", DATA)
                    .with_attr("var", "muc#role")
                    .with_child(elem("value", DATA).with_text("participant")),
            ),
    );
    bob.send(&server, request).await;
    let got = alice.stanzas();
    let form = got.iter().find_map(|s| s.get_child("x", DATA).cloned()).expect("the request reaches the moderator");
    let nick = form
        .children()
        .find(|f| f.attr("var") == Some("muc#roomnick"))
        .and_then(|f| f.get_child("value", DATA))
        .map(|v| v.text());
    assert_eq!(nick.as_deref(), Some("bob"));
    let approve = elem("message", CLIENT).with_attr("to", "askvoice@conference.localhost").with_child(
        elem("x", DATA)
            .with_attr("type", "submit")
            .with_child(
                elem("field", DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_child(elem("value", DATA).with_text("http://jabber.org/protocol/muc#request")),
            )
            .with_child(
                elem("field", DATA).with_attr("var", "muc#roomnick").with_child(elem("value", DATA).with_text("bob")),
            )
            .with_child(
                elem("field", DATA)
                    .with_attr("var", "muc#request_allow")
                    .with_child(elem("value", DATA).with_text("true")),
            ),
    );
    alice.send(&server, approve).await;
    let got = bob.stanzas();
    assert_eq!(item_attr(presences(&got)[0], "role").as_deref(), Some("participant"));
}
