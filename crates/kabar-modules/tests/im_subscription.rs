//! RFC 6121 §3 presence subscriptions and the Appendix A state tables, server side, with both
//! parties on this server (each stanza takes the outbound path of one user and the inbound path of
//! the other).

mod common;

use std::sync::Arc;

use common::*;
use kabar_core::Module;
use kabar_modules::{offline::OfflineModule, presence::PresenceModule, roster::RosterModule};
use kabar_storage::{RosterItem, Subscription};
use kabar_xml::Element;

fn im_modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(RosterModule::new()), Arc::new(PresenceModule::new()), Arc::new(OfflineModule::new())]
}

const ALICE: &str = "alice@localhost/phone";
const BOB: &str = "bob@localhost/pc";

/// Both users logged in, roster requested (interested) and available, queues drained.
async fn two_online() -> (Harness, Rx, Rx) {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    let mut b = h.login(BOB).await;
    h.roster_get(ALICE, &mut a).await;
    h.roster_get(BOB, &mut b).await;
    h.send(ALICE, presence(None, None)).await;
    h.send(BOB, presence(None, None)).await;
    recv_all(&mut a);
    recv_all(&mut b);
    (h, a, b)
}

async fn item(h: &Harness, user: &str, contact: &str) -> Option<RosterItem> {
    h.server.store.roster_item(user, contact).await.expect("store")
}

fn single_push(stanzas: &[Element]) -> Element {
    let p = pushes(stanzas);
    assert_eq!(p.len(), 1, "expected exactly one roster push in {stanzas:?}");
    p.into_iter().next().expect("one push")
}

fn subscription_presences<'a>(stanzas: &'a [Element], kind: &str) -> Vec<&'a Element> {
    stanzas.iter().filter(|s| s.name() == "presence" && s.attr("type") == Some(kind)).collect()
}

#[tokio::test]
async fn rfc6121_3_1_subscribe_then_subscribed_gives_to_and_from() {
    let (h, mut a, mut b) = two_online().await;

    // §3.1.2: the user's server adds the contact with subscription none + ask, pushes, routes.
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    let got_a = recv_all(&mut a);
    let push = single_push(&got_a);
    assert_eq!(push.attr("jid"), Some("bob@localhost"));
    assert_eq!(push.attr("subscription"), Some("none"));
    assert_eq!(push.attr("ask"), Some("subscribe"));
    // §3.1.3: delivered to the contact's available resources, stamped with the bare JID.
    let got_b = recv_all(&mut b);
    let req = subscription_presences(&got_b, "subscribe");
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].attr("from"), Some("alice@localhost"));
    assert!(pushes(&got_b).is_empty(), "an inbound request is not a roster item (§3.1.3)");

    // §3.1.5: the contact approves.
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    let got_b = recv_all(&mut b);
    let push = single_push(&got_b);
    assert_eq!(push.attr("jid"), Some("alice@localhost"));
    assert_eq!(push.attr("subscription"), Some("from"));
    assert_eq!(push.attr("ask"), None);

    // §3.1.6: the user gets the approval, a push with subscription 'to', and the contact's presence.
    let got_a = recv_all(&mut a);
    let push = single_push(&got_a);
    assert_eq!(push.attr("subscription"), Some("to"));
    assert_eq!(push.attr("ask"), None);
    let approvals = subscription_presences(&got_a, "subscribed");
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].attr("from"), Some("bob@localhost"));
    assert!(
        got_a.iter().any(|s| is_presence(s, None, BOB)),
        "the new subscriber receives the contact's current presence: {got_a:?}"
    );

    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::To));
    assert_eq!(item(&h, "bob@localhost", "alice@localhost").await.map(|i| i.subscription), Some(Subscription::From));

    // The other direction makes it mutual: both.
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribe"))).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribed"))).await;
    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::Both));
    assert_eq!(item(&h, "bob@localhost", "alice@localhost").await.map(|i| i.subscription), Some(Subscription::Both));
}

#[tokio::test]
async fn rfc6121_3_1_2_full_jid_target_is_treated_as_bare_and_from_is_stamped_bare() {
    let (h, _a, mut b) = two_online().await;
    h.send(ALICE, presence(Some("bob@localhost/pc"), Some("subscribe"))).await;
    let got_b = recv_all(&mut b);
    let req = subscription_presences(&got_b, "subscribe");
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].attr("from"), Some("alice@localhost"));
    assert_eq!(req[0].attr("to"), Some("bob@localhost"));
    assert!(item(&h, "alice@localhost", "bob@localhost").await.is_some_and(|i| i.ask));
}

#[tokio::test]
async fn rfc6121_3_1_3_request_to_offline_contact_is_kept_and_delivered_at_next_initial_presence() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.create_account("bob").await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    recv_all(&mut a);

    // Bob connects: nothing until he is available.
    let mut b = h.login(BOB).await;
    let roster = h.roster_get(BOB, &mut b).await;
    assert_eq!(roster.get_child("query", NS_ROSTER).map(|q| q.children().count()), Some(0));
    h.send(BOB, presence(None, None)).await;
    let got = recv_all(&mut b);
    let req = subscription_presences(&got, "subscribe");
    assert_eq!(req.len(), 1, "{got:?}");
    assert_eq!(req[0].attr("from"), Some("alice@localhost"));

    // Unanswered, it comes again at the next login (until approved or denied).
    h.logout(BOB).await;
    let mut b = h.login(BOB).await;
    h.send(BOB, presence(None, None)).await;
    assert_eq!(subscription_presences(&recv_all(&mut b), "subscribe").len(), 1);

    // Approved: no longer pending.
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::To));
    h.logout(BOB).await;
    let mut b = h.login(BOB).await;
    h.send(BOB, presence(None, None)).await;
    assert!(subscription_presences(&recv_all(&mut b), "subscribe").is_empty());
}

#[tokio::test]
async fn rfc6121_a_3_1_repeated_request_while_pending_in_is_not_delivered_again() {
    let (h, _a, mut b) = two_online().await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    assert_eq!(subscription_presences(&recv_all(&mut b), "subscribe").len(), 1);
}

#[tokio::test]
async fn rfc6121_3_1_3_contact_already_subscribed_gets_auto_reply_without_asking_the_contact() {
    let (h, mut a, mut b) = two_online().await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    recv_all(&mut a);
    recv_all(&mut b);
    // Alice's side lost track (say a restored backup): none + pending out again.
    let stale = RosterItem { jid: "bob@localhost".into(), ask: true, ..Default::default() };
    h.server.store.put_roster_item("alice@localhost", &stale).await.expect("store");

    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    // Bob is not asked again; his server answers 'subscribed' for him.
    let got_b = recv_all(&mut b);
    assert!(subscription_presences(&got_b, "subscribe").is_empty(), "{got_b:?}");
    let got_a = recv_all(&mut a);
    assert_eq!(subscription_presences(&got_a, "subscribed").len(), 1, "{got_a:?}");
    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::To));
}

#[tokio::test]
async fn rfc6121_3_2_denying_a_request_with_unsubscribed_clears_pending_out_and_pending_in() {
    let (h, mut a, mut b) = two_online().await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    recv_all(&mut a);
    recv_all(&mut b);

    h.send(BOB, presence(Some("alice@localhost"), Some("unsubscribed"))).await;
    // A.3.4: None + Pending Out → None, delivered, pushed.
    let got_a = recv_all(&mut a);
    assert_eq!(subscription_presences(&got_a, "unsubscribed").len(), 1);
    let push = single_push(&got_a);
    assert_eq!(push.attr("subscription"), Some("none"));
    assert_eq!(push.attr("ask"), None);
    // Bob has no item for Alice (a request is not a roster item) and the request is gone.
    assert!(pushes(&recv_all(&mut b)).is_empty());
    assert!(item(&h, "bob@localhost", "alice@localhost").await.is_none());
    h.send(BOB, presence(None, Some("unavailable"))).await;
    h.send(BOB, presence(None, None)).await;
    assert!(subscription_presences(&recv_all(&mut b), "subscribe").is_empty());
}

async fn befriended() -> (Harness, Rx, Rx) {
    let (h, mut a, mut b) = two_online().await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribe"))).await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribed"))).await;
    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::Both));
    recv_all(&mut a);
    recv_all(&mut b);
    (h, a, b)
}

#[tokio::test]
async fn rfc6121_3_2_cancelling_a_subscription_with_unsubscribed_sends_unavailable() {
    let (h, mut a, mut b) = befriended().await;
    // Bob cancels Alice's subscription to his presence.
    h.send(BOB, presence(Some("alice@localhost"), Some("unsubscribed"))).await;
    // A.2.4: Both → To for Bob.
    assert_eq!(single_push(&recv_all(&mut b)).attr("subscription"), Some("to"));
    // A.3.4: Both → From for Alice, who gets the cancellation and sees Bob go offline (§3.2.2).
    let got_a = recv_all(&mut a);
    assert_eq!(single_push(&got_a).attr("subscription"), Some("from"));
    assert_eq!(subscription_presences(&got_a, "unsubscribed").len(), 1);
    assert!(got_a.iter().any(|s| is_presence(s, Some("unavailable"), BOB)), "{got_a:?}");
}

#[tokio::test]
async fn rfc6121_3_3_unsubscribing_turns_both_into_from_and_to() {
    let (h, mut a, mut b) = befriended().await;
    h.send(ALICE, presence(Some("bob@localhost"), Some("unsubscribe"))).await;
    // A.2.2: Both → From for Alice.
    let got_a = recv_all(&mut a);
    assert_eq!(single_push(&got_a).attr("subscription"), Some("from"));
    // Bob's resources no longer show as online to Alice (§3.3.3).
    assert!(got_a.iter().any(|s| is_presence(s, Some("unavailable"), BOB)), "{got_a:?}");
    // A.3.2: Both → To for Bob, who is told.
    let got_b = recv_all(&mut b);
    assert_eq!(single_push(&got_b).attr("subscription"), Some("to"));
    let n = subscription_presences(&got_b, "unsubscribe");
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].attr("from"), Some("alice@localhost"));
}

#[tokio::test]
async fn rfc6121_3_4_pre_approval_is_stored_not_routed_and_approves_the_later_request() {
    let (h, mut a, mut b) = two_online().await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    // §3.4.1: the item appears with approved='true'; nothing reaches Alice.
    let push = single_push(&recv_all(&mut b));
    assert_eq!(push.attr("jid"), Some("alice@localhost"));
    assert_eq!(push.attr("subscription"), Some("none"));
    assert_eq!(push.attr("approved"), Some("true"));
    assert!(recv_all(&mut a).is_empty());

    // §3.4.2: Alice's request is approved by Bob's server without asking Bob.
    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    let got_b = recv_all(&mut b);
    assert!(subscription_presences(&got_b, "subscribe").is_empty(), "{got_b:?}");
    let push = single_push(&got_b);
    assert_eq!(push.attr("subscription"), Some("from"));
    assert_eq!(push.attr("approved"), None);
    let got_a = recv_all(&mut a);
    assert_eq!(subscription_presences(&got_a, "subscribed").len(), 1);
    assert!(got_a.iter().any(|s| is_presence(s, None, BOB)), "{got_a:?}");
    assert_eq!(item(&h, "alice@localhost", "bob@localhost").await.map(|i| i.subscription), Some(Subscription::To));
}

#[tokio::test]
async fn rfc6121_3_4_pre_approval_is_cancelled_by_unsubscribed() {
    let (h, mut a, mut b) = two_online().await;
    h.send(BOB, presence(Some("alice@localhost"), Some("subscribed"))).await;
    recv_all(&mut b);
    h.send(BOB, presence(Some("alice@localhost"), Some("unsubscribed"))).await;
    let push = single_push(&recv_all(&mut b));
    assert_eq!(push.attr("approved"), None);
    assert!(recv_all(&mut a).is_empty(), "cancelling a pre-approval tells nobody");

    h.send(ALICE, presence(Some("bob@localhost"), Some("subscribe"))).await;
    assert_eq!(subscription_presences(&recv_all(&mut b), "subscribe").len(), 1, "Bob is asked again");
}

#[tokio::test]
async fn rfc6121_a_3_3_unsolicited_subscribed_is_ignored() {
    let (h, mut a, _b) = two_online().await;
    // From another server: no request was made, so no state change and no delivery.
    let approval =
        parse("<presence xmlns='jabber:client' type='subscribed' from='romeo@example.net' to='alice@localhost'/>");
    h.server.route(approval).await;
    assert!(recv_all(&mut a).is_empty());
    assert!(item(&h, "alice@localhost", "romeo@example.net").await.is_none());
}

#[tokio::test]
async fn rfc6121_a_3_4_unsubscribed_without_subscription_is_ignored() {
    let (h, mut a, _b) = two_online().await;
    let cancel =
        parse("<presence xmlns='jabber:client' type='unsubscribed' from='romeo@example.net' to='alice@localhost'/>");
    h.server.route(cancel).await;
    assert!(recv_all(&mut a).is_empty());
}

#[tokio::test]
async fn rfc6121_3_1_3_request_from_another_server_is_delivered_and_kept() {
    let (h, mut a, _b) = two_online().await;
    let request = parse("<presence xmlns='jabber:client' type='subscribe' from='romeo@example.net/orchard' to='alice@localhost/phone'/>");
    h.server.route(request).await;
    let got = recv_all(&mut a);
    let req = subscription_presences(&got, "subscribe");
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].attr("from"), Some("romeo@example.net"));
    assert_eq!(req[0].attr("to"), Some("alice@localhost"));
    assert!(h
        .server
        .store
        .kv_get("alice@localhost", "presence-pending-in", "romeo@example.net")
        .await
        .expect("store")
        .is_some());
}

#[tokio::test]
async fn rfc6121_8_5_1_subscription_request_for_unknown_account_is_silently_ignored() {
    let h = Harness::new(im_modules()).await;
    let mut a = h.login(ALICE).await;
    h.roster_get(ALICE, &mut a).await;
    h.send(ALICE, presence(None, None)).await;
    recv_all(&mut a);
    h.send(ALICE, presence(Some("nobody@localhost"), Some("subscribe"))).await;
    let got = recv_all(&mut a);
    // Only the push for the pending-out item; no error, no answer.
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(single_push(&got).attr("ask"), Some("subscribe"));
}

#[tokio::test]
async fn rfc6120_8_3_subscription_stanza_without_to_is_a_bad_request() {
    let (h, mut a, _b) = two_online().await;
    h.send(ALICE, presence(None, Some("subscribe"))).await;
    let got = recv_all(&mut a);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].attr("type"), Some("error"));
    let error = got[0].get_child("error", NS_CLIENT).expect("error child");
    assert!(error.has_child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas"));
}
