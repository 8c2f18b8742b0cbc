"""External components (XEP-0114)."""

import pytest

from harness import COMPONENT_DOMAIN, LoginFailed


def test_component_receives_user_messages_and_replies(kabar):
    """XEP-0114 §3: a component authenticated with the shared secret receives stanzas addressed to its
    domain (and to JIDs at its domain), with the sender's full JID, and its replies reach the user."""
    bot = kabar.component()
    alice = kabar.client("alice")
    alice.message(COMPONENT_DOMAIN, "hello bot")
    got = bot.expect_message(frm=alice.jid, body="hello bot")
    assert got.to == COMPONENT_DOMAIN
    bot.message(alice.jid, "hello human", frm=COMPONENT_DOMAIN)
    alice.expect_message(frm=COMPONENT_DOMAIN, body="hello human")

    alice.message(f"echo@{COMPONENT_DOMAIN}/x", "to a user of the component")
    got = bot.expect_message(frm=alice.jid, body="to a user of the component")
    assert got.to == f"echo@{COMPONENT_DOMAIN}/x"
    bot.message(alice.jid, "from a user of the component", frm=f"echo@{COMPONENT_DOMAIN}/x")
    alice.expect_message(frm=f"echo@{COMPONENT_DOMAIN}/x", body="from a user of the component")


def test_component_iq_round_trip(kabar):
    """XEP-0114 §3 / RFC 6120 §8.2.3: an iq from a user to the component is routed there and the
    component's answer comes back to the user."""
    bot = kabar.component()
    alice = kabar.client("alice")
    alice.send(f"<iq type='get' to='{COMPONENT_DOMAIN}' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    asked = bot.expect(lambda s: s.name == "iq" and s.id == "v1", "the version query")
    assert asked.frm == alice.jid
    bot.send(f"<iq type='result' from='{COMPONENT_DOMAIN}' to='{alice.jid}' id='v1'>"
             "<query xmlns='jabber:iq:version'><name>bot</name><version>1</version></query></iq>")
    answer = alice.expect(lambda s: s.name == "iq" and s.id == "v1", "the component's answer")
    assert answer.type == "result" and answer.frm == COMPONENT_DOMAIN


def test_component_with_wrong_secret_is_refused(kabar):
    """XEP-0114 §3: a wrong handshake → <not-authorized/> stream error, connection closed."""
    with pytest.raises(LoginFailed) as failed:
        kabar.component(secret="not-the-secret")
    assert failed.value.condition == "not-authorized", failed.value


def test_unknown_component_domain_is_refused(kabar):
    """XEP-0114 §3: a stream for a domain that is not a configured component is refused (stream error,
    e.g. <host-unknown/>); it never becomes a component."""
    with pytest.raises(LoginFailed):
        kabar.component(domain="stranger.localhost")


def test_component_cannot_forge_addresses_outside_its_domain(kabar):
    """XEP-0114 §3 / RFC 6120 §4.9.3.9: a component may only send from its own domain; a stanza 'from'
    a local user is refused and never delivered as if that user sent it."""
    bot = kabar.component()
    bob = kabar.client("bob")
    bot.message(bob.jid, "I am alice", frm="alice@localhost/fake")
    bob.expect_none(lambda s: s.name == "message" and (s.frm or "").startswith("alice@"),
                    "a message forged as alice")


def test_message_to_a_disconnected_component_bounces(kabar):
    """RFC 6120 §8.3.3.19: a stanza to a configured component that is not connected is answered with an
    error (such as <service-unavailable/> or <remote-server-not-found/>)."""
    alice = kabar.client("alice")
    mid = alice.message(COMPONENT_DOMAIN, "anyone home?")
    alice.expect_error(mid)
    alice.assert_works()
