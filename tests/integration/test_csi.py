"""XEP-0352 Client State Indication: the server's policy for an inactive client (docs/PROTOCOL.md).

While a client says it is <inactive/>, contacts' availability updates wait (only the latest per contact
is kept) and messages still go out at once — a message also flushes what waited, in order. <active/>
delivers what waited.
"""

from harness import make_mutual

NS_CSI = "urn:xmpp:csi:0"


def test_xep0352_csi_is_advertised_as_a_stream_feature(kabar):
    raw = kabar.raw()
    raw.login("alice")
    # The features of the authenticated stream (the last one opened).
    assert any(c.tag == f"{{{NS_CSI}}}csi" for c in raw.features.xml), raw.features


def test_xep0352_inactive_client_gets_presence_only_when_active_again_latest_only(kabar):
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    alice.send(f"<inactive xmlns='{NS_CSI}'/>")
    alice.sync()
    bob.presence(show="away", status="first")
    bob.presence(show="dnd", status="second")
    alice.expect_no_presence()
    alice.send(f"<active xmlns='{NS_CSI}'/>")
    held = alice.expect_presence(type=None)
    assert held.find("client:status").text == "second", held
    alice.expect_no_presence()


def test_xep0352_messages_reach_an_inactive_client_at_once_and_flush_held_presence(kabar):
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    alice.send(f"<inactive xmlns='{NS_CSI}'/>")
    alice.sync()
    bob.presence(show="away", status="busy now")
    alice.expect_no_presence()
    bob.message("alice@localhost", "urgent")
    # The held presence goes out first, then the message: the client sees them in causal order.
    alice.expect_presence(type=None)
    alice.expect_message(frm="bob@localhost", body="urgent")
