//! XEP-0401 invites: token storage and lifecycle, XEP-0445 pre-authenticated registration,
//! XEP-0379 pre-authenticated subscription and the XEP-0050 invite command, in process over the
//! default modules.

mod common;

use std::net::IpAddr;

use common::*;
use kabar_core::time::unix_now;
use kabar_core::{Config, Server};
use kabar_modules::invite::{self, Expiry, InviteError, NewInvite, Status, NS_PARS};
use kabar_modules::register::NS_REGISTER;
use kabar_storage::Subscription;
use kabar_xml::{elem, Element, ElementExt};

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";

fn ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

async fn harness_with(config: Config) -> Harness {
    Harness::with_config(config.clone(), kabar_modules::default_modules(&config)).await
}

async fn harness() -> Harness {
    harness_with(Config::default()).await
}

fn user_invite(inviter: &str) -> NewInvite {
    NewInvite { inviter: Some(bare(inviter)), roster: true, limited: true, ..Default::default() }
}

fn condition(reply: &Element) -> Option<String> {
    let error = reply.get_child("error", NS_CLIENT)?;
    error.children().find(|c| c.ns() == STANZAS && c.name() != "text").map(|c| c.name().to_string())
}

fn preauth_iq(token: &str) -> Element {
    elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "pa1")
        .with_child(elem("preauth", NS_PARS).with_attr("token", token))
}

fn register_iq(user: &str, password: &str) -> Element {
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", "reg1").with_child(
        elem("query", NS_REGISTER)
            .with_child(elem("username", NS_REGISTER).with_text(user))
            .with_child(elem("password", NS_REGISTER).with_text(password)),
    )
}

/// One stream: `<preauth/>` then registration, as a XEP-0445 client does.
async fn preauth_and_register(server: &Server, token: &str, user: &str, password: &str) -> (Element, Element) {
    let mut stream_invite = None;
    let pre = invite::handle_pre_auth(server, ip(), &preauth_iq(token), &mut stream_invite).await;
    let reg = invite::handle_pre_auth(server, ip(), &register_iq(user, password), &mut stream_invite).await;
    (pre, reg)
}

async fn subscription(server: &Server, user: &str, contact: &str) -> Option<Subscription> {
    server.store.roster_item(user, contact).await.expect("store").map(|i| i.subscription)
}

#[tokio::test]
async fn xep0401_token_is_stored_only_as_its_sha256() {
    let h = harness().await;
    h.create_account("alice").await;
    let created = invite::create(&h.server.store, &h.server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    assert!(invite::plausible_token(&created.token));
    assert_eq!(created.invite.id, invite::token_id(&created.token));
    let stored = h.server.store.kv_list("", "invites").await.expect("list");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, created.invite.id);
    let value = String::from_utf8_lossy(&stored[0].1);
    assert!(!value.contains(&created.token), "the token itself is stored: {value}");
    assert_eq!(created.uri, format!("xmpp:alice@localhost?roster;preauth={};ibr=y", created.token));
    assert_eq!(created.landing_url, format!("https://localhost:5443/invite/{}", created.token));
    // Lookup goes through the hash; a wrong token or junk finds nothing.
    assert!(invite::find(&h.server.store, &created.token).await.expect("find").is_some());
    let mut wrong = created.token.clone();
    wrong.replace_range(0..1, if wrong.starts_with('a') { "b" } else { "a" });
    assert!(invite::find(&h.server.store, &wrong).await.expect("find").is_none());
    assert!(invite::find(&h.server.store, "../../etc/passwd").await.expect("find").is_none());
}

#[tokio::test]
async fn xep0445_4_preauth_refuses_unknown_expired_used_and_revoked_tokens_with_item_not_found() {
    let h = harness().await;
    h.create_account("alice").await;
    let server = &h.server;
    let mut stream_invite = None;
    let unknown =
        invite::handle_pre_auth(server, ip(), &preauth_iq("NoSuchToken0123456789abc"), &mut stream_invite).await;
    assert_eq!(unknown.attr("type"), Some("error"));
    assert_eq!(condition(&unknown).as_deref(), Some("item-not-found"));
    assert_eq!(stream_invite, None);

    // Expired: created "long ago" with a one-second lifetime.
    let old = NewInvite { expires_in_secs: Some(1), ..user_invite("alice@localhost") };
    let expired = invite::create(&server.store, &server.config, old, unix_now() - 10).await.expect("created");
    let reply = invite::handle_pre_auth(server, ip(), &preauth_iq(&expired.token), &mut stream_invite).await;
    assert_eq!(condition(&reply).as_deref(), Some("item-not-found"), "{reply:?}");

    // Revoked.
    let revoked = invite::create(&server.store, &server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    assert!(invite::revoke(&server.store, &revoked.invite.id).await.expect("revoke"));
    let reply = invite::handle_pre_auth(server, ip(), &preauth_iq(&revoked.token), &mut stream_invite).await;
    assert_eq!(condition(&reply).as_deref(), Some("item-not-found"));

    // Used: the single use goes to bob; the next stream is refused at <preauth/>.
    let once = invite::create(&server.store, &server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    let (pre, reg) = preauth_and_register(server, &once.token, "bob", "bob-password-1").await;
    assert_eq!(pre.attr("type"), Some("result"), "{pre:?}");
    assert_eq!(reg.attr("type"), Some("result"), "{reg:?}");
    let reply = invite::handle_pre_auth(server, ip(), &preauth_iq(&once.token), &mut None).await;
    assert_eq!(condition(&reply).as_deref(), Some("item-not-found"));
    let inv = invite::find(&server.store, &once.token).await.expect("find").expect("kept");
    assert_eq!((inv.uses, inv.status(unix_now())), (1, Status::UsedUp));
    assert_eq!(inv.invitees, vec!["bob@localhost".to_string()]);
}

#[tokio::test]
async fn xep0445_registration_with_token_works_while_open_registration_is_off_and_befriends_inviter() {
    let h = harness().await;
    assert!(!h.server.config.registration.enabled);
    let mut alice = h.login("alice@localhost/phone").await;
    h.roster_get("alice@localhost/phone", &mut alice).await;
    let created = invite::create(&h.server.store, &h.server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");

    // Without <preauth/> the same registration is refused (registration is closed).
    let mut none = None;
    let closed = invite::handle_pre_auth(&h.server, ip(), &register_iq("dave", "dave-password-1"), &mut none).await;
    assert_eq!(condition(&closed).as_deref(), Some("service-unavailable"));

    let (pre, reg) = preauth_and_register(&h.server, &created.token, "Dave", "dave-password-1").await;
    assert_eq!(pre.attr("type"), Some("result"));
    assert_eq!(reg.attr("type"), Some("result"), "{reg:?}");
    assert!(h.server.account_exists(&bare("dave@localhost")).await);
    assert_eq!(subscription(&h.server, "alice@localhost", "dave@localhost").await, Some(Subscription::Both));
    assert_eq!(subscription(&h.server, "dave@localhost", "alice@localhost").await, Some(Subscription::Both));
    let got = recv_all(&mut alice);
    let pushed = pushes(&got);
    assert!(
        pushed.iter().any(|i| i.attr("jid") == Some("dave@localhost") && i.attr("subscription") == Some("both")),
        "no roster push for dave: {got:?}"
    );
    // alice is online but not available (no presence sent): the notice waits offline. Make her
    // available and it arrives.
    h.send("alice@localhost/phone", presence(None, None)).await;
    let got = recv_all(&mut alice);
    assert!(
        got.iter().any(|s| s.name() == "message"
            && s.attr("from") == Some("localhost")
            && s.get_child("body", NS_CLIENT)
                .is_some_and(|b| b.text() == "dave@localhost joined via your invite. Say hello!")),
        "no joined notice: {got:?}"
    );
}

#[tokio::test]
async fn xep0445_invite_stays_usable_on_its_stream_after_expiry_but_not_after_it_was_used() {
    let h = harness().await;
    h.create_account("alice").await;
    let server = &h.server;
    let created = invite::create(&server.store, &server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    let mut first = None;
    let mut second = None;
    for s in [&mut first, &mut second] {
        let r = invite::handle_pre_auth(server, ip(), &preauth_iq(&created.token), s).await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    let ok = invite::handle_pre_auth(server, ip(), &register_iq("erin", "erin-password-1"), &mut first).await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    // The other stream validated the same single-use token earlier; it is used up now.
    let refused = invite::handle_pre_auth(server, ip(), &register_iq("frank", "frank-password-1"), &mut second).await;
    assert_eq!(condition(&refused).as_deref(), Some("not-authorized"), "{refused:?}");
    assert!(!server.account_exists(&bare("frank@localhost")).await);

    // An expired invite already accepted at <preauth/> is not refused for expiry (XEP-0445 §4).
    let short = NewInvite { expires_in_secs: Some(1), max_uses: Some(2), ..user_invite("alice@localhost") };
    let short = invite::create(&server.store, &server.config, short, unix_now()).await.expect("created");
    let mut stream = None;
    let r = invite::handle_pre_auth(server, ip(), &preauth_iq(&short.token), &mut stream).await;
    assert_eq!(r.attr("type"), Some("result"));
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = invite::handle_pre_auth(server, ip(), &register_iq("gina", "gina-password-1"), &mut stream).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // The web page checks expiry.
    let web = invite::register(server, ip(), &short.token, "hank", "hank-password-1", Expiry::Check).await;
    assert!(matches!(web, Err(InviteError::Unusable(Status::Expired))), "{web:?}");
}

#[tokio::test]
async fn xep0445_5_reserved_username_is_the_only_one_and_is_kept_from_others() {
    let h = harness_with({
        let mut c = Config::default();
        c.registration.enabled = true;
        c
    })
    .await;
    let server = &h.server;
    let new = NewInvite { username: Some("Juliet".into()), ..Default::default() };
    let created = invite::create(&server.store, &server.config, new, unix_now()).await.expect("created");
    assert_eq!(created.invite.username.as_deref(), Some("juliet"));
    assert_eq!(created.uri, format!("xmpp:juliet@localhost?register;preauth={}", created.token));
    // Open registration cannot take the reserved name …
    let open = kabar_modules::register::handle_pre_auth(server, ip(), &register_iq("juliet", "juliet-password")).await;
    assert_eq!(condition(&open).as_deref(), Some("conflict"), "{open:?}");
    // … nor can another invite or this invite under another name.
    let other = invite::create(
        &server.store,
        &server.config,
        NewInvite { username: Some("juliet".into()), ..Default::default() },
        unix_now(),
    )
    .await;
    assert!(matches!(other, Err(InviteError::UsernameTaken)), "{other:?}");
    let wrong = invite::register(server, ip(), &created.token, "romeo", "romeo-password", Expiry::Check).await;
    assert!(matches!(wrong, Err(InviteError::WrongUsername(_))), "{wrong:?}");
    let ok = invite::register(server, ip(), &created.token, "juliet", "juliet-password", Expiry::Check)
        .await
        .expect("registered");
    assert_eq!(ok.as_str(), "juliet@localhost");
    // Account-only: no roster was touched.
    assert!(server.store.roster("juliet@localhost").await.expect("roster").0.is_empty());
}

fn command(node: &str) -> Element {
    elem("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "cmd")
        .with_attr("to", "localhost")
        .with_child(elem("command", NS_COMMANDS).with_attr("node", node).with_attr("action", "execute"))
}

fn field(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}

#[tokio::test]
async fn xep0401_5_1_invite_command_answers_uri_and_landing_url_and_enforces_the_per_user_limit() {
    let mut config = Config::default();
    config.invites.max_active_per_user = 2;
    let h = harness_with(config).await;
    let mut alice = h.login("alice@localhost/phone").await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        h.send("alice@localhost/phone", command(invite::NODE_INVITE)).await;
        let got = recv_all(&mut alice);
        let reply = got.iter().find(|s| s.attr("id") == Some("cmd")).expect("answer");
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
        let cmd = reply.get_child("command", NS_COMMANDS).expect("command");
        assert_eq!(cmd.attr("status"), Some("completed"));
        let x = cmd.get_child("x", NS_DATA).expect("result form");
        assert_eq!(field(x, "FORM_TYPE").as_deref(), Some(invite::FORM_TYPE_INVITATION));
        let uri = field(x, "uri").expect("uri");
        let token = uri.split("preauth=").nth(1).and_then(|r| r.split(';').next()).expect("token in uri").to_string();
        assert_eq!(uri, format!("xmpp:alice@localhost?roster;preauth={token};ibr=y"));
        assert_eq!(field(x, "landing-url"), Some(format!("https://localhost:5443/invite/{token}")));
        assert!(field(x, "expire").is_some_and(|e| e.ends_with('Z')));
        tokens.push(token);
    }
    h.send("alice@localhost/phone", command(invite::NODE_INVITE)).await;
    let got = recv_all(&mut alice);
    let reply = got.iter().find(|s| s.attr("id") == Some("cmd")).expect("answer");
    assert_eq!(condition(reply).as_deref(), Some("resource-constraint"), "{reply:?}");
    // A used invite no longer counts.
    invite::register(&h.server, ip(), &tokens[0], "ivan", "ivan-password-1", Expiry::Check).await.expect("registered");
    h.send("alice@localhost/phone", command(invite::NODE_INVITE)).await;
    let got = recv_all(&mut alice);
    let reply = got.iter().find(|s| s.attr("id") == Some("cmd")).expect("answer");
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // Account-only invites are for configured admins only.
    h.send("alice@localhost/phone", command(invite::NODE_CREATE_ACCOUNT)).await;
    let got = recv_all(&mut alice);
    let reply = got.iter().find(|s| s.attr("id") == Some("cmd")).expect("answer");
    assert_eq!(condition(reply).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn xep0379_3_4_subscription_with_valid_token_is_approved_and_made_mutual() {
    let h = harness().await;
    let mut alice = h.login("alice@localhost/phone").await;
    let mut bob = h.login("bob@localhost/pc").await;
    h.roster_get("alice@localhost/phone", &mut alice).await;
    h.roster_get("bob@localhost/pc", &mut bob).await;
    h.send("alice@localhost/phone", presence(None, None)).await;
    h.send("bob@localhost/pc", presence(None, None)).await;
    recv_all(&mut alice);
    recv_all(&mut bob);
    let created = invite::create(&h.server.store, &h.server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    let subscribe = presence(Some("alice@localhost"), Some("subscribe"))
        .with_child(elem("preauth", NS_PARS).with_attr("token", created.token.as_str()));
    h.send("bob@localhost/pc", subscribe).await;
    let got = recv_all(&mut bob);
    assert!(got.iter().any(|s| is_presence(s, Some("subscribed"), "alice@localhost")), "not approved: {got:?}");
    let back =
        got.iter().find(|s| is_presence(s, Some("subscribe"), "alice@localhost")).expect("alice subscribes back");
    // bob's client approves, as a client that asked for the contact does.
    h.send("bob@localhost/pc", presence(Some("alice@localhost"), Some("subscribed"))).await;
    let _ = back;
    assert_eq!(subscription(&h.server, "alice@localhost", "bob@localhost").await, Some(Subscription::Both));
    assert_eq!(subscription(&h.server, "bob@localhost", "alice@localhost").await, Some(Subscription::Both));
    // alice was never asked.
    let got = recv_all(&mut alice);
    assert!(!got.iter().any(|s| is_presence(s, Some("subscribe"), "bob@localhost")), "alice was asked: {got:?}");
    // The single use is spent: carol's request with the same token goes to alice as usual.
    let mut carol = h.login("carol@localhost/x").await;
    let again = presence(Some("alice@localhost"), Some("subscribe"))
        .with_child(elem("preauth", NS_PARS).with_attr("token", created.token.as_str()));
    h.send("carol@localhost/x", again).await;
    assert!(!recv_all(&mut carol).iter().any(|s| is_presence(s, Some("subscribed"), "alice@localhost")));
    assert!(recv_all(&mut alice).iter().any(|s| is_presence(s, Some("subscribe"), "carol@localhost")));
}

#[tokio::test]
async fn xep0379_token_of_another_user_or_junk_does_not_approve() {
    let h = harness().await;
    let mut alice = h.login("alice@localhost/phone").await;
    h.send("alice@localhost/phone", presence(None, None)).await;
    let mut bob = h.login("bob@localhost/pc").await;
    h.create_account("carol").await;
    let carols = invite::create(&h.server.store, &h.server.config, user_invite("carol@localhost"), unix_now())
        .await
        .expect("created");
    recv_all(&mut alice);
    for token in [carols.token.as_str(), "junk", ""] {
        let s = presence(Some("alice@localhost"), Some("subscribe"))
            .with_child(elem("preauth", NS_PARS).with_attr("token", token));
        h.send("bob@localhost/pc", s).await;
    }
    assert!(!recv_all(&mut bob).iter().any(|s| is_presence(s, Some("subscribed"), "alice@localhost")));
    assert_ne!(subscription(&h.server, "alice@localhost", "bob@localhost").await, Some(Subscription::From));
    // carol's invite was not spent by a request to somebody else.
    let inv = invite::find(&h.server.store, &carols.token).await.expect("find").expect("exists");
    assert_eq!(inv.uses, 0);
}

#[tokio::test]
async fn xep0401_deleting_the_inviter_revokes_their_invites() {
    let h = harness().await;
    h.create_account("alice").await;
    let created = invite::create(&h.server.store, &h.server.config, user_invite("alice@localhost"), unix_now())
        .await
        .expect("created");
    kabar_core::accounts::delete(&h.server.store, &bare("alice@localhost")).await.expect("deleted");
    h.server.notify(kabar_core::Event::AccountDeleted { jid: &bare("alice@localhost"), roster: &[] }).await;
    let inv = invite::find(&h.server.store, &created.token).await.expect("find").expect("exists");
    assert_eq!(inv.status(unix_now()), Status::Revoked);
}

#[tokio::test]
async fn xep0401_5_4_create_account_command_asks_for_a_username_and_answers_a_register_uri_for_admins() {
    let mut config = Config::default();
    config.invites.admins = vec!["root@localhost".into()];
    let h = harness_with(config).await;
    let mut root = h.login("root@localhost/shell").await;
    h.send("root@localhost/shell", command(invite::NODE_CREATE_ACCOUNT)).await;
    let got = recv_all(&mut root);
    let reply = got.iter().find(|s| s.attr("id") == Some("cmd")).expect("answer");
    let cmd = reply.get_child("command", NS_COMMANDS).expect("command");
    assert_eq!(cmd.attr("status"), Some("executing"), "{reply:?}");
    let form = cmd.get_child("x", NS_DATA).expect("form");
    assert!(form.children().any(|f| f.attr("var") == Some("username")));
    let submit =
        elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", "cmd2").with_attr("to", "localhost").with_child(
            elem("command", NS_COMMANDS)
                .with_attr("node", invite::NODE_CREATE_ACCOUNT)
                .with_attr("action", "complete")
                .with_child(
                    elem("x", NS_DATA).with_attr("type", "submit").with_child(
                        elem("field", NS_DATA)
                            .with_attr("var", "username")
                            .with_child(elem("value", NS_DATA).with_text("Kim")),
                    ),
                ),
        );
    h.send("root@localhost/shell", submit).await;
    let got = recv_all(&mut root);
    let reply = got.iter().find(|s| s.attr("id") == Some("cmd2")).expect("answer");
    let cmd = reply.get_child("command", NS_COMMANDS).expect("command");
    assert_eq!(cmd.attr("status"), Some("completed"), "{reply:?}");
    let uri = field(cmd.get_child("x", NS_DATA).expect("result"), "uri").expect("uri");
    assert!(uri.starts_with("xmpp:kim@localhost?register;preauth="), "{uri}");
    let token = uri.rsplit('=').next().expect("token");
    let inv = invite::find(&h.server.store, token).await.expect("find").expect("stored");
    assert_eq!((inv.inviter, inv.username.as_deref(), inv.roster), (None, Some("kim"), false));
}
