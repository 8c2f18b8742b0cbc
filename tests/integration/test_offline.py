"""Offline message storage (XEP-0160, RFC 6121 §8.5.2.2) with delayed delivery stamps (XEP-0203)."""

from datetime import datetime, timedelta, timezone

from harness import NS


def _check_delay(msg, domain="localhost"):
    delay = msg.find("delay:delay")
    assert delay is not None, f"offline message without <delay xmlns='urn:xmpp:delay'/>: {msg}"
    stamp = datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0), "XEP-0082: stamp must be UTC"
    assert datetime.now(timezone.utc) - timedelta(minutes=5) < stamp <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert delay.get("from") in (None, domain), delay.attrib


def test_message_to_offline_user_is_kept_across_a_restart_and_delivered_with_delay(server):
    """XEP-0160 §3 / RFC 6121 §8.5.2.2: a chat message to a user with no available resource is stored
    (durably: it survives a server restart) and delivered when the user sends initial presence, marked
    with XEP-0203 <delay/> (stamp = when the server received it)."""
    srv = server()
    alice = srv.client("alice")
    alice.message("bob@localhost", "while you were out")
    alice.sync()
    srv.restart()
    bob = srv.client("bob")
    msg = bob.expect_message(frm="alice@localhost", body="while you were out")
    assert msg.frm.startswith("alice@localhost/")
    _check_delay(msg)


def test_offline_messages_keep_their_order_and_are_delivered_once(server):
    """XEP-0160 §3: stored messages are delivered in order, and removed once delivered."""
    srv = server()
    alice = srv.client("alice")
    for i in range(3):
        alice.message("bob@localhost", f"note {i}")
    alice.sync()
    bob = srv.client("bob")
    bodies = [bob.expect_message(frm="alice@localhost").body for _ in range(3)]
    assert bodies == ["note 0", "note 1", "note 2"]
    bob.disconnect()
    bob = srv.client("bob", name="bob-again")
    bob.expect_no_message(frm="alice@localhost")


def test_offline_messages_wait_for_initial_presence(server):
    """XEP-0160 §3 / RFC 6121 §4.2.2: delivery happens on initial presence, not on resource binding."""
    srv = server()
    alice = srv.client("alice")
    alice.message("bob@localhost", "after presence")
    alice.sync()
    bob = srv.client("bob", presence=False)
    bob.expect_no_message(body="after presence")
    bob.send("<presence/>")
    _check_delay(bob.expect_message(frm="alice@localhost", body="after presence"))


def test_offline_store_is_bounded(server):
    """XEP-0160 §3 (quota): beyond max_offline_messages further messages bounce with
    <service-unavailable/> (kabar's documented behaviour); the stored ones are still delivered."""
    srv = server(config={"limits": {"max_offline_messages": 2}})
    alice = srv.client("alice")
    alice.message("bob@localhost", "one")
    alice.message("bob@localhost", "two")
    third = alice.message("bob@localhost", "three")
    error = alice.expect_error(third)
    assert error.error_condition == "service-unavailable", error
    bob = srv.client("bob")
    assert [bob.expect_message(frm="alice@localhost").body for _ in range(2)] == ["one", "two"]
    bob.expect_no_message(body="three")


def test_offline_messages_are_advertised_in_disco(kabar):
    """XEP-0160 §5 / XEP-0013: servers storing offline messages advertise the 'msgoffline' feature."""
    alice = kabar.client("alice")
    features = {f.get("var") for f in alice.disco_info("localhost").findall("disco_info:query/disco_info:feature")}
    assert "msgoffline" in features, sorted(features)
    assert NS["disco_info"] in features


def test_only_storable_messages_are_kept_offline(server):
    """XEP-0160 §3 / RFC 6121 §8.5.2.2: 'normal' and 'chat' messages with a body are stored; 'headline',
    'groupchat' and 'error' messages are not (and are not bounced as stored either)."""
    srv = server()
    alice = srv.client("alice")
    alice.message("bob@localhost", "a headline", type="headline")
    alice.message("bob@localhost", "a groupchat", type="groupchat")
    alice.send("<message to='bob@localhost' type='error' id='e1'><body>an error</body><error type='cancel'>"
               "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    alice.message("bob@localhost", "a normal one", type="normal")
    alice.sync()
    bob = srv.client("bob")
    bob.expect_message(frm="alice@localhost", body="a normal one")
    bob.expect_none(lambda s: s.name == "message" and s.body in ("a headline", "a groupchat", "an error"),
                    "a headline, groupchat or error message from the offline store")
