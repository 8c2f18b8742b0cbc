//! RFC 6121 §4 exchanging presence: initial presence, probes, subsequent presence, unavailable
//! presence (sent or implied by the session ending) and directed presence; §8.5 delivery rules.

mod common;

use std::sync::Arc;

use common::*;
use kabar_core::Module;
use kabar_modules::{offline::OfflineModule, presence::PresenceModule, roster::RosterModule};
use kabar_xml::{elem, Element, ElementExt};

fn im_modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(RosterModule::new()), Arc::new(PresenceModule::new()), Arc::new(OfflineModule::new())]
}

const ALICE: &str = "alice@localhost/phone";
const ALICE2: &str = "alice@localhost/laptop";
const BOB: &str = "bob@localhost/pc";
const CAROL: &str = "carol@localhost/desk";

fn available(show: &str, priority: i8) -> Element {
    presence(None, None)
        .with_child(elem("show", NS_CLIENT).with_text(show))
        .with_child(elem("priority", NS_CLIENT).with_text(priority.to_string()))
}

fn show_of(p: &Element) -> Option<String> {
    p.get_child("show", NS_CLIENT).map(|s| s.text())
}

/// Alice and Bob subscribed both ways; Bob and Carol (a stranger) online and available.
async fn setup() -> (Harness, Rx, Rx) {
    let h = Harness::new(im_modules()).await;
    h.befriend(ALICE, BOB).await;
    let mut b = h.login(BOB).await;
    let mut c = h.login(CAROL).await;
    h.send(BOB, presence(None, None)).await;
    h.send(CAROL, presence(None, None)).await;
    recv_all(&mut b);
    recv_all(&mut c);
    (h, b, c)
}

#[tokio::test]
async fn rfc6121_4_2_initial_presence_goes_to_subscribers_and_probes_contacts() {
    let (h, mut b, mut c) = setup().await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, available("away", 5)).await;

    // §4.2.2: broadcast to the contact subscribed to Alice, from her full JID.
    let got_b = presences(&recv_all(&mut b));
    assert_eq!(got_b.len(), 1, "{got_b:?}");
    assert!(is_presence(&got_b[0], None, ALICE));
    assert_eq!(got_b[0].attr("to"), Some("bob@localhost"));
    assert_eq!(show_of(&got_b[0]).as_deref(), Some("away"));

    // Alice gets her own presence back and, answering the probe (§4.3), Bob's current presence.
    let got_a = presences(&recv_all(&mut a));
    assert!(got_a.iter().any(|p| is_presence(p, None, ALICE) && p.attr("to") == Some(ALICE)), "{got_a:?}");
    assert!(got_a.iter().any(|p| is_presence(p, None, BOB) && p.attr("to") == Some(ALICE)), "{got_a:?}");
    assert_eq!(got_a.len(), 2, "{got_a:?}");

    // A stranger learns nothing.
    assert!(recv_all(&mut c).is_empty());

    let info = h.server.sessions.get(&full(ALICE)).expect("session");
    assert!(info.available);
    assert_eq!(info.priority, 5);
    assert!(info.presence.is_some());
}

#[tokio::test]
async fn rfc6121_4_3_2_probe_of_a_contact_without_available_resource_is_answered_unavailable() {
    let h = Harness::new(im_modules()).await;
    h.befriend(ALICE, BOB).await;
    let mut b = h.login(BOB).await;
    h.send(BOB, presence(None, None)).await;
    let got = presences(&recv_all(&mut b));
    assert!(
        got.iter().any(|p| is_presence(p, Some("unavailable"), "alice@localhost") && p.attr("to") == Some(BOB)),
        "{got:?}"
    );
}

#[tokio::test]
async fn rfc6121_4_3_2_probe_from_someone_not_subscribed_reveals_nothing() {
    let (h, mut b, mut c) = setup().await;
    let _a = h.login(ALICE).await;
    h.send(ALICE, presence(None, None)).await;
    recv_all(&mut b);

    h.send(CAROL, presence(Some("alice@localhost"), Some("probe"))).await;
    assert!(recv_all(&mut c).is_empty());
    // A subscriber probing gets the answer.
    h.send(BOB, presence(Some("alice@localhost"), Some("probe"))).await;
    let got = presences(&recv_all(&mut b));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(is_presence(&got[0], None, ALICE));
}

#[tokio::test]
async fn rfc6121_4_2_2_resources_of_one_account_see_each_other() {
    let h = Harness::new(im_modules()).await;
    let mut phone = h.login(ALICE).await;
    let mut laptop = h.login(ALICE2).await;
    h.send(ALICE, presence(None, None)).await;
    recv_all(&mut phone);
    assert!(recv_all(&mut laptop).is_empty(), "not available yet, so no presence");

    h.send(ALICE2, available("chat", 1)).await;
    let got_phone = presences(&recv_all(&mut phone));
    assert_eq!(got_phone.len(), 1);
    assert!(is_presence(&got_phone[0], None, ALICE2));
    let got_laptop = presences(&recv_all(&mut laptop));
    assert!(got_laptop.iter().any(|p| is_presence(p, None, ALICE2)), "own presence echoed: {got_laptop:?}");
    assert!(got_laptop.iter().any(|p| is_presence(p, None, ALICE)), "sibling shown: {got_laptop:?}");
}

#[tokio::test]
async fn rfc6121_4_4_subsequent_presence_is_broadcast_without_new_probes() {
    let (h, mut b, _c) = setup().await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, presence(None, None)).await;
    recv_all(&mut a);
    recv_all(&mut b);

    h.send(ALICE, available("dnd", -1)).await;
    let got_b = presences(&recv_all(&mut b));
    assert_eq!(got_b.len(), 1);
    assert_eq!(show_of(&got_b[0]).as_deref(), Some("dnd"));
    let got_a = presences(&recv_all(&mut a));
    assert_eq!(got_a.len(), 1, "only the echo; contacts are not probed again: {got_a:?}");
    assert_eq!(h.server.sessions.get(&full(ALICE)).map(|s| s.priority), Some(-1));
}

#[tokio::test]
async fn rfc6121_4_5_and_4_6_unavailable_reaches_subscribers_and_directed_presence_recipients() {
    let (h, mut b, mut c) = setup().await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, presence(None, None)).await;
    // §4.6.2: directed presence to a stranger is remembered; to a subscriber it is not needed.
    h.send(ALICE, presence(Some(CAROL), None)).await;
    h.send(ALICE, presence(Some("bob@localhost"), None)).await;
    assert_eq!(h.server.sessions.get(&full(ALICE)).map(|s| s.directed_to), Some(vec![CAROL.to_string()]));
    let got_c = presences(&recv_all(&mut c));
    assert_eq!(got_c.len(), 1);
    assert!(is_presence(&got_c[0], None, ALICE));
    recv_all(&mut a);
    recv_all(&mut b);

    h.send(ALICE, presence(None, Some("unavailable"))).await;
    let got_b = presences(&recv_all(&mut b));
    assert_eq!(got_b.len(), 1);
    assert!(is_presence(&got_b[0], Some("unavailable"), ALICE));
    let got_c = presences(&recv_all(&mut c));
    assert_eq!(got_c.len(), 1);
    assert!(is_presence(&got_c[0], Some("unavailable"), ALICE));
    let info = h.server.sessions.get(&full(ALICE)).expect("still connected");
    assert!(!info.available);
    assert!(info.directed_to.is_empty());
    assert!(info.presence.is_none());
}

#[tokio::test]
async fn rfc6121_4_5_closing_an_available_session_implies_unavailable_presence() {
    let (h, mut b, mut c) = setup().await;
    let _a = h.login(ALICE).await;
    let mut laptop = h.login(ALICE2).await;
    h.send(ALICE, presence(None, None)).await;
    h.send(ALICE2, presence(None, None)).await;
    h.send(ALICE, presence(Some(CAROL), None)).await;
    recv_all(&mut b);
    recv_all(&mut c);
    recv_all(&mut laptop);

    h.logout(ALICE).await;
    for (who, rx) in [("bob", &mut b), ("carol", &mut c), ("alice's laptop", &mut laptop)] {
        let got = presences(&recv_all(rx));
        assert_eq!(got.len(), 1, "{who}: {got:?}");
        assert!(is_presence(&got[0], Some("unavailable"), ALICE), "{who}: {got:?}");
    }
}

#[tokio::test]
async fn rfc6121_4_6_3_directed_unavailable_forgets_the_recipient() {
    let (h, _b, mut c) = setup().await;
    let _a = h.login(ALICE).await;
    h.send(ALICE, presence(Some(CAROL), None)).await;
    h.send(ALICE, presence(Some(CAROL), Some("unavailable"))).await;
    assert_eq!(presences(&recv_all(&mut c)).len(), 2);
    assert_eq!(h.server.sessions.get(&full(ALICE)).map(|s| s.directed_to.len()), Some(0));
    h.logout(ALICE).await;
    assert!(recv_all(&mut c).is_empty());
}

#[tokio::test]
async fn rfc6121_8_5_presence_to_bare_jid_reaches_available_resources_and_to_full_jid_only_that_one() {
    let (h, _b, mut c) = setup().await;
    let mut phone = h.login(ALICE).await;
    let mut laptop = h.login(ALICE2).await;
    let mut watch = h.login("alice@localhost/watch").await; // connected, never available
    h.send(ALICE, presence(None, None)).await;
    h.send(ALICE2, presence(None, None)).await;
    recv_all(&mut phone);
    recv_all(&mut laptop);

    h.send(CAROL, presence(Some(ALICE), None)).await;
    assert_eq!(presences(&recv_all(&mut phone)).len(), 1);
    assert!(recv_all(&mut laptop).is_empty());

    h.send(CAROL, presence(Some("alice@localhost"), None)).await;
    assert_eq!(presences(&recv_all(&mut phone)).len(), 1);
    assert_eq!(presences(&recv_all(&mut laptop)).len(), 1);
    assert!(recv_all(&mut watch).is_empty(), "only available resources get presence for the bare JID");

    // §8.5.3.2.2: no such resource → silently dropped.
    h.send(CAROL, presence(Some("alice@localhost/gone"), None)).await;
    assert!(recv_all(&mut phone).is_empty());
    assert!(recv_all(&mut c).is_empty());
}

#[tokio::test]
async fn rfc6120_8_3_presence_errors_are_delivered_like_presence() {
    let (h, _b, _c) = setup().await;
    let mut a = h.login(ALICE).await;
    let error = parse(
        "<presence xmlns='jabber:client' type='error' to='alice@localhost/phone'>\
         <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
    );
    h.send(CAROL, error).await;
    let got = recv_all(&mut a);
    assert_eq!(got.len(), 1);
    assert!(is_presence(&got[0], Some("error"), CAROL));
}

#[tokio::test]
async fn rfc6121_4_7_1_unknown_presence_type_is_a_bad_request() {
    let (h, mut b, _c) = setup().await;
    let mut a = h.login(ALICE).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("bogus"))).await;
    let got = recv_all(&mut a);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].attr("type"), Some("error"));
    assert!(got[0]
        .get_child("error", NS_CLIENT)
        .is_some_and(|e| e.has_child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas")));
    assert!(recv_all(&mut b).is_empty());
}

#[tokio::test]
async fn rfc6121_4_2_initial_presence_redelivers_pending_requests_then_notifies_initial_presence() {
    // The InitialPresence notification is what the offline module hooks (see im_offline.rs); here:
    // a pending request reaches a resource that only becomes available later.
    let h = Harness::new(im_modules()).await;
    let mut b = h.login(BOB).await;
    h.create_account("alice").await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribe"))).await;
    recv_all(&mut b);
    let mut a = h.login(ALICE).await;
    assert!(recv_all(&mut a).is_empty());
    h.send(ALICE, presence(None, None)).await;
    let got = recv_all(&mut a);
    assert!(got.iter().any(|s| s.attr("type") == Some("subscribe") && s.attr("from") == Some("bob@localhost")));
}
