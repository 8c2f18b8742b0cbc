"""Message carbons (XEP-0280): every resource of an account sees the whole conversation."""

from __future__ import annotations

from harness import NS_FORWARD, WAIT, plugin_client, run

NS_CARBONS = "urn:xmpp:carbons:2"


def carbons_client(srv, user, enable: bool = True):
    """A slixmpp client with the xep_0280 plugin; carbons enabled through it (§4) unless enable=False.
    `c.carbons` lists the copies slixmpp accepted as genuine ('received'/'sent', forwarded message)."""
    c = plugin_client(srv, user, {"xep_0280": {}})
    c.carbons = []
    c.xmpp.add_event_handler("carbon_received", lambda m: c.carbons.append(("received", m["carbon_received"])))
    c.xmpp.add_event_handler("carbon_sent", lambda m: c.carbons.append(("sent", m["carbon_sent"])))
    if enable:
        answer = run(c.xmpp.plugin["xep_0280"].enable(timeout=WAIT), WAIT + 5)
        assert answer["type"] == "result", f"{c.name}: enabling carbons failed: {answer}"
    return c


def expect_carbon(c, kind: str, body: str):
    """The copy (§6 received / §7 sent) of the message with `body`; returns (wrapper, forwarded message)."""
    def match(s):
        if s.name != "message":
            return False
        fwd = s.xml.find(f"{{{NS_CARBONS}}}{kind}/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")
        return fwd is not None and fwd.findtext("{jabber:client}body") == body

    st = c.expect(match, f"a <{kind}/> carbon of {body!r}")
    return st, st.xml.find(f"{{{NS_CARBONS}}}{kind}/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")


def no_copy(c, *bodies: str) -> None:
    """Listen QUIET seconds: `c` gets neither a carbon nor a plain copy of any of these messages."""
    def match(s):
        return s.name == "message" and (s.body in bodies or any(
            f.findtext("{jabber:client}body") in bodies
            for f in s.xml.iterfind(f"{{{NS_CARBONS}}}*/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message")))

    c.expect_none(match, f"a copy of one of {bodies}")


def no_carbon(c, *bodies: str) -> None:
    """Listen QUIET seconds: `c` gets no carbon of any of these messages (the message itself may come)."""
    def match(s):
        return s.name == "message" and any(
            f.findtext("{jabber:client}body") in bodies
            for f in s.xml.iterfind(f"{{{NS_CARBONS}}}*/{{{NS_FORWARD}}}forwarded/{{jabber:client}}message"))

    c.expect_none(match, f"a carbon of one of {bodies}")


def test_message_to_one_resource_is_copied_to_the_other_as_received(kabar):
    """XEP-0280 §6: a message bob sends to alice's full JID a reaches a, and alice's other carbons-enabled
    resource b gets it wrapped in <received/><forwarded/>, from alice's bare JID (§11: so b can trust
    it), with the original from/to inside. a gets no copy of what it received."""
    a = carbons_client(kabar, "alice/a")
    b = carbons_client(kabar, "alice/b")
    bob = kabar.client("bob/desk")
    bob.message("alice@localhost/a", "hai a, ini untuk kamu")
    original = a.expect_message(frm=bob.jid, body="hai a, ini untuk kamu")
    wrapper, inner = expect_carbon(b, "received", "hai a, ini untuk kamu")
    sid = original.xml.find("{urn:xmpp:sid:0}stanza-id")
    copy_sid = inner.find("{urn:xmpp:sid:0}stanza-id")
    assert sid is not None and copy_sid is not None and copy_sid.attrib == sid.attrib, \
        "XEP-0313 §3.3 / docs/MAM.md: the copy carries the same <stanza-id/> as the original"
    assert wrapper.frm == "alice@localhost" and wrapper.to == b.jid, wrapper
    assert inner.get("from") == bob.jid and inner.get("to") == "alice@localhost/a", wrapper
    assert wrapper.type == "chat", "§6: the copy has the original's type"
    assert [k for k, m in b.carbons] == ["received"], f"slixmpp did not accept the copy: {b.carbons}"
    b.expect_no_message(body="hai a, ini untuk kamu")  # no plain copy either
    assert not any(s.name == "message" and s.xml.find(f"{{{NS_CARBONS}}}received") is not None
                   for s in a.received), "a got a carbon of what it received itself"


def test_message_sent_by_one_resource_is_copied_to_the_other_as_sent(kabar):
    """XEP-0280 §7: a message alice/a sends to bob is delivered to bob and copied to alice/b as
    <sent/><forwarded/> (from alice's bare JID, original from=alice/a to=bob inside); a gets no copy."""
    a = carbons_client(kabar, "alice/a")
    b = carbons_client(kabar, "alice/b")
    bob = kabar.client("bob/desk")
    a.message("bob@localhost", "aku sudah sampai")
    bob.expect_message(frm=a.jid, body="aku sudah sampai")
    wrapper, inner = expect_carbon(b, "sent", "aku sudah sampai")
    assert wrapper.frm == "alice@localhost" and wrapper.to == b.jid, wrapper
    assert inner.get("from") == a.jid and inner.get("to") == "bob@localhost", wrapper
    assert [k for k, m in b.carbons] == ["sent"], f"slixmpp did not accept the copy: {b.carbons}"
    no_carbon(a, "aku sudah sampai")


def test_private_messages_are_not_copied(kabar):
    """XEP-0280 §8: a message carrying <private xmlns='urn:xmpp:carbons:2'/> is not copied to other
    resources, neither as <received/> (incoming) nor as <sent/> (outgoing); it is still delivered."""
    a = carbons_client(kabar, "alice/a")
    b = carbons_client(kabar, "alice/b")
    bob = kabar.client("bob/desk")
    private = f"<private xmlns='{NS_CARBONS}'/>"
    bob.message("alice@localhost/a", "rahasia masuk", extra=private)
    a.expect_message(frm=bob.jid, body="rahasia masuk")
    a.message("bob@localhost", "rahasia keluar", extra=private)
    bob.expect_message(frm=a.jid, body="rahasia keluar")
    # a normal message afterwards is copied: nothing is just slow
    bob.message("alice@localhost/a", "biasa saja")
    expect_carbon(b, "received", "biasa saja")
    no_copy(b, "rahasia masuk", "rahasia keluar")
    assert [k for k, m in b.carbons] == ["received"], b.carbons


def test_only_resources_that_enabled_carbons_get_copies_until_they_disable(kabar):
    """XEP-0280 §4/§5: copies go only to resources that enabled carbons; after <disable/> a resource
    gets none again."""
    a = carbons_client(kabar, "alice/a")
    b = carbons_client(kabar, "alice/b")
    plain = carbons_client(kabar, "alice/plain", enable=False)
    bob = kabar.client("bob/desk")
    bob.message("alice@localhost/a", "satu")
    expect_carbon(b, "received", "satu")
    answer = run(b.xmpp.plugin["xep_0280"].disable(timeout=WAIT), WAIT + 5)
    assert answer["type"] == "result", answer
    bob.message("alice@localhost/a", "dua")
    a.message("bob@localhost", "tiga")
    bob.expect_message(frm=a.jid, body="tiga")
    no_copy(b, "dua", "tiga")
    assert not any(s.xml.find(f"{{{NS_CARBONS}}}sent") is not None or s.xml.find(f"{{{NS_CARBONS}}}received")
                   is not None for s in plain.received), "a resource without carbons got copies"


def test_message_to_the_bare_jid_is_not_duplicated_by_carbons(kabar):
    """XEP-0280 §6 with RFC 6121 §8.5.2.1.1: a chat message to alice's bare JID reaches both her
    (equal-priority) resources itself; neither also gets a <received/> copy of it."""
    a = carbons_client(kabar, "alice/a")
    b = carbons_client(kabar, "alice/b")
    bob = kabar.client("bob/desk")
    bob.message("alice@localhost", "untuk semua")
    a.expect_message(frm=bob.jid, body="untuk semua")
    b.expect_message(frm=bob.jid, body="untuk semua")
    no_carbon(a, "untuk semua")
    assert not any(s.xml.find(f"{{{NS_CARBONS}}}received") is not None for s in b.received), b.received
