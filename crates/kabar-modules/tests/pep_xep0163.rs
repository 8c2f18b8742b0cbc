//! XEP-0163 PEP (on XEP-0060), XEP-0223 publish-options, XEP-0049 private storage, XEP-0048/0402
//! bookmarks and XEP-0084/XEP-0398 avatars, through a real server with the default modules.

mod common;

use common::*;
use kabar_core::Config;
use kabar_modules::disco::caps_ver;
use kabar_modules::disco::Identity;
use kabar_xml::{Element, ElementExt};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

async fn harness() -> Harness {
    Harness::new(kabar_modules::default_modules(&Config::default())).await
}

fn options(fields: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (var, value) in fields {
        s.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    s.push_str("</x></publish-options>");
    s
}

fn publish(id: &str, node: &str, item_id: &str, payload: &str, opts: &str) -> Element {
    parse(&format!(
        "<iq xmlns='jabber:client' type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{item_id}'>{payload}</item></publish>{opts}</pubsub></iq>"
    ))
}

fn items(id: &str, to: &str, node: &str, extra: &str) -> Element {
    parse(&format!(
        "<iq xmlns='jabber:client' type='get' id='{id}' to='{to}'><pubsub xmlns='{PUBSUB}'><items node='{node}'{extra}/></pubsub></iq>"
    ))
}

/// Sends `iq` from `jid` and returns the answer with the same id.
async fn ask(h: &Harness, jid: &str, rx: &mut Rx, iq: Element) -> Element {
    let id = iq.attr("id").expect("id").to_string();
    h.send(jid, iq).await;
    let all = recv_all(rx);
    all.iter()
        .find(|s| s.name() == "iq" && s.attr("id") == Some(id.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no answer to {id} in {all:?}"))
}

fn condition(reply: &Element) -> (String, Option<String>) {
    assert_eq!(reply.attr("type"), Some("error"), "{reply:?}");
    let error = reply.get_child("error", NS_CLIENT).expect("error element");
    let cond = error
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .map(|c| c.name().to_string());
    let app = error
        .children()
        .find(|c| c.ns() == ERRORS)
        .map(|c| c.name().to_string());
    (cond.expect("defined condition"), app)
}

fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| {
            i.children()
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn notifications(stanzas: &[Element], node: &str) -> Vec<Element> {
    stanzas
        .iter()
        .filter(|s| s.name() == "message" && s.attr("type") == Some("headline"))
        .filter_map(|s| s.get_child("event", EVENT))
        .filter_map(|e| e.get_child("items", EVENT))
        .filter(|i| i.attr("node") == Some(node))
        .cloned()
        .collect()
}

/// Makes `jid` available with XEP-0115 caps announcing `features`, and answers the server's
/// disco#info query the way a client does. Returns what else the session received meanwhile.
async fn online_with_caps(h: &Harness, jid: &str, rx: &mut Rx, features: &[&str]) -> Vec<Element> {
    let ids = [Identity {
        category: "client",
        type_: "pc",
        lang: None,
        name: Some("test"),
    }];
    let ver = caps_ver(&ids, features);
    h.send(
        jid,
        parse(&format!(
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test' ver='{ver}'/></presence>"
        )),
    )
    .await;
    let got = recv_all(rx);
    let Some(query) = got
        .iter()
        .find(|s| s.name() == "iq" && s.attr("type") == Some("get"))
        .cloned()
    else {
        // The server knew this ver already (XEP-0115 §6.3 caching).
        return got;
    };
    let node = query
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.attr("node"))
        .unwrap();
    assert_eq!(node, format!("urn:test#{ver}"));
    let mut answer = format!(
        "<iq xmlns='jabber:client' type='result' id='{}' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'>\
         <identity category='client' type='pc' name='test'/>",
        query.attr("id").unwrap(),
        query.attr("from").unwrap()
    );
    for f in features {
        answer.push_str(&format!("<feature var='{f}'/>"));
    }
    answer.push_str("</query></iq>");
    h.send(jid, parse(&answer)).await;
    let mut rest: Vec<Element> = got
        .into_iter()
        .filter(|s| s.attr("id") != query.attr("id"))
        .collect();
    rest.extend(recv_all(rx));
    rest
}

#[tokio::test]
async fn xep0163_3_publish_autocreates_node_and_owner_reads_it() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/phone").await;
    let reply = ask(
        &h,
        "alice@localhost/phone",
        &mut a,
        publish(
            "p1",
            "http://jabber.org/protocol/nick",
            "n1",
            "<nick xmlns='http://jabber.org/protocol/nick'>Ali</nick>",
            "",
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let published = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish", PUBSUB))
        .expect("publish");
    assert_eq!(
        published
            .get_child("item", PUBSUB)
            .and_then(|i| i.attr("id")),
        Some("n1")
    );
    let reply = ask(
        &h,
        "alice@localhost/phone",
        &mut a,
        items(
            "i1",
            "alice@localhost",
            "http://jabber.org/protocol/nick",
            "",
        ),
    )
    .await;
    assert_eq!(item_ids(&reply), ["n1"]);
    let nick = reply
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap();
    assert_eq!(
        nick.get_child("nick", "http://jabber.org/protocol/nick")
            .map(|n| n.text())
            .as_deref(),
        Some("Ali")
    );
}

#[tokio::test]
async fn xep0060_6_5_9_presence_access_refuses_stranger_and_admits_contact() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    h.befriend("alice@localhost/a", "bob@localhost/b").await;
    let mut b = h.login("bob@localhost/b").await;
    let mut m = h.login("mallory@localhost/m").await;
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p",
            DEVICELIST,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>",
            "",
        ),
    )
    .await;

    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        items("s1", "alice@localhost", DEVICELIST, ""),
    )
    .await;
    assert_eq!(
        condition(&reply),
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );
    let reply = ask(
        &h,
        "bob@localhost/b",
        &mut b,
        items("s2", "alice@localhost", DEVICELIST, ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["current"]);
}

#[tokio::test]
async fn xep0060_4_5_open_bundle_is_readable_by_anyone_and_whitelist_by_owner_only() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let mut m = h.login("mallory@localhost/m").await;
    let bundle = "eu.siacs.conversations.axolotl.bundles:1";
    let opts = options(&[("pubsub#access_model", "open"), ("pubsub#max_items", "max")]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p",
            bundle,
            "current",
            "<bundle xmlns='eu.siacs.conversations.axolotl'/>",
            &opts,
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        items("o1", "alice@localhost", bundle, ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["current"]);

    let opts = options(&[("pubsub#access_model", "whitelist")]);
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "w",
            "urn:example:secret",
            "x",
            "<s xmlns='urn:example'/>",
            &opts,
        ),
    )
    .await;
    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        items("o2", "alice@localhost", "urn:example:secret", ""),
    )
    .await;
    assert_eq!(
        condition(&reply),
        ("not-allowed".into(), Some("closed-node".into()))
    );
}

#[tokio::test]
async fn xep0223_3_conflicting_publish_options_fail_with_precondition_not_met() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let node = "urn:xmpp:omemo:2:devices";
    let opts = options(&[("pubsub#access_model", "open")]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p1",
            node,
            "current",
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &opts,
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // Same options again: fine.
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p2",
            node,
            "current",
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &opts,
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let conflicting = options(&[("pubsub#access_model", "whitelist")]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p3",
            node,
            "other",
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &conflicting,
        ),
    )
    .await;
    assert_eq!(
        condition(&reply),
        ("conflict".into(), Some("precondition-not-met".into()))
    );
    // The refused item was not stored.
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i", "alice@localhost", node, ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["current"]);
}

#[tokio::test]
async fn xep0060_6_5_7_max_items_keeps_newest_and_retrieval_limits() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let opts = options(&[("pubsub#max_items", "2")]);
    for id in ["one", "two", "three"] {
        let reply = ask(
            &h,
            "alice@localhost/a",
            &mut a,
            publish(id, "urn:example:log", id, "<e xmlns='urn:example'/>", &opts),
        )
        .await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    }
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i", "alice@localhost", "urn:example:log", ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["three", "two"]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("j", "alice@localhost", "urn:example:log", " max_items='1'"),
    )
    .await;
    assert_eq!(item_ids(&reply), ["three"]);
}

#[tokio::test]
async fn xep0163_4_3_contact_with_notify_gets_last_item_and_notifications_stranger_does_not() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    h.befriend("alice@localhost/a", "bob@localhost/b").await;
    let mut b = h.login("bob@localhost/b").await;
    let mut m = h.login("mallory@localhost/m").await;
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p1",
            DEVICELIST,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>",
            "",
        ),
    )
    .await;

    let notify = format!("{DEVICELIST}+notify");
    let features = ["http://jabber.org/protocol/disco#info", notify.as_str()];
    // §4.3.3: the last published item arrives once the caps are known.
    let got = online_with_caps(&h, "bob@localhost/b", &mut b, &features).await;
    assert!(
        !got.iter().any(|s| s.name() == "iq"),
        "the disco#info query was answered"
    );
    let last = notifications(&got, DEVICELIST);
    assert_eq!(last.len(), 1, "{got:?}");
    online_with_caps(&h, "mallory@localhost/m", &mut m, &features).await;
    recv_all(&mut m);

    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p2",
            DEVICELIST,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='2'/></list>",
            "",
        ),
    )
    .await;
    let got = recv_all(&mut b);
    let n = notifications(&got, DEVICELIST);
    assert_eq!(n.len(), 1, "{got:?}");
    let item = n[0].get_child("item", EVENT).expect("item");
    assert_eq!(item.attr("id"), Some("current"));
    let from = got
        .iter()
        .find(|s| s.name() == "message")
        .and_then(|s| s.attr("from"));
    assert_eq!(from, Some("alice@localhost"));
    assert!(
        notifications(&recv_all(&mut m), DEVICELIST).is_empty(),
        "a stranger is not notified"
    );
}

#[tokio::test]
async fn xep0163_4_3_second_session_with_same_caps_needs_no_new_query() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let notify = "http://jabber.org/protocol/nick+notify";
    online_with_caps(&h, "alice@localhost/a", &mut a, &[notify]).await;
    let mut a2 = h.login("alice@localhost/a2").await;
    let ver = caps_ver(
        &[Identity {
            category: "client",
            type_: "pc",
            lang: None,
            name: Some("test"),
        }],
        &[notify],
    );
    h.send("alice@localhost/a2", parse(&format!("<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test' ver='{ver}'/></presence>"))).await;
    let got = recv_all(&mut a2);
    assert!(
        !got.iter().any(|s| s.name() == "iq"),
        "cached caps are not asked again: {got:?}"
    );
    recv_all(&mut a);
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p",
            "http://jabber.org/protocol/nick",
            "n",
            "<nick xmlns='http://jabber.org/protocol/nick'>A</nick>",
            "",
        ),
    )
    .await;
    assert_eq!(
        notifications(&recv_all(&mut a2), "http://jabber.org/protocol/nick").len(),
        1,
        "own other resource notified"
    );
}

#[tokio::test]
async fn xep0060_7_2_retract_notifies_and_only_owner_may_publish() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    h.befriend("alice@localhost/a", "bob@localhost/b").await;
    let mut b = h.login("bob@localhost/b").await;
    let node = "urn:example:n";
    online_with_caps(&h, "bob@localhost/b", &mut b, &[&format!("{node}+notify")]).await;
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("p", node, "x", "<e xmlns='urn:example'/>", ""),
    )
    .await;
    recv_all(&mut b);
    let retract = parse(&format!(
        "<iq xmlns='jabber:client' type='set' id='r'><pubsub xmlns='{PUBSUB}'><retract node='{node}' notify='true'><item id='x'/></retract></pubsub></iq>"
    ));
    let reply = ask(&h, "alice@localhost/a", &mut a, retract).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let n = notifications(&recv_all(&mut b), node);
    assert!(
        n.first()
            .and_then(|i| i.get_child("retract", EVENT))
            .is_some(),
        "{n:?}"
    );

    let mut forged = publish("f", node, "y", "<e xmlns='urn:example'/>", "");
    forged.set_attr_str("to", "alice@localhost");
    let reply = ask(&h, "bob@localhost/b", &mut b, forged).await;
    assert_eq!(condition(&reply).0, "forbidden");
}

#[tokio::test]
async fn xep0060_8_4_delete_and_8_5_purge() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let node = "urn:example:d";
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("p", node, "x", "<e xmlns='urn:example'/>", ""),
    )
    .await;
    let purge = parse(&format!("<iq xmlns='jabber:client' type='set' id='pg'><pubsub xmlns='{PUBSUB}#owner'><purge node='{node}'/></pubsub></iq>"));
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, purge)
            .await
            .attr("type"),
        Some("result")
    );
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i", "alice@localhost", node, ""),
    )
    .await;
    assert!(item_ids(&reply).is_empty(), "{reply:?}");
    let delete = parse(&format!("<iq xmlns='jabber:client' type='set' id='dl'><pubsub xmlns='{PUBSUB}#owner'><delete node='{node}'/></pubsub></iq>"));
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, delete)
            .await
            .attr("type"),
        Some("result")
    );
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("j", "alice@localhost", node, ""),
    )
    .await;
    assert_eq!(condition(&reply).0, "item-not-found");
}

#[tokio::test]
async fn xep0060_8_2_owner_reads_and_changes_node_configuration() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let node = "urn:example:c";
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("p", node, "x", "<e xmlns='urn:example'/>", ""),
    )
    .await;
    let get = parse(&format!("<iq xmlns='jabber:client' type='get' id='cg'><pubsub xmlns='{PUBSUB}#owner'><configure node='{node}'/></pubsub></iq>"));
    let reply = ask(&h, "alice@localhost/a", &mut a, get).await;
    let form = reply
        .get_child("pubsub", "http://jabber.org/protocol/pubsub#owner")
        .and_then(|p| p.get_child("configure", "http://jabber.org/protocol/pubsub#owner"))
        .and_then(|c| c.get_child("x", "jabber:x:data"))
        .expect("form");
    let access = form
        .children()
        .find(|f| f.attr("var") == Some("pubsub#access_model"))
        .expect("access field");
    assert_eq!(
        access
            .get_child("value", "jabber:x:data")
            .map(|v| v.text())
            .as_deref(),
        Some("presence")
    );
    let set = parse(&format!(
        "<iq xmlns='jabber:client' type='set' id='cs'><pubsub xmlns='{PUBSUB}#owner'><configure node='{node}'>\
         <x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub></iq>"
    ));
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, set).await.attr("type"),
        Some("result")
    );
    let mut m = h.login("mallory@localhost/m").await;
    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        items("i", "alice@localhost", node, ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["x"]);
}

#[tokio::test]
async fn xep0049_private_storage_round_trips_and_refuses_reserved_and_others() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let set = parse("<iq xmlns='jabber:client' type='set' id='s'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><x>1</x></prefs></query></iq>");
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, set).await.attr("type"),
        Some("result")
    );
    let get = parse("<iq xmlns='jabber:client' type='get' id='g'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>");
    let reply = ask(&h, "alice@localhost/a", &mut a, get).await;
    let prefs = reply
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("prefs", "urn:example:prefs"))
        .expect("prefs");
    assert_eq!(
        prefs
            .get_child("x", "urn:example:prefs")
            .map(|x| x.text())
            .as_deref(),
        Some("1")
    );

    let reserved = parse("<iq xmlns='jabber:client' type='set' id='r'><query xmlns='jabber:iq:private'><vCard xmlns='vcard-temp'/></query></iq>");
    assert_eq!(
        condition(&ask(&h, "alice@localhost/a", &mut a, reserved).await).0,
        "not-acceptable"
    );
    let empty = parse(
        "<iq xmlns='jabber:client' type='get' id='e'><query xmlns='jabber:iq:private'/></iq>",
    );
    assert_eq!(
        condition(&ask(&h, "alice@localhost/a", &mut a, empty).await).0,
        "not-acceptable"
    );

    let mut b = h.login("bob@localhost/b").await;
    let other = parse("<iq xmlns='jabber:client' type='get' id='o' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>");
    assert_eq!(
        condition(&ask(&h, "bob@localhost/b", &mut b, other).await).0,
        "forbidden"
    );
}

#[tokio::test]
async fn xep0402_5_3_bookmark_set_through_0048_private_storage_appears_in_0402_and_back() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let set = parse(
        "<iq xmlns='jabber:client' type='set' id='s'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
         <conference jid='room@conference.localhost' name='Room' autojoin='true'><nick>ali</nick></conference>\
         <url name='Site' url='https://example.org/'/></storage></query></iq>",
    );
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, set).await.attr("type"),
        Some("result")
    );
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i", "alice@localhost", "urn:xmpp:bookmarks:1", ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["room@conference.localhost"]);
    let conf = reply
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("conference", "urn:xmpp:bookmarks:1")
        .expect("0402 conference");
    assert_eq!(conf.attr("autojoin"), Some("true"));
    assert_eq!(
        conf.get_child("nick", "urn:xmpp:bookmarks:1")
            .map(|n| n.text())
            .as_deref(),
        Some("ali")
    );

    // A XEP-0402 publish shows through XEP-0048 (private storage and the legacy PEP node).
    let opts = options(&[
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p",
            "urn:xmpp:bookmarks:1",
            "other@conference.localhost",
            "<conference xmlns='urn:xmpp:bookmarks:1' name='Other' autojoin='false'/>",
            &opts,
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let get = parse("<iq xmlns='jabber:client' type='get' id='g'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>");
    let reply = ask(&h, "alice@localhost/a", &mut a, get).await;
    let storage = reply
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", "storage:bookmarks"))
        .expect("storage");
    let mut jids: Vec<&str> = storage
        .children()
        .filter(|c| c.name() == "conference")
        .filter_map(|c| c.attr("jid"))
        .collect();
    jids.sort();
    assert_eq!(
        jids,
        ["other@conference.localhost", "room@conference.localhost"]
    );
    assert!(storage
        .children()
        .any(|c| c.name() == "url" && c.attr("url") == Some("https://example.org/")));
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("l", "alice@localhost", "storage:bookmarks", ""),
    )
    .await;
    let legacy = reply
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("storage", "storage:bookmarks")
        .expect("legacy storage");
    assert_eq!(
        legacy
            .children()
            .filter(|c| c.name() == "conference")
            .count(),
        2
    );

    // Removing a room through XEP-0048 retracts it from XEP-0402.
    let set = parse("<iq xmlns='jabber:client' type='set' id='s2'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='other@conference.localhost' autojoin='false'/></storage></query></iq>");
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, set).await.attr("type"),
        Some("result")
    );
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i2", "alice@localhost", "urn:xmpp:bookmarks:1", ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["other@conference.localhost"]);

    // Nobody else reads them.
    let mut m = h.login("mallory@localhost/m").await;
    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        items("x", "alice@localhost", "urn:xmpp:bookmarks:1", ""),
    )
    .await;
    assert_eq!(condition(&reply).0, "not-allowed");
}

const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[tokio::test]
async fn xep0398_avatar_published_through_0084_appears_in_vcard_and_back() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .unwrap();
    let id = kabar_modules::avatar::sha1_hex(&bytes);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "d",
            "urn:xmpp:avatar:data",
            &id,
            &format!("<data xmlns='urn:xmpp:avatar:data'>{PNG}</data>"),
            &options(&[("pubsub#access_model", "open")]),
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let meta = format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id}' bytes='{}' type='image/png' width='1' height='1'/></metadata>", bytes.len());
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "m",
            "urn:xmpp:avatar:metadata",
            &id,
            &meta,
            &options(&[("pubsub#access_model", "open")]),
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");

    let mut b = h.login("bob@localhost/b").await;
    let get = parse("<iq xmlns='jabber:client' type='get' id='v' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>");
    let reply = ask(&h, "bob@localhost/b", &mut b, get).await;
    let photo = reply
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("PHOTO", "vcard-temp"))
        .expect("PHOTO mirrored");
    assert_eq!(
        photo
            .get_child("BINVAL", "vcard-temp")
            .map(|x| x.text())
            .as_deref(),
        Some(PNG)
    );
    assert_eq!(
        photo
            .get_child("TYPE", "vcard-temp")
            .map(|x| x.text())
            .as_deref(),
        Some("image/png")
    );

    // XEP-0398 §3: a vCard photo becomes the PEP avatar.
    let other = "R0lGODlhAQABAAAAACw=";
    let set = parse(&format!("<iq xmlns='jabber:client' type='set' id='vs'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/gif</TYPE><BINVAL>{other}</BINVAL></PHOTO></vCard></iq>"));
    assert_eq!(
        ask(&h, "alice@localhost/a", &mut a, set).await.attr("type"),
        Some("result")
    );
    let other_id = kabar_modules::avatar::sha1_hex(
        &base64::engine::general_purpose::STANDARD
            .decode(other)
            .unwrap(),
    );
    let reply = ask(
        &h,
        "bob@localhost/b",
        &mut b,
        items(
            "mi",
            "alice@localhost",
            "urn:xmpp:avatar:metadata",
            " max_items='1'",
        ),
    )
    .await;
    assert_eq!(item_ids(&reply), vec![other_id.as_str()]);
    let by_id = parse(&format!(
        "<iq xmlns='jabber:client' type='get' id='di' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
         <items node='urn:xmpp:avatar:data'><item id='{other_id}'/></items></pubsub></iq>"
    ));
    let reply = ask(&h, "bob@localhost/b", &mut b, by_id).await;
    assert_eq!(item_ids(&reply), vec![other_id.as_str()]);
}

#[tokio::test]
async fn xep0163_6_1_account_advertises_pep_identity_and_publish_options() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let get = parse("<iq xmlns='jabber:client' type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let reply = ask(&h, "alice@localhost/a", &mut a, get).await;
    let q = reply
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    assert!(q.children().any(|c| c.name() == "identity"
        && c.attr("category") == Some("pubsub")
        && c.attr("type") == Some("pep")));
    let features: Vec<&str> = q.children().filter_map(|c| c.attr("var")).collect();
    for f in [
        "http://jabber.org/protocol/pubsub#publish-options",
        "urn:xmpp:bookmarks:1#compat",
        "urn:xmpp:bookmarks:1#compat-pep",
        "urn:xmpp:pep-vcard-conversion:0",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
}

#[tokio::test]
async fn xep0060_6_1_explicit_subscription_follows_the_access_model() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let mut m = h.login("mallory@localhost/m").await;
    h.send("mallory@localhost/m", presence(None, None)).await;
    recv_all(&mut m);
    let subscribe = |id: &str, node: &str| {
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='{id}' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
             <subscribe node='{node}' jid='mallory@localhost'/></pubsub></iq>"
        ))
    };
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p1",
            "urn:example:private",
            "x",
            "<e xmlns='urn:example'/>",
            "",
        ),
    )
    .await;
    let reply = ask(
        &h,
        "mallory@localhost/m",
        &mut m,
        subscribe("s1", "urn:example:private"),
    )
    .await;
    assert_eq!(
        condition(&reply),
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );

    let opts = options(&[("pubsub#access_model", "open")]);
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p2",
            "urn:example:public",
            "first",
            "<e xmlns='urn:example'/>",
            &opts,
        ),
    )
    .await;
    h.send("mallory@localhost/m", subscribe("s2", "urn:example:public"))
        .await;
    let got = recv_all(&mut m);
    let reply = got
        .iter()
        .find(|s| s.attr("id") == Some("s2"))
        .expect("answer");
    let sub = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("subscription", PUBSUB))
        .expect("subscription");
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    // §6.1.7: the last item comes with the subscription.
    assert_eq!(
        notifications(&got, "urn:example:public").len(),
        1,
        "{got:?}"
    );

    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p3",
            "urn:example:public",
            "second",
            "<e xmlns='urn:example'/>",
            &opts,
        ),
    )
    .await;
    let n = notifications(&recv_all(&mut m), "urn:example:public");
    assert_eq!(n.len(), 1);
    assert_eq!(
        n[0].get_child("item", EVENT).and_then(|i| i.attr("id")),
        Some("second")
    );
    // Nothing for the node mallory could not subscribe to.
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p4",
            "urn:example:private",
            "y",
            "<e xmlns='urn:example'/>",
            "",
        ),
    )
    .await;
    assert!(notifications(&recv_all(&mut m), "urn:example:private").is_empty());
}

#[tokio::test]
async fn xep0402_5_3_compat_pep_resources_get_the_whole_legacy_storage_on_change() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    let mut p = h.login("alice@localhost/phone").await;
    online_with_caps(
        &h,
        "alice@localhost/phone",
        &mut p,
        &["storage:bookmarks+notify"],
    )
    .await;
    let opts = options(&[
        ("pubsub#access_model", "whitelist"),
        ("pubsub#max_items", "max"),
    ]);
    ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "p",
            "urn:xmpp:bookmarks:1",
            "r@conference.localhost",
            "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>",
            &opts,
        ),
    )
    .await;
    let got = recv_all(&mut p);
    let n = notifications(&got, "storage:bookmarks");
    assert_eq!(n.len(), 1, "{got:?}");
    let storage = n[0]
        .get_child("item", EVENT)
        .and_then(|i| i.get_child("storage", "storage:bookmarks"))
        .expect("storage");
    let conf = storage
        .get_child("conference", "storage:bookmarks")
        .expect("conference");
    assert_eq!(conf.attr("jid"), Some("r@conference.localhost"));
    assert_eq!(conf.attr("autojoin"), Some("true"));
}

#[tokio::test]
async fn pep_config_max_items_cap_bounds_every_node() {
    let mut config = Config::default();
    config.pep.max_items_cap = 2;
    let h = Harness::with_config(config.clone(), kabar_modules::default_modules(&config)).await;
    let mut a = h.login("alice@localhost/a").await;
    let opts = options(&[("pubsub#max_items", "1000")]);
    for id in ["1", "2", "3"] {
        let reply = ask(
            &h,
            "alice@localhost/a",
            &mut a,
            publish(
                id,
                "urn:example:capped",
                id,
                "<e xmlns='urn:example'/>",
                &opts,
            ),
        )
        .await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    }
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        items("i", "alice@localhost", "urn:example:capped", ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["3", "2"]);
    // "max" is the cap, so it matches the node's configuration.
    let max = options(&[("pubsub#max_items", "max")]);
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish(
            "4",
            "urn:example:capped",
            "4",
            "<e xmlns='urn:example'/>",
            &max,
        ),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

#[tokio::test]
async fn xep0060_7_1_3_oversized_and_payloadless_items_are_refused() {
    let mut config = Config::default();
    config.pep.max_item_bytes = 100;
    let h = Harness::with_config(config.clone(), kabar_modules::default_modules(&config)).await;
    let mut a = h.login("alice@localhost/a").await;
    let big = format!("<e xmlns='urn:example'>{}</e>", "x".repeat(200));
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("b", "urn:example:n", "x", &big, ""),
    )
    .await;
    assert_eq!(
        condition(&reply),
        ("not-acceptable".into(), Some("payload-too-big".into()))
    );
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("e", "urn:example:n", "x", "", ""),
    )
    .await;
    assert_eq!(
        condition(&reply),
        ("bad-request".into(), Some("payload-required".into()))
    );
}

#[tokio::test]
async fn xep0060_4_5_roster_access_admits_only_allowed_groups() {
    let h = harness().await;
    let mut a = h.login("alice@localhost/a").await;
    h.create_account("bob").await;
    h.create_account("carol").await;
    let mut b = h.login("bob@localhost/b").await;
    let mut c = h.login("carol@localhost/c").await;
    let roster_set = parse(
        "<iq xmlns='jabber:client' type='set' id='r'><query xmlns='jabber:iq:roster'>\
         <item jid='bob@localhost'><group>friends</group></item></query></iq>",
    );
    ask(&h, "alice@localhost/a", &mut a, roster_set).await;
    let roster_set = parse(
        "<iq xmlns='jabber:client' type='set' id='r2'><query xmlns='jabber:iq:roster'>\
         <item jid='carol@localhost'><group>work</group></item></query></iq>",
    );
    ask(&h, "alice@localhost/a", &mut a, roster_set).await;
    let opts = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>roster</value></field>\
         <field var='pubsub#roster_groups_allowed'><value>friends</value></field></x></publish-options>";
    let reply = ask(
        &h,
        "alice@localhost/a",
        &mut a,
        publish("p", "urn:example:r", "x", "<e xmlns='urn:example'/>", opts),
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let reply = ask(
        &h,
        "bob@localhost/b",
        &mut b,
        items("b", "alice@localhost", "urn:example:r", ""),
    )
    .await;
    assert_eq!(item_ids(&reply), ["x"]);
    let reply = ask(
        &h,
        "carol@localhost/c",
        &mut c,
        items("c", "alice@localhost", "urn:example:r", ""),
    )
    .await;
    assert_eq!(
        condition(&reply),
        ("not-authorized".into(), Some("not-in-roster-group".into()))
    );
}
