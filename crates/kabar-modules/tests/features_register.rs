//! XEP-0077 in-band registration: pre-authentication account creation (and its anti-abuse
//! policy) and the post-authentication password change and account removal.

mod features_harness;

use std::net::IpAddr;

use features_harness::*;
use kabar_core::sessions::Outbound;
use kabar_core::Config;
use kabar_modules::register::{handle_pre_auth, pre_auth_feature, NS_REGISTER};
use kabar_xml::{elem, Element, ElementExt};

fn open_config() -> Config {
    let mut c = config();
    c.registration.enabled = true;
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn form(username: Option<&str>, password: Option<&str>) -> Element {
    let mut q = elem("query", NS_REGISTER);
    if let Some(u) = username {
        q.append_child(elem("username", NS_REGISTER).with_text(u));
    }
    if let Some(p) = password {
        q.append_child(elem("password", NS_REGISTER).with_text(p));
    }
    q
}

fn pre(typ: &str, id: &str, query: Element) -> Element {
    elem("iq", CLIENT).with_attr("type", typ).with_attr("id", id).with_child(query)
}

async fn register(server: &kabar_core::Server, from: &str, user: &str, password: &str) -> Element {
    handle_pre_auth(server, ip(from), &pre("set", "r", form(Some(user), Some(password)))).await
}

#[tokio::test]
async fn xep0077_registration_is_off_by_default_and_then_service_unavailable() {
    let server = server();
    assert!(!server.config.registration.enabled);
    assert!(pre_auth_feature(&server).is_none(), "no stream feature");
    let reply = handle_pre_auth(&server, ip("192.0.2.1"), &pre("get", "g1", elem("query", NS_REGISTER))).await;
    assert_eq!(reply.attr("id"), Some("g1"));
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
    let reply = register(&server, "192.0.2.1", "mallory", "long enough password").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
    assert!(!server.account_exists(&bare("mallory@localhost")).await);
}

#[tokio::test]
async fn xep0077_stream_feature_is_offered_only_when_enabled() {
    let (server, _) = server_with(open_config());
    let feature = pre_auth_feature(&server).expect("feature");
    assert_eq!((feature.name(), feature.ns().as_str()), ("register", "http://jabber.org/features/iq-register"));
}

#[tokio::test]
async fn xep0077_3_1_get_returns_the_registration_fields() {
    let (server, _) = server_with(open_config());
    let reply = handle_pre_auth(&server, ip("192.0.2.1"), &pre("get", "g2", elem("query", NS_REGISTER))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.attr("id"), Some("g2"));
    let q = reply.get_child("query", NS_REGISTER).expect("query");
    assert!(q.has_child("instructions", NS_REGISTER));
    assert!(q.has_child("username", NS_REGISTER));
    assert!(q.has_child("password", NS_REGISTER));
    assert!(!q.has_child("registered", NS_REGISTER));
}

#[tokio::test]
async fn xep0077_3_1_set_creates_the_account_and_a_taken_name_is_conflict() {
    let (server, _) = server_with(open_config());
    let reply = register(&server, "192.0.2.1", "Juliet", "balcony of verona").await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.children().count(), 0);
    assert!(server.account_exists(&bare("juliet@localhost")).await, "created under the normalised name");

    let reply = register(&server, "192.0.2.2", "juliet", "another password").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("conflict"));
    assert!(reply.get_child("query", NS_REGISTER).is_none(), "the form (with its password) is not echoed");
}

#[tokio::test]
async fn xep0077_reserved_usernames_are_refused_case_insensitively_as_conflict() {
    let (server, _) = server_with(open_config());
    for name in ["admin", "Admin", "ROOT", "postmaster"] {
        let reply = register(&server, "192.0.2.1", name, "long enough password").await;
        assert_eq!(error_condition(&reply).as_deref(), Some("conflict"), "{name}");
    }
    assert!(!server.account_exists(&bare("admin@localhost")).await);
}

#[tokio::test]
async fn xep0077_3_1_short_or_missing_password_and_missing_username_are_not_acceptable() {
    let (server, _) = server_with(open_config());
    let min = server.config.registration.min_password_length;
    let reply = register(&server, "192.0.2.1", "romeo", &"x".repeat(min - 1)).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    let reply = register(&server, "192.0.2.1", "romeo", "").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    for q in [form(Some("romeo"), None), form(None, Some("long enough password"))] {
        let reply = handle_pre_auth(&server, ip("192.0.2.1"), &pre("set", "r", q)).await;
        assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    }
    assert!(!server.account_exists(&bare("romeo@localhost")).await);
    // Exactly the minimum is fine.
    let reply = register(&server, "192.0.2.1", "romeo", &"x".repeat(min)).await;
    assert!(is_result(&reply), "{reply:?}");
}

#[tokio::test]
async fn xep0077_invalid_usernames_are_not_acceptable() {
    let (server, _) = server_with(open_config());
    for name in ["a@b", "romeo@localhost", "x/y", "", "bad name\u{7}"] {
        let reply = register(&server, "192.0.2.1", name, "long enough password").await;
        assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"), "{name:?}");
    }
}

#[tokio::test]
async fn xep0077_remove_before_authentication_is_not_authorized() {
    let (server, _) = server_with(open_config());
    let q = elem("query", NS_REGISTER).with_child(elem("remove", NS_REGISTER));
    let reply = handle_pre_auth(&server, ip("192.0.2.1"), &pre("set", "r", q)).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-authorized"));
}

#[tokio::test]
async fn xep0077_registrations_are_rate_limited_per_ip_and_ipv6_per_64() {
    let mut cfg = open_config();
    cfg.registration.per_ip_per_hour = 2;
    let (server, _) = server_with(cfg);
    assert!(is_result(&register(&server, "198.51.100.7", "user1", "long enough password").await));
    assert!(is_result(&register(&server, "198.51.100.7", "user2", "long enough password").await));
    let reply = register(&server, "198.51.100.7", "user3", "long enough password").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("policy-violation"));
    assert_eq!(error_type(&reply).as_deref(), Some("wait"));
    assert!(!server.account_exists(&bare("user3@localhost")).await);
    // Failed attempts did not use up another address's allowance.
    assert!(is_result(&register(&server, "198.51.100.8", "user3", "long enough password").await));

    assert!(is_result(&register(&server, "2001:db8:1:2::1", "v6a", "long enough password").await));
    assert!(is_result(&register(&server, "2001:db8:1:2::2", "v6b", "long enough password").await));
    let reply = register(&server, "2001:db8:1:2:ffff::3", "v6c", "long enough password").await;
    assert_eq!(error_condition(&reply).as_deref(), Some("policy-violation"), "same /64");
    assert!(is_result(&register(&server, "2001:db8:1:3::1", "v6c", "long enough password").await));
}

#[tokio::test]
async fn xep0077_conflicts_and_bad_input_do_not_consume_the_rate_limit() {
    let mut cfg = open_config();
    cfg.registration.per_ip_per_hour = 1;
    let (server, _) = server_with(cfg);
    create_account(&server, "taken").await;
    for _ in 0..3 {
        let reply = register(&server, "203.0.113.9", "taken", "long enough password").await;
        assert_eq!(error_condition(&reply).as_deref(), Some("conflict"));
        let reply = register(&server, "203.0.113.9", "fresh", "short").await;
        assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    }
    assert!(is_result(&register(&server, "203.0.113.9", "fresh", "long enough password").await));
}

#[tokio::test]
async fn xep0077_3_1_authenticated_get_says_registered_with_username() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "q1", Some(DOMAIN), elem("query", NS_REGISTER))).await;
    assert!(is_result(&reply), "{reply:?}");
    let q = reply.get_child("query", NS_REGISTER).unwrap();
    assert!(q.has_child("registered", NS_REGISTER));
    assert_eq!(q.get_child("username", NS_REGISTER).map(|u| u.text()).as_deref(), Some("alice"));
    assert!(!q.has_child("password", NS_REGISTER));
}

#[tokio::test]
async fn xep0077_3_3_password_change_for_own_account_only_with_min_length() {
    let server = server();
    let alice_jid = create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let before = server.store.credentials(alice_jid.as_str()).await.unwrap().unwrap();

    let reply = alice.iq(&server, iq("set", "c1", Some(DOMAIN), form(Some("alice"), Some("short")))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    let reply = alice.iq(&server, iq("set", "c2", Some(DOMAIN), form(Some("alice"), Some("")))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"), "never an empty password");
    let reply = alice.iq(&server, iq("set", "c3", Some(DOMAIN), form(Some("bob"), Some("a new long password")))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    let reply = alice.iq(&server, iq("set", "c4", Some(DOMAIN), form(Some("alice"), None))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));
    assert_eq!(server.store.credentials(alice_jid.as_str()).await.unwrap().unwrap(), before, "unchanged");

    let reply =
        alice.iq(&server, iq("set", "c5", Some(DOMAIN), form(Some("alice"), Some("a new long password")))).await;
    assert!(is_result(&reply), "{reply:?}");
    let after = server.store.credentials(alice_jid.as_str()).await.unwrap().unwrap();
    assert_ne!(after, before, "changed");
    // With no 'to' (the own account) and no username, too.
    let reply = alice.iq(&server, iq("set", "c6", None, form(None, Some("yet another password")))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_ne!(server.store.credentials(alice_jid.as_str()).await.unwrap().unwrap(), after);
}

#[tokio::test]
async fn xep0077_3_2_remove_deletes_account_answers_then_closes_every_session() {
    let (server, probe) = server_with(config());
    let alice_jid = create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut a = Client::online(&server, "alice@localhost/a");
    let mut b = Client::online(&server, "alice@localhost/b");
    let mut bob = Client::connect(&server, "bob@localhost/x");
    server.store.kv_put(alice_jid.as_str(), "vcard", "", b"<vCard xmlns='vcard-temp'/>").await.unwrap();

    // Someone else cannot remove alice.
    let remove = || elem("query", NS_REGISTER).with_child(elem("remove", NS_REGISTER));
    let reply = bob.iq(&server, iq("set", "x1", Some("alice@localhost"), remove())).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    assert!(server.account_exists(&alice_jid).await);

    // <remove/> must be alone.
    let reply = a
        .iq(&server, iq("set", "x2", None, remove().with_child(elem("username", NS_REGISTER).with_text("alice"))))
        .await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));

    a.send(&server, iq("set", "x3", None, remove())).await;
    let items = a.drain();
    let result_at = items
        .iter()
        .position(|o| matches!(o, Outbound::Stanza(s) if s.attr("id") == Some("x3") && is_result(s)))
        .expect("result");
    let close_at =
        items.iter().position(|o| matches!(o, Outbound::Close { condition: "not-authorized", .. })).expect("close");
    assert!(result_at < close_at, "the result is written before the stream closes");
    assert!(b.drain().iter().any(|o| matches!(o, Outbound::Close { condition: "not-authorized", .. })));

    assert!(!server.account_exists(&alice_jid).await);
    assert!(server.store.kv_get(alice_jid.as_str(), "vcard", "").await.unwrap().is_none());
    assert_eq!(probe.deleted.lock().unwrap().as_slice(), ["alice@localhost"], "modules were told");
}
