//! XEP-0313 queries: the form, XEP-0059 paging, filters, XEP-0431 full-text search, metadata,
//! access control and errors.

mod common;
mod mam_common;

use common::*;
use kabar_modules::disco::NS_DISCO_INFO;
use kabar_modules::mam::{self, FULLTEXT_FIELD, MAX_PAGE, NS_DATA, NS_MAM};
use kabar_xml::{elem, Element, ElementExt};
use mam_common::*;

/// Alice sends Bob `n` messages "msg 0" … "msg n-1"; returns a logged-in Alice.
async fn alice_sent(h: &Harness, n: usize) -> Rx {
    let a = online(h, ALICE).await;
    let _b = online(h, BOB).await;
    for i in 0..n {
        h.send(ALICE, chat("bob@localhost", &format!("m{i}"), &format!("msg {i}"))).await;
    }
    a
}

fn msgs(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("msg {i}")).collect()
}

#[tokio::test]
async fn xep0313_7_account_advertises_mam_extended_sid_and_fulltext() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let disco = elem("iq", NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "d")
        .with_attr("to", "alice@localhost")
        .with_child(elem("query", NS_DISCO_INFO));
    let ans = ask(&h, ALICE, &mut a, disco).await;
    let features: Vec<&str> = ans
        .iq
        .get_child("query", NS_DISCO_INFO)
        .expect("disco result")
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [NS_MAM, "urn:xmpp:mam:2#extended", "urn:xmpp:sid:0", "urn:xmpp:fulltext:0"] {
        assert!(features.contains(&f), "missing {f}: {features:?}");
    }
}

#[tokio::test]
async fn xep0313_4_1_5_query_form_lists_the_fields_including_fulltext() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let get = elem("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "f").with_child(elem("query", NS_MAM));
    let ans = ask(&h, ALICE, &mut a, get).await;
    let x = ans.iq.get_child("query", NS_MAM).and_then(|q| q.get_child("x", NS_DATA)).expect("form");
    assert_eq!(x.attr("type"), Some("form"));
    let fields: Vec<(&str, &str)> =
        x.children().map(|f| (f.attr("var").unwrap_or(""), f.attr("type").unwrap_or(""))).collect();
    for expected in [
        ("FORM_TYPE", "hidden"),
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "list-multi"),
        (FULLTEXT_FIELD, "text-single"),
    ] {
        assert!(fields.contains(&expected), "missing {expected:?}: {fields:?}");
    }
    assert!(x.children().all(|f| !f.has_child("required", NS_DATA)), "no field is required");
}

#[tokio::test]
async fn xep0313_4_2_results_carry_queryid_delay_and_precede_the_fin() {
    let h = server().await;
    let mut a = alice_sent(&h, 2).await;
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!(ans.iq.attr("type"), Some("result"));
    for m in &ans.results {
        assert_eq!(m.attr("to"), Some(ALICE), "results go to the querying resource");
        assert_eq!(m.attr("from"), Some("alice@localhost"), "from the archive (the bare JID)");
        assert_eq!(result_of(m).attr("queryid"), Some("qid"));
        let stamp = delay_stamp(m);
        assert!(mam::parse_timestamp(&stamp).is_some(), "XEP-0082 stamp: {stamp}");
    }
    assert_eq!(ans.bodies(), msgs(0..2));
    assert!(ans.complete());
    assert_eq!((ans.first(), ans.last()), (Some(ans.ids()[0].clone()), Some(ans.ids()[1].clone())));
    assert_eq!(ans.count(), Some(2));
    // Other resources get nothing.
    let mut laptop = online(&h, "alice@localhost/laptop").await;
    query(&h, ALICE, &mut a, &[], None).await;
    assert!(recv_all(&mut laptop).is_empty());
}

#[tokio::test]
async fn xep0059_paging_forward_53_messages_in_pages_of_10_each_once_in_order() {
    let h = server().await;
    let mut a = alice_sent(&h, 53).await;
    let mut bodies = Vec::new();
    let mut all_ids = Vec::new();
    let mut rsm = Rsm::max(10);
    let mut sizes = Vec::new();
    loop {
        let ans = query(&h, ALICE, &mut a, &[], Some(&rsm)).await;
        assert_eq!(ans.count(), Some(53));
        sizes.push(ans.results.len());
        bodies.extend(ans.bodies());
        all_ids.extend(ans.ids());
        assert_eq!(ans.last(), ans.ids().last().cloned(), "<last/> is the last result");
        if ans.complete() {
            break;
        }
        assert_eq!(ans.fin().attr("complete"), Some("false"));
        rsm.after = ans.last();
        assert!(sizes.len() < 10);
    }
    assert_eq!(sizes, [10, 10, 10, 10, 10, 3]);
    assert_eq!(bodies, msgs(0..53), "every message once, oldest first");
    let mut unique = all_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 53);
}

#[tokio::test]
async fn xep0059_paging_backward_from_the_last_page_each_once() {
    let h = server().await;
    let mut a = alice_sent(&h, 53).await;
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut rsm = Rsm { max: Some(10), before: Some(String::new()), ..Rsm::default() };
    loop {
        let ans = query(&h, ALICE, &mut a, &[], Some(&rsm)).await;
        assert_eq!(ans.count(), Some(53));
        pages.push(ans.bodies());
        if ans.complete() {
            break;
        }
        rsm.before = ans.first();
        assert!(pages.len() < 10);
    }
    assert_eq!(pages[0], msgs(43..53), "empty <before/>: the last page, in chronological order");
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 10, 10, 10, 3]);
    let all: Vec<String> = pages.into_iter().rev().flatten().collect();
    assert_eq!(all, msgs(0..53));
}

#[tokio::test]
async fn xep0313_4_3_flip_page_reverses_only_the_order() {
    let h = server().await;
    let mut a = alice_sent(&h, 5).await;
    let plain =
        query(&h, ALICE, &mut a, &[], Some(&Rsm { max: Some(3), before: Some(String::new()), ..Rsm::default() })).await;
    let mut iq = query_iq("f", None, &[], Some(&Rsm { max: Some(3), before: Some(String::new()), ..Rsm::default() }));
    iq.get_child_mut("query", NS_MAM).expect("query").append_child(elem("flip-page", NS_MAM));
    let flipped = ask(&h, ALICE, &mut a, iq).await;
    assert_eq!(plain.bodies(), msgs(2..5));
    let mut reversed = plain.bodies();
    reversed.reverse();
    assert_eq!(flipped.bodies(), reversed, "same page, newest first");
    assert_eq!(
        (flipped.first(), flipped.last()),
        (plain.first(), plain.last()),
        "first/last still name the page's oldest/newest"
    );
    assert_eq!(flipped.complete(), plain.complete());
}

#[tokio::test]
async fn xep0313_4_1_1_filter_with_bare_and_full_jid() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    let _b2 = online(&h, "bob@localhost/phone").await;
    let _c = online(&h, "carol@localhost/x").await;
    h.send(ALICE, message("bob@localhost", "to bob")).await;
    h.send(ALICE, message("carol@localhost", "to carol")).await;
    h.send(BOB, message("alice@localhost", "from bob pc")).await;
    h.send("bob@localhost/phone", message("alice@localhost", "from bob phone")).await;
    h.send("carol@localhost/x", message("alice@localhost", "from carol")).await;
    let ans = query(&h, ALICE, &mut a, &[("with", &["Bob@LocalHost"])], None).await;
    assert_eq!(
        ans.bodies(),
        ["to bob", "from bob pc", "from bob phone"],
        "bare: both directions, all resources, normalised"
    );
    let ans = query(&h, ALICE, &mut a, &[("with", &["bob@localhost/phone"])], None).await;
    assert_eq!(ans.bodies(), ["from bob phone"], "full: just that resource");
    let ans = query(&h, ALICE, &mut a, &[("with", &["carol@localhost"])], Some(&Rsm::max(1))).await;
    assert_eq!((ans.bodies(), ans.count(), ans.complete()), (vec!["to carol".to_owned()], Some(2), false));
}

#[tokio::test]
async fn xep0313_4_1_2_filter_start_and_end_are_inclusive() {
    let h = server().await;
    let mut a = alice_sent(&h, 6).await;
    let all = query(&h, ALICE, &mut a, &[], None).await;
    let stamps: Vec<String> = all.results.iter().map(delay_stamp).collect();
    let (s, e) = (stamps[1].as_str(), stamps[4].as_str());
    let ans = query(&h, ALICE, &mut a, &[("start", &[s]), ("end", &[e])], None).await;
    assert_eq!(ans.bodies(), msgs(1..5));
    let ans = query(&h, ALICE, &mut a, &[("start", &[s])], None).await;
    assert_eq!(ans.bodies(), msgs(1..6));
    let ans = query(&h, ALICE, &mut a, &[("end", &[e])], None).await;
    assert_eq!(ans.bodies(), msgs(0..5));
    let ans = query(
        &h,
        ALICE,
        &mut a,
        &[("start", &["2000-01-01T00:00:00Z"]), ("end", &["2000-01-02T00:00:00+01:00"])],
        None,
    )
    .await;
    assert!(ans.results.is_empty() && ans.complete());
    let ans =
        query(&h, ALICE, &mut a, &[("end", &["2000-01-01T00:00:00Z"]), ("start", &["1999-12-31T00:00:00Z"])], None)
            .await;
    assert_eq!(ans.count(), Some(0));
}

#[tokio::test]
async fn xep0313_4_1_3_after_id_before_id_and_ids() {
    let h = server().await;
    let mut a = alice_sent(&h, 6).await;
    let ids = query(&h, ALICE, &mut a, &[], None).await.ids();
    let ans =
        query(&h, ALICE, &mut a, &[("after-id", &[ids[1].as_str()]), ("before-id", &[ids[4].as_str()])], None).await;
    assert_eq!(ans.bodies(), msgs(2..4), "exclusive bounds");
    // before-id does not page backward (unlike RSM <before/>): the oldest of the range come first.
    let ans = query(&h, ALICE, &mut a, &[("before-id", &[ids[4].as_str()])], Some(&Rsm::max(2))).await;
    assert_eq!((ans.bodies(), ans.complete()), (msgs(0..2), false));
    let ans = query(&h, ALICE, &mut a, &[("ids", &[ids[5].as_str(), ids[0].as_str()])], None).await;
    assert_eq!(ans.bodies(), ["msg 0", "msg 5"], "single-item retrieval, in archive order");
    for fields in
        [vec![("after-id", ["no-such-id"])], vec![("before-id", ["no-such-id"])], vec![("ids", ["no-such-id"])]]
    {
        let f: Vec<(&str, &[&str])> = fields.iter().map(|(k, v)| (*k, &v[..])).collect();
        let ans = query(&h, ALICE, &mut a, &f, None).await;
        assert_eq!(ans.error_condition().as_deref(), Some("item-not-found"), "{fields:?}");
        assert!(ans.results.is_empty());
    }
    let ans = query(&h, ALICE, &mut a, &[], Some(&Rsm { after: Some("no-such-id".into()), ..Rsm::default() })).await;
    assert_eq!(ans.error_condition().as_deref(), Some("item-not-found"), "unknown RSM <after/>");
    // Bob's archive ids are not Alice's.
    let mut b = h.login("bob@localhost/laptop").await;
    let bob_ids = query(&h, "bob@localhost/laptop", &mut b, &[], None).await.ids();
    let ans = query(&h, ALICE, &mut a, &[("ids", &[bob_ids[0].as_str()])], None).await;
    assert_eq!(ans.error_condition().as_deref(), Some("item-not-found"));
}

async fn search(h: &Harness, rx: &mut Rx, text: &str) -> Vec<String> {
    let ans = query(h, ALICE, rx, &[(FULLTEXT_FIELD, &[text])], None).await;
    assert_eq!(ans.iq.attr("type"), Some("result"), "{text}: {:?}", ans.iq);
    ans.bodies()
}

#[tokio::test]
async fn xep0431_fulltext_search_finds_what_it_should_and_not_what_it_should_not() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let _b = online(&h, BOB).await;
    for (i, text) in [
        "Shall I compare thee to a summer's day?",
        "Thou art more lovely and more temperate",
        "Rough winds do shake the darling buds of May",
        "And summer's lease hath all too short a date",
        "Café au lait, s'il vous plaît",
        "summertime",
    ]
    .iter()
    .enumerate()
    {
        h.send(ALICE, chat("bob@localhost", &format!("p{i}"), text)).await;
    }
    assert_eq!(
        search(&h, &mut a, "summer").await,
        ["Shall I compare thee to a summer's day?", "And summer's lease hath all too short a date"]
    );
    assert_eq!(
        search(&h, &mut a, "SUMMER lease").await,
        ["And summer's lease hath all too short a date"],
        "all words, any case"
    );
    assert_eq!(search(&h, &mut a, "summer*").await.len(), 3, "prefix");
    assert_eq!(search(&h, &mut a, "cafe plait").await, ["Café au lait, s'il vous plaît"], "accents ignored");
    assert_eq!(search(&h, &mut a, "\"darling buds\"").await.len(), 1, "phrase");
    assert!(search(&h, &mut a, "\"buds darling\"").await.is_empty(), "phrase order");
    assert!(search(&h, &mut a, "winter").await.is_empty());
    assert!(search(&h, &mut a, "summer OR winter").await.is_empty(), "no operators");
    assert!(search(&h, &mut a, "sum").await.is_empty(), "whole words without *");
    assert_eq!(search(&h, &mut a, "   ").await.len(), 6, "an empty search is no filter (XEP-0431)");
    assert!(search(&h, &mut a, "***").await.is_empty(), "no usable word: nothing");
    // Bob's archive holds the same messages; Alice's search never reads it, and Bob finds his own.
    let mut b = h.login("bob@localhost/laptop").await;
    let ans = query(
        &h,
        "bob@localhost/laptop",
        &mut b,
        &[(FULLTEXT_FIELD, &["lovely"]), ("with", &["alice@localhost"])],
        None,
    )
    .await;
    assert_eq!(ans.bodies(), ["Thou art more lovely and more temperate"]);
    // Paging through search results.
    let ans = query(&h, "bob@localhost/laptop", &mut b, &[(FULLTEXT_FIELD, &["summer*"])], Some(&Rsm::max(2))).await;
    assert_eq!((ans.results.len(), ans.count(), ans.complete()), (2, Some(3), false));
    let next = Rsm { max: Some(2), after: ans.last(), ..Rsm::default() };
    let ans = query(&h, "bob@localhost/laptop", &mut b, &[(FULLTEXT_FIELD, &["summer*"])], Some(&next)).await;
    assert_eq!((ans.bodies(), ans.complete()), (vec!["summertime".to_owned()], true));
}

#[tokio::test]
async fn xep0313_8_1_only_the_owner_can_query_an_archive() {
    let h = server().await;
    let _a = alice_sent(&h, 3).await;
    const BOB: &str = "bob@localhost/other";
    let mut b = online(&h, BOB).await;
    let mut iq = query_iq("x", None, &[], None);
    iq.set_attr_str("to", "alice@localhost");
    let ans = ask(&h, BOB, &mut b, iq).await;
    assert_eq!(ans.error_condition().as_deref(), Some("forbidden"));
    assert!(ans.results.is_empty(), "nothing leaks");
    let mut meta =
        elem("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "m").with_child(elem("metadata", NS_MAM));
    meta.set_attr_str("to", "alice@localhost");
    assert_eq!(ask(&h, BOB, &mut b, meta).await.error_condition().as_deref(), Some("forbidden"));
    // Addressed to the own bare JID explicitly: fine.
    let mut own = query_iq("y", None, &[], None);
    own.set_attr_str("to", "bob@localhost");
    let ans = ask(&h, BOB, &mut b, own).await;
    assert_eq!(ans.results.len(), 3);
    // The server itself has no archive.
    let mut srv = query_iq("z", None, &[], None);
    srv.set_attr_str("to", "localhost");
    assert_eq!(ask(&h, BOB, &mut b, srv).await.error_condition().as_deref(), Some("service-unavailable"));
}

#[tokio::test]
async fn xep0313_query_errors_never_panic() {
    let h = server().await;
    let mut a = alice_sent(&h, 2).await;
    let cases: Vec<(Element, &str)> = vec![
        (query_iq("e1", None, &[("nonsense", &["x"])], None), "feature-not-implemented"),
        (query_iq("e2", None, &[("include-groupchat", &["true"])], None), "feature-not-implemented"),
        (query_iq("e3", None, &[("start", &["yesterday"])], None), "bad-request"),
        (query_iq("e4", None, &[("end", &["2010-02-30T00:00:00Z"])], None), "bad-request"),
        (query_iq("e5", None, &[("with", &["@@@"])], None), "jid-malformed"),
        (query_iq("e6", None, &[("with", &["a@b", "c@d"])], None), "bad-request"),
        (query_iq("e7", None, &[("FORM_TYPE", &["urn:xmpp:mam:1"])], None), "bad-request"),
        (
            query_iq(
                "e8",
                None,
                &[],
                Some(&Rsm { after: Some("a".into()), before: Some("b".into()), ..Rsm::default() }),
            ),
            "bad-request",
        ),
    ];
    for (iq, condition) in cases {
        let ans = ask(&h, ALICE, &mut a, iq).await;
        assert_eq!(ans.error_condition().as_deref(), Some(condition), "{:?}", ans.iq);
        assert!(ans.results.is_empty());
    }
    let raw = |xml: &str| parse(xml);
    for (xml, condition) in [
        ("<iq xmlns='jabber:client' type='set' id='r1'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set></query></iq>", "bad-request"),
        ("<iq xmlns='jabber:client' type='set' id='r2'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>99999999999999999999999</max></set></query></iq>", "bad-request"),
        ("<iq xmlns='jabber:client' type='set' id='r3'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set></query></iq>", "feature-not-implemented"),
        ("<iq xmlns='jabber:client' type='set' id='r4'><query xmlns='urn:xmpp:mam:2' node='x'/></iq>", "feature-not-implemented"),
        ("<iq xmlns='jabber:client' type='set' id='r5'><query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'/></query></iq>", "bad-request"),
        ("<iq xmlns='jabber:client' type='set' id='r6'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after/></set></query></iq>", "bad-request"),
    ] {
        let ans = ask(&h, ALICE, &mut a, raw(xml)).await;
        assert_eq!(ans.error_condition().as_deref(), Some(condition), "{xml}: {:?}", ans.iq);
    }
    // Empty and valueless fields are no filter at all.
    let ans =
        query(&h, ALICE, &mut a, &[("with", &[]), ("start", &[""]), (FULLTEXT_FIELD, &[""])], Some(&Rsm::max(0))).await;
    assert_eq!((ans.results.len(), ans.count(), ans.complete()), (0, Some(2), false), "max 0: just the count");
}

#[tokio::test]
async fn xep0313_page_size_is_capped() {
    let h = server().await;
    let mut a = alice_sent(&h, MAX_PAGE + 3).await;
    let ans = query(&h, ALICE, &mut a, &[], Some(&Rsm::max(1000))).await;
    assert_eq!(ans.results.len(), MAX_PAGE, "a larger <max/> is cut to the server's limit");
    assert!(!ans.complete(), "and the client is told to page on");
    assert_eq!(ans.count(), Some(MAX_PAGE as u64 + 3));
    let ans = query(&h, ALICE, &mut a, &[], Some(&Rsm { max: Some(1000), after: ans.last(), ..Rsm::default() })).await;
    assert_eq!((ans.results.len(), ans.complete()), (3, true));
    let ans = query(&h, ALICE, &mut a, &[], None).await;
    assert_eq!((ans.results.len(), ans.complete()), (mam::DEFAULT_PAGE, false), "no <max/>: the default page");
}

#[tokio::test]
async fn xep0313_6_metadata_names_the_first_and_last_items() {
    let h = server().await;
    let mut a = online(&h, ALICE).await;
    let meta =
        || elem("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "md").with_child(elem("metadata", NS_MAM));
    let ans = ask(&h, ALICE, &mut a, meta()).await;
    let md = ans.iq.get_child("metadata", NS_MAM).expect("metadata");
    assert_eq!(md.children().count(), 0, "empty archive: empty metadata");
    let _b = online(&h, BOB).await;
    for i in 0..3 {
        h.send(ALICE, chat("bob@localhost", &format!("m{i}"), "x")).await;
    }
    let all = query(&h, ALICE, &mut a, &[], None).await;
    let ans = ask(&h, ALICE, &mut a, meta()).await;
    let md = ans.iq.get_child("metadata", NS_MAM).expect("metadata");
    let get = |name: &str| {
        let e: &Element = md.get_child(name, NS_MAM).expect(name);
        (e.attr("id").unwrap_or("").to_owned(), e.attr("timestamp").unwrap_or("").to_owned())
    };
    assert_eq!(get("start"), (all.ids()[0].clone(), delay_stamp(&all.results[0])));
    assert_eq!(get("end"), (all.ids()[2].clone(), delay_stamp(&all.results[2])));
}
