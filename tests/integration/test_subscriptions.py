"""Presence subscriptions (RFC 6121 §3) and presence exchange (RFC 6121 §4)."""

import pytest

from harness import make_mutual


def _item(push):
    item = push.find("roster:query/roster:item")
    return item.get("subscription", "none"), item.get("ask")


def test_subscription_request_and_approval(kabar):
    """RFC 6121 §3.1: alice asks → her item becomes none+ask=subscribe (§3.1.2), bob receives the request
    from alice's bare JID (§3.1.3); bob approves → bob's item is 'from' (§3.1.5), alice gets 'subscribed'
    and her item becomes 'to' (§3.1.6), and she receives bob's current presence (§3.1.5)."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")

    alice.presence(to="bob@localhost", type="subscribe")
    assert _item(alice.expect_roster_push("bob@localhost")) == ("none", "subscribe")
    request = bob.expect_presence(frm="alice@localhost", type="subscribe")
    assert request.frm == "alice@localhost", "subscription requests are stamped with the bare JID"

    bob.presence(to="alice@localhost", type="subscribed")
    assert _item(bob.expect_roster_push("alice@localhost")) == ("from", None)
    approved = alice.expect_presence(frm="bob@localhost", type="subscribed")
    assert approved.frm == "bob@localhost"
    assert _item(alice.expect_roster_push("bob@localhost")) == ("to", None)
    alice.expect_presence(frm=bob.jid, type=None)

    assert alice.subscription_to("bob@localhost") == ("to", None)
    assert bob.subscription_to("alice@localhost") == ("from", None)


def test_mutual_subscription_is_both(kabar):
    """RFC 6121 §3.1 twice: both items end as subscription='both'."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    assert alice.subscription_to("bob@localhost") == ("both", None)
    assert bob.subscription_to("alice@localhost") == ("both", None)


def test_denied_request_leaves_none(kabar):
    """RFC 6121 §3.2.1 (contact refuses with 'unsubscribed'): alice's pending request is cancelled,
    she is told, and her item goes back to subscription='none' without ask."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    alice.presence(to="bob@localhost", type="subscribe")
    bob.expect_presence(frm="alice@localhost", type="subscribe")
    alice.expect_roster_push("bob@localhost")
    bob.presence(to="alice@localhost", type="unsubscribed")
    alice.expect_presence(frm="bob@localhost", type="unsubscribed")
    assert _item(alice.expect_roster_push("bob@localhost")) == ("none", None)
    assert alice.subscription_to("bob@localhost") == ("none", None)


def test_unsubscribe_turns_both_into_from_and_to(kabar):
    """RFC 6121 §3.3: alice unsubscribes from bob's presence: her item both→from, bob's both→to, bob gets
    the 'unsubscribe', and alice receives 'unavailable' from bob's resources (§3.3.3)."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    alice.presence(to="bob@localhost", type="unsubscribe")
    assert _item(alice.expect_roster_push("bob@localhost")) == ("from", None)
    bob.expect_presence(frm="alice@localhost", type="unsubscribe")
    assert _item(bob.expect_roster_push("alice@localhost")) == ("to", None)
    alice.expect_presence(frm=bob.jid, type="unavailable")
    assert alice.subscription_to("bob@localhost") == ("from", None)
    assert bob.subscription_to("alice@localhost") == ("to", None)


def test_cancelling_a_subscription_returns_to_none(kabar):
    """RFC 6121 §3.2: after alice unsubscribed (from/to), alice cancels bob's subscription with
    'unsubscribed': both items become 'none' and bob receives 'unavailable' from alice (§3.2.3)."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    alice.presence(to="bob@localhost", type="unsubscribe")
    bob.expect_presence(frm="alice@localhost", type="unsubscribe")
    alice.sync()
    alice.drain()
    bob.drain()

    alice.presence(to="bob@localhost", type="unsubscribed")
    assert _item(alice.expect_roster_push("bob@localhost")) == ("none", None)
    bob.expect_presence(frm="alice@localhost", type="unsubscribed")
    assert _item(bob.expect_roster_push("alice@localhost")) == ("none", None)
    bob.expect_presence(frm=alice.jid, type="unavailable")
    assert alice.subscription_to("bob@localhost") == ("none", None)
    assert bob.subscription_to("alice@localhost") == ("none", None)


def test_presence_is_broadcast_to_subscribers_only(kabar):
    """RFC 6121 §4.4.2: a presence update goes to every contact subscribed to the user and to the user's
    own other available resources, and not to anyone else."""
    alice = kabar.client("alice/phone")
    alice_desk = kabar.client("alice/desk")
    bob = kabar.client("bob")
    carol = kabar.client("carol")
    make_mutual(alice, bob)
    alice_desk.drain()

    alice.presence(show="away", status="at lunch")
    for watcher in (bob, alice_desk):
        update = watcher.expect_presence(frm=alice.jid, type=None)
        assert update.find("client:show").text == "away"
        assert update.find("client:status").text == "at lunch"
    carol.expect_no_presence(frm="alice@localhost")


def test_initial_presence_exchanges_presence_with_contacts(server):
    """RFC 6121 §4.2: on initial presence the server broadcasts it to subscribers and probes the user's
    contacts (§4.3), so a user logging in sees who is online and is seen."""
    srv = server()
    alice = srv.client("alice")
    bob = srv.client("bob")
    make_mutual(alice, bob)
    bob.disconnect()
    alice.expect_presence(frm=bob.jid, type="unavailable")

    bob = srv.client("bob", name="bob-again")
    alice.expect_presence(frm=bob.jid, type=None)
    bob.expect_presence(frm=alice.jid, type=None)


@pytest.mark.parametrize("how", ["closes-stream", "drops-tcp"])
def test_unavailable_is_sent_to_contacts_when_a_session_ends(kabar, how):
    """RFC 6121 §4.5.2 / RFC 6120 §4.4: when a session ends — politely (</stream:stream>) or by a dropped
    connection — subscribers receive presence type='unavailable' from that full JID."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    bob_jid = bob.jid
    if how == "closes-stream":
        bob.disconnect()
    else:
        bob.kill()
    alice.expect_presence(frm=bob_jid, type="unavailable", timeout=10)


def test_explicit_unavailable_is_broadcast(kabar):
    """RFC 6121 §4.5.1: a client's <presence type='unavailable'/> is broadcast to its subscribers."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    bob.presence(type="unavailable", status="bye")
    gone = alice.expect_presence(frm=bob.jid, type="unavailable")
    assert gone.find("client:status").text == "bye"


def test_subscription_request_to_offline_user_is_delivered_at_login(server):
    """RFC 6121 §3.1.3: a request for a user who is offline is stored and delivered when that user next
    sends initial presence."""
    srv = server()
    alice = srv.client("alice")
    alice.presence(to="bob@localhost", type="subscribe")
    alice.sync()
    bob = srv.client("bob")
    bob.expect_presence(frm="alice@localhost", type="subscribe")


def test_pre_approved_subscription_is_granted_without_asking(kabar):
    """RFC 6121 §3.4 (pre-approval, advertised as <sub xmlns='urn:xmpp:features:pre-approval'/>): bob
    approves alice before she asks; her later request is answered 'subscribed' by the server without
    bob being asked, and the items become to/from."""
    bob = kabar.client("bob")
    alice = kabar.client("alice")
    assert "preapproval" in bob.features, "pre-approval stream feature not advertised"
    bob.presence(to="alice@localhost", type="subscribed")
    push = bob.expect_roster_push("alice@localhost")
    assert push.find("roster:query/roster:item").get("approved") == "true", push
    alice.presence(to="bob@localhost", type="subscribe")
    alice.expect_presence(frm="bob@localhost", type="subscribed")
    bob.expect_no_presence(frm="alice@localhost", type="subscribe")
    assert alice.subscription_to("bob@localhost") == ("to", None)
    assert bob.subscription_to("alice@localhost") == ("from", None)


def test_directed_presence_reaches_a_non_contact_and_is_revoked_on_logout(kabar):
    """RFC 6121 §4.6: directed presence is delivered to its target even without a subscription, and when
    the sender goes offline the server sends that target 'unavailable' (§4.6.3)."""
    alice = kabar.client("alice")
    carol = kabar.client("carol")
    alice.presence(to=carol.jid, status="psst")
    seen = carol.expect_presence(frm=alice.jid, type=None)
    assert seen.find("client:status").text == "psst"
    alice_jid = alice.jid
    alice.disconnect()
    carol.expect_presence(frm=alice_jid, type="unavailable")
