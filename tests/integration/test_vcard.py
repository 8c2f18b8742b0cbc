"""vcard-temp (XEP-0054)."""

from harness import NS

VCARD = NS["vcard"]


def test_own_vcard_is_stored_and_others_can_fetch_it(server):
    """XEP-0054 §3.2: a user publishes a vCard with an iq set (no 'to'); §3.1/§3.3 the user and anyone
    else can retrieve it (the server answers for the bare JID); it is persistent."""
    srv = server()
    alice = srv.client("alice")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>Alice Liddell</FN><NICKNAME>ally</NICKNAME>"
                       "<EMAIL><INTERNET/><USERID>alice@example.org</USERID></EMAIL></vCard>")
    own = alice.iq_ok("get", f"<vCard xmlns='{VCARD}'/>")
    assert own.find("vcard:vCard/vcard:FN").text == "Alice Liddell"

    bob = srv.client("bob")
    card = bob.iq_ok("get", f"<vCard xmlns='{VCARD}'/>", to="alice@localhost")
    assert card.frm in (None, "alice@localhost")
    assert card.find("vcard:vCard/vcard:FN").text == "Alice Liddell"
    assert card.find("vcard:vCard/vcard:NICKNAME").text == "ally"
    assert card.find("vcard:vCard/vcard:EMAIL/vcard:USERID").text == "alice@example.org"

    srv.restart()
    bob = srv.client("bob", name="bob-again")
    card = bob.iq_ok("get", f"<vCard xmlns='{VCARD}'/>", to="alice@localhost")
    assert card.find("vcard:vCard/vcard:FN").text == "Alice Liddell"


def test_vcard_is_replaced_not_merged(kabar):
    """XEP-0054 §3.2: a new set replaces the whole vCard."""
    alice = kabar.client("alice")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>Old</FN><NICKNAME>gone</NICKNAME></vCard>")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>New</FN></vCard>")
    card = alice.iq_ok("get", f"<vCard xmlns='{VCARD}'/>")
    assert card.find("vcard:vCard/vcard:FN").text == "New"
    assert card.find("vcard:vCard/vcard:NICKNAME") is None


def test_vcard_of_user_without_one(kabar):
    """XEP-0054 §3.1: with no vCard stored the server returns an empty <vCard/> or <item-not-found/>."""
    bob = kabar.client("bob")
    answer = bob.iq("get", f"<vCard xmlns='{VCARD}'/>", to="carol@localhost")
    if answer.type == "result":
        card = answer.find("vcard:vCard")
        assert card is None or len(card) == 0, answer
    else:
        assert answer.error_condition == "item-not-found", answer


def test_nobody_can_set_another_users_vcard(kabar):
    """XEP-0054 §3.2: only the owner may publish; a set addressed to someone else is refused and their
    vCard is unchanged."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>Alice</FN></vCard>")
    answer = bob.iq("set", f"<vCard xmlns='{VCARD}'><FN>Pwned</FN></vCard>", to="alice@localhost")
    assert answer.type == "error", answer
    card = bob.iq_ok("get", f"<vCard xmlns='{VCARD}'/>", to="alice@localhost")
    assert card.find("vcard:vCard/vcard:FN").text == "Alice"


def test_vcard_with_photo_round_trips(kabar):
    """XEP-0054 / XEP-0153: a vCard carrying a base64 PHOTO (tens of kB) comes back byte for byte."""
    import base64
    import os

    photo = base64.b64encode(os.urandom(24_000)).decode()
    alice = kabar.client("alice")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                       f"<BINVAL>{photo}</BINVAL></PHOTO></vCard>")
    bob = kabar.client("bob")
    card = bob.iq_ok("get", f"<vCard xmlns='{VCARD}'/>", to="alice@localhost")
    assert "".join(card.find("vcard:vCard/vcard:PHOTO/vcard:BINVAL").text.split()) == photo
