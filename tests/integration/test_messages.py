"""Message routing (RFC 6121 §8.5, RFC 6120 §8.1.2)."""


def test_message_to_bare_jid_goes_to_the_available_resource(kabar):
    """RFC 6121 §8.5.2.1.1: a chat message to the bare JID is delivered to an available resource; a
    session that never sent presence is not 'available' and does not get it."""
    alice = kabar.client("alice")
    desk = kabar.client("bob/desk")
    hidden = kabar.client("bob/hidden", presence=False)
    alice.message("bob@localhost", "hi bob")
    got = desk.expect_message(frm=alice.jid, body="hi bob")
    assert got.to in ("bob@localhost", desk.jid)
    hidden.expect_no_message(body="hi bob")


def test_message_to_full_jid_goes_only_to_that_resource(kabar):
    """RFC 6121 §8.5.3.1: a message to a full JID of a connected resource is delivered to that resource
    only."""
    alice = kabar.client("alice")
    desk = kabar.client("bob/desk")
    phone = kabar.client("bob/phone")
    alice.message("bob@localhost/phone", "just the phone")
    phone.expect_message(frm=alice.jid, body="just the phone")
    desk.expect_no_message(body="just the phone")


def test_negative_priority_resource_gets_no_bare_jid_messages(kabar):
    """RFC 6121 §8.5.2.1.1 / §4.7.2.3: a resource with negative priority MUST NOT receive messages
    addressed to the bare JID."""
    alice = kabar.client("alice")
    shy = kabar.client("bob/shy", presence=False)
    shy.presence(priority=-1)
    shy.sync()
    main = kabar.client("bob/main")
    alice.message("bob@localhost", "to the bare jid")
    main.expect_message(frm=alice.jid, body="to the bare jid")
    shy.expect_no_message(body="to the bare jid")


def test_message_to_an_unknown_resource_falls_back_to_the_bare_jid(kabar):
    """RFC 6121 §8.5.3.2.1: a chat message to a full JID with no matching resource is treated as if
    addressed to the bare JID (delivered to an available resource)."""
    alice = kabar.client("alice")
    desk = kabar.client("bob/desk")
    alice.message("bob@localhost/gone", "where are you")
    desk.expect_message(frm=alice.jid, body="where are you")


def test_sender_address_is_stamped_by_the_server(kabar):
    """RFC 6120 §8.1.2.1: the server stamps 'from' with the sender's full JID on stanzas without one."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    alice.message(bob.jid, "who am I?")
    got = bob.expect_message(body="who am I?")
    assert got.frm == alice.jid


def test_sender_address_cannot_be_forged(kabar):
    """RFC 6120 §8.1.2.1 / §4.9.3.9: a 'from' naming another account is refused (stream error
    <invalid-from/>) or overwritten; the recipient never sees a message from carol."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    alice.message(bob.jid, "I am carol", frm="carol@localhost/fake")
    bob.expect_none(lambda s: s.name == "message" and (s.frm or "").startswith("carol@"),
                    "a message that claims to come from carol")
    if alice.stream_errors:
        assert alice.stream_errors[0].error_condition == "invalid-from"


def test_message_types_and_payloads_pass_through(kabar):
    """RFC 6121 §5.2: type, id, thread and unknown extension elements reach the recipient intact."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    alice.message(bob.jid, "normal one", type="normal", id="keep-this-id",
                  extra="<thread>t-42</thread><x xmlns='urn:example:custom' a='1'><y>z</y></x>")
    got = bob.expect_message(frm=alice.jid, body="normal one")
    assert got.type in ("normal", None)
    assert got.id == "keep-this-id"
    assert got.find("client:thread").text == "t-42"
    custom = got.xml.find("{urn:example:custom}x")
    assert custom is not None and custom.get("a") == "1" and custom.find("{urn:example:custom}y").text == "z"


def test_message_to_unknown_local_user_is_not_delivered_to_anyone_else(kabar):
    """RFC 6121 §8.5.1: for a non-existent account the server silently drops a message or returns
    <service-unavailable/> — either way the sender's session keeps working."""
    alice = kabar.client("alice")
    mid = alice.message("nobody@localhost", "hello?")
    alice.expect_none(lambda s: s.id == mid and s.type != "error", "the message echoed back")
    errors = [s for s in alice.received if s.id == mid and s.type == "error"]
    if errors:
        assert errors[0].error_condition == "service-unavailable", errors[0]
    alice.assert_works()
