//! XEP-0030 service discovery, XEP-0115 server capabilities, XEP-0199 ping, XEP-0092 version and
//! RFC 3921 session establishment, through a real server.

mod features_harness;

use features_harness::*;
use kabar_modules::disco::{self, Identity, CAPS_NODE, NS_DISCO_INFO, NS_DISCO_ITEMS};
use kabar_xml::{elem, Element, ElementExt};
use tokio::sync::mpsc;

fn info_query(node: Option<&str>) -> Element {
    let mut q = elem("query", NS_DISCO_INFO);
    if let Some(node) = node {
        q.set_attr_str("node", node);
    }
    q
}

fn features_of(query: &Element) -> Vec<String> {
    query.children().filter(|c| c.name() == "feature").filter_map(|c| c.attr("var")).map(str::to_string).collect()
}

fn identities_of(query: &Element) -> Vec<(String, String, Option<String>)> {
    query
        .children()
        .filter(|c| c.name() == "identity")
        .map(|c| {
            (
                c.attr("category").unwrap_or("").to_string(),
                c.attr("type").unwrap_or("").to_string(),
                c.attr("name").map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn xep0030_3_1_server_info_has_server_im_identity_and_every_module_feature() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "d1", Some(DOMAIN), info_query(None))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.attr("from"), Some(DOMAIN));
    let query = reply.get_child("query", NS_DISCO_INFO).expect("query");
    // server/im first; modules may add their own (XEP-0363's store/file: the server takes slot requests).
    assert_eq!(
        identities_of(query),
        vec![("server".into(), "im".into(), Some("kabar".into())), ("store".into(), "file".into(), Some("HTTP File Upload".into()))]
    );
    let features = features_of(query);
    for f in [
        NS_DISCO_INFO,
        NS_DISCO_ITEMS,
        "urn:xmpp:ping",
        "jabber:iq:version",
        "vcard-temp",
        "urn:xmpp:blocking",
        "jabber:iq:last",
        "jabber:iq:register",
    ] {
        assert!(features.iter().any(|x| x == f), "missing {f} in {features:?}");
    }
    let expected: Vec<String> = server.server_features().iter().map(|s| s.to_string()).collect();
    assert_eq!(features, expected, "exactly the modules' features, sorted and unique");
}

#[tokio::test]
async fn xep0030_3_1_account_info_has_account_registered_identity_and_account_features() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "d2", Some("bob@localhost"), info_query(None))).await;
    assert!(is_result(&reply), "{reply:?}");
    let query = reply.get_child("query", NS_DISCO_INFO).expect("query");
    // XEP-0163 §6.1: the account is also its PEP service.
    assert_eq!(
        identities_of(query),
        vec![("account".into(), "registered".into(), None), ("pubsub".into(), "pep".into(), None)]
    );
    let features = features_of(query);
    assert!(features.iter().any(|f| f == "jabber:iq:last"), "{features:?}");
    assert!(features.iter().any(|f| f == NS_DISCO_INFO), "{features:?}");
    for f in server.account_features() {
        assert!(features.iter().any(|x| x == f), "missing account feature {f}");
    }
}

#[tokio::test]
async fn xep0030_info_for_missing_account_is_service_unavailable() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "d3", Some("nobody@localhost"), info_query(None))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
}

#[tokio::test]
async fn xep0030_4_server_items_list_hosted_services_and_connected_component_domains() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let items = |reply: Element| -> Vec<String> {
        let query = reply.get_child("query", NS_DISCO_ITEMS).expect("query");
        query.children().filter_map(|i| i.attr("jid")).map(str::to_owned).collect()
    };
    let hosted = server.hosted_domains();
    let reply = alice.iq(&server, iq("get", "i1", Some(DOMAIN), elem("query", NS_DISCO_ITEMS))).await;
    assert_eq!(items(reply), hosted, "only the hosted services before any component connects");

    let (tx, _rx) = mpsc::channel(8);
    assert!(server.register_component("bot.localhost", tx.clone()));
    let (tx2, _rx2) = mpsc::channel(8);
    assert!(server.register_component("gateway.localhost", tx2));
    let reply = alice.iq(&server, iq("get", "i2", Some(DOMAIN), elem("query", NS_DISCO_ITEMS))).await;
    let mut want = hosted.clone();
    want.extend(["bot.localhost".to_owned(), "gateway.localhost".to_owned()]);
    assert_eq!(items(reply), want);

    server.unregister_component("bot.localhost", &tx);
    let reply = alice.iq(&server, iq("get", "i3", Some(DOMAIN), elem("query", NS_DISCO_ITEMS))).await;
    let mut want = hosted;
    want.push("gateway.localhost".to_owned());
    assert_eq!(items(reply), want);
}

#[tokio::test]
async fn xep0030_unknown_nodes_are_item_not_found() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "n1", Some(DOMAIN), info_query(Some("nope")))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
    let reply =
        alice.iq(&server, iq("get", "n2", Some(DOMAIN), elem("query", NS_DISCO_ITEMS).with_attr("node", "nope"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
    let reply = alice.iq(&server, iq("get", "n3", Some("alice@localhost"), info_query(Some("x")))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
    let wrong_ver = format!("{CAPS_NODE}#notthever");
    let reply = alice.iq(&server, iq("get", "n4", Some(DOMAIN), info_query(Some(&wrong_ver)))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn xep0030_set_is_bad_request() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("set", "s1", Some(DOMAIN), info_query(None))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));
}

/// XEP-0115 §5.1 applied by a client to the server's disco#info must reproduce the advertised
/// `ver`, and §6.2: the `node#ver` query answers with the same identity and features.
#[tokio::test]
async fn xep0115_5_1_stream_feature_ver_verifies_against_disco_info_and_node_query() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");

    let c = disco::caps_feature(&server);
    assert_eq!((c.name(), c.ns().as_str()), ("c", "http://jabber.org/protocol/caps"));
    assert_eq!(c.attr("hash"), Some("sha-1"));
    assert_eq!(c.attr("node"), Some(CAPS_NODE));
    let ver = c.attr("ver").expect("ver").to_string();

    let reply = alice.iq(&server, iq("get", "c1", Some(DOMAIN), info_query(None))).await;
    let query = reply.get_child("query", NS_DISCO_INFO).unwrap();
    let ids = identities_of(query);
    let identities: Vec<Identity<'_>> =
        ids.iter().map(|(c, t, n)| Identity { category: c, type_: t, lang: None, name: n.as_deref() }).collect();
    let features = features_of(query);
    let feature_refs: Vec<&str> = features.iter().map(String::as_str).collect();
    // XEP-0115 §5.1 steps 6–8: the XEP-0128 forms (XEP-0363's max-file-size) are part of the hash.
    let forms: Vec<Element> = query.children().filter(|c| c.name() == "x" && c.ns() == "jabber:x:data").cloned().collect();
    assert!(!forms.is_empty(), "the upload form is missing from the server's disco#info");
    assert_eq!(disco::caps_ver_with_forms(&identities, &feature_refs, &forms), ver);

    let node = format!("{CAPS_NODE}#{ver}");
    let reply = alice.iq(&server, iq("get", "c2", Some(DOMAIN), info_query(Some(&node)))).await;
    assert!(is_result(&reply), "{reply:?}");
    let by_node = reply.get_child("query", NS_DISCO_INFO).unwrap();
    assert_eq!(by_node.attr("node"), Some(node.as_str()));
    assert_eq!(features_of(by_node), features);
    assert_eq!(identities_of(by_node), ids);
}

#[tokio::test]
async fn xep0199_4_2_ping_to_server_is_answered_with_empty_result() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "p1", Some(DOMAIN), elem("ping", "urn:xmpp:ping"))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.attr("from"), Some(DOMAIN));
    assert_eq!(reply.attr("to"), Some("alice@localhost/a"));
    assert_eq!(reply.children().count(), 0);
    // No 'to': answered by the server for the own account.
    let reply = alice.iq(&server, iq("get", "p2", None, elem("ping", "urn:xmpp:ping"))).await;
    assert!(is_result(&reply), "{reply:?}");
}

#[tokio::test]
async fn xep0199_ping_to_a_bare_jid_is_answered_by_the_server() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "p3", Some("bob@localhost"), elem("ping", "urn:xmpp:ping"))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.attr("from"), Some("bob@localhost"));
    let reply = alice.iq(&server, iq("get", "p4", Some("alice@localhost"), elem("ping", "urn:xmpp:ping"))).await;
    assert!(is_result(&reply), "{reply:?}");
}

#[tokio::test]
async fn xep0092_server_reports_name_and_version_but_no_os() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "v1", Some(DOMAIN), elem("query", "jabber:iq:version"))).await;
    assert!(is_result(&reply), "{reply:?}");
    let q = reply.get_child("query", "jabber:iq:version").expect("query");
    assert_eq!(q.get_child("name", "jabber:iq:version").map(|n| n.text()).as_deref(), Some("kabar"));
    assert_eq!(
        q.get_child("version", "jabber:iq:version").map(|n| n.text()).as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(q.get_child("os", "jabber:iq:version").is_none());
}

#[tokio::test]
async fn xep0092_version_of_an_account_is_not_answered_by_the_server() {
    let server = server();
    create_account(&server, "alice").await;
    create_account(&server, "bob").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let reply = alice.iq(&server, iq("get", "v2", Some("bob@localhost"), elem("query", "jabber:iq:version"))).await;
    assert_eq!(error_condition(&reply).as_deref(), Some("service-unavailable"));
}

#[tokio::test]
async fn rfc3921_3_session_request_gets_empty_result_and_feature_is_optional() {
    let server = server();
    create_account(&server, "alice").await;
    let mut alice = Client::connect(&server, "alice@localhost/a");
    let session_ns = "urn:ietf:params:xml:ns:xmpp-session";
    let reply = alice.iq(&server, iq("set", "sess1", None, elem("session", session_ns))).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(reply.children().count(), 0);
    let reply = alice.iq(&server, iq("set", "sess2", Some(DOMAIN), elem("session", session_ns))).await;
    assert!(is_result(&reply), "{reply:?}");

    let features = server.stream_features();
    let session = features.iter().find(|f| f.name() == "session" && f.ns() == session_ns).expect("session feature");
    assert!(session.has_child("optional", session_ns));
}
