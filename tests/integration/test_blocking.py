"""Blocking Command (XEP-0191)."""

from harness import NS, make_mutual

BLOCKING = NS["blocking"]


def _blocklist(client):
    result = client.iq_ok("get", f"<blocklist xmlns='{BLOCKING}'/>")
    return sorted(i.get("jid") for i in result.findall("blocking:blocklist/blocking:item"))


def test_blocking_is_advertised(kabar):
    """XEP-0191 §2: the server advertises urn:xmpp:blocking in disco#info."""
    alice = kabar.client("alice")
    features = {f.get("var") for f in alice.disco_info("localhost").findall("disco_info:query/disco_info:feature")}
    assert BLOCKING in features


def test_blocked_contact_cannot_reach_the_user_until_unblocked(kabar):
    """XEP-0191 §3.3: once bob blocks alice her messages are not delivered (a bounce, if any, is
    <service-unavailable/> so the block is not revealed); §3.2 the blocklist lists her; §3.4 after the
    unblock her messages arrive again."""
    bob = kabar.client("bob")
    alice = kabar.client("alice")
    assert _blocklist(bob) == []
    bob.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>")
    assert _blocklist(bob) == ["alice@localhost"]

    mid = alice.message("bob@localhost", "can you hear me?")
    bob.expect_no_message(body="can you hear me?")
    for error in (s for s in alice.received if s.id == mid and s.type == "error"):
        assert error.error_condition == "service-unavailable", error

    bob.iq_ok("set", f"<unblock xmlns='{BLOCKING}'><item jid='alice@localhost'/></unblock>")
    assert _blocklist(bob) == []
    alice.message("bob@localhost", "and now?")
    bob.expect_message(frm=alice.jid, body="and now?")


def test_user_cannot_send_to_a_contact_they_blocked(kabar):
    """XEP-0191 §3.3: an outbound stanza to a blocked JID is not routed; the user gets <not-acceptable/>
    with <blocked xmlns='urn:xmpp:blocking:errors'/>."""
    bob = kabar.client("bob")
    alice = kabar.client("alice")
    bob.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>")
    mid = bob.message(alice.jid, "you are blocked")
    error = bob.expect_error(mid)
    assert error.error_condition == "not-acceptable", error
    assert error.error_element.find(f"{{{NS['blocking_errors']}}}blocked") is not None, error
    alice.expect_no_message(body="you are blocked")


def test_block_and_unblock_are_pushed_to_interested_resources(kabar):
    """XEP-0191 §3.3/§3.4: a block or unblock is pushed (iq set) to every resource that retrieved the
    blocklist."""
    phone = kabar.client("bob/phone")
    desk = kabar.client("bob/desk")
    _blocklist(desk)  # desk is now an interested resource
    phone.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='carol@localhost'/></block>")
    push = desk.expect(lambda s: s.name == "iq" and s.type == "set" and s.find("blocking:block") is not None,
                       "a <block/> push")
    assert [i.get("jid") for i in push.findall("blocking:block/blocking:item")] == ["carol@localhost"]
    phone.iq_ok("set", f"<unblock xmlns='{BLOCKING}'><item jid='carol@localhost'/></unblock>")
    desk.expect(lambda s: s.name == "iq" and s.type == "set" and s.find("blocking:unblock") is not None,
                "an <unblock/> push")


def test_blocking_hides_presence_both_ways(kabar):
    """XEP-0191 §3.3: blocking a subscribed contact sends them 'unavailable' from the user's resources,
    and the contact's presence no longer reaches the user."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    bob.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>")
    alice.expect_presence(frm=bob.jid, type="unavailable")
    alice.presence(status="still here")
    bob.expect_no_presence(frm="alice@localhost")


def test_unblock_all_empties_the_list(kabar):
    """XEP-0191 §3.5: <unblock/> without items removes every entry."""
    bob = kabar.client("bob")
    bob.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/><item jid='carol@localhost'/></block>")
    assert _blocklist(bob) == ["alice@localhost", "carol@localhost"]
    bob.iq_ok("set", f"<unblock xmlns='{BLOCKING}'/>")
    assert _blocklist(bob) == []


def test_blocklist_survives_a_restart(server):
    """XEP-0191 §3.2: the blocklist is server-side state."""
    srv = server()
    bob = srv.client("bob")
    bob.iq_ok("set", f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>")
    srv.restart()
    bob = srv.client("bob", name="bob-again")
    assert _blocklist(bob) == ["alice@localhost"]
