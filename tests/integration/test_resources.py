"""Resource binding (RFC 6120 §7): conflicts, server-assigned resources, session limits."""

import pytest

from harness import DEFAULT_USERS


def test_same_resource_replaces_the_old_session_with_conflict(kabar):
    """RFC 6120 §7.7.2.2 with resource_conflict = "replace" (the default): the second login for
    alice/phone wins; the first session gets a <conflict/> stream error and is closed."""
    first = kabar.client("alice/phone", name="phone#1")
    first.assert_works()
    second = kabar.client("alice/phone", name="phone#2")
    assert second.jid == "alice@localhost/phone"
    assert first.expect_stream_error() == "conflict"
    first.expect_disconnected()
    second.assert_works()


def test_same_resource_is_refused_when_configured(server):
    """RFC 6120 §7.7.2.2 with resource_conflict = "refuse": the new bind fails with <conflict/> and the
    existing session is untouched."""
    srv = server(config={"c2s": {"resource_conflict": "refuse"}})
    first = srv.client("alice/phone")
    raw = srv.raw()
    raw.open()
    raw.starttls()
    assert raw.auth_scram("alice", DEFAULT_USERS["alice"]).ok
    raw.restart()
    answer = raw.bind("phone")
    assert answer.type == "error" and answer.error_condition == "conflict", answer
    first.expect_no_message()  # no stream error either
    assert not first.stream_errors
    first.assert_works()


def test_same_resource_gets_a_fresh_one_when_configured_random(server):
    """RFC 6120 §7.7.2.2 with resource_conflict = "random": the new session is bound to a different,
    server-generated resource and both sessions stay up."""
    srv = server(config={"c2s": {"resource_conflict": "random"}})
    first = srv.client("alice/phone", name="phone#1")
    second = srv.client("alice/phone", name="phone#2")
    assert second.jid.startswith("alice@localhost/") and second.jid != first.jid
    first.assert_works()
    second.assert_works()
    assert not first.stream_errors


def test_server_generates_a_resource_when_the_client_asks_for_none(kabar):
    """RFC 6120 §7.6: a bind request without <resource/> gets a server-generated, non-empty resource."""
    raw = kabar.raw()
    raw.login("alice", resource=None)
    bare, _, resource = raw.jid.partition("/")
    assert bare == "alice@localhost" and resource
    raw.message_self_roundtrip()


def test_sessions_per_account_are_limited(server):
    """RFC 6120 §7.6.2.1: beyond max_sessions_per_account a bind fails with <resource-constraint/>."""
    srv = server(config={"limits": {"max_sessions_per_account": 2}})
    one = srv.client("alice/one")
    two = srv.client("alice/two")
    raw = srv.raw()
    raw.open()
    raw.starttls()
    assert raw.auth_scram("alice", DEFAULT_USERS["alice"]).ok
    raw.restart()
    answer = raw.bind("three")
    assert answer.type == "error" and answer.error_condition == "resource-constraint", answer
    one.assert_works()
    two.assert_works()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_two_resources_of_one_account_coexist(kabar, mechanism):
    """RFC 6120 §7.1: one account may have several sessions, each with its own full JID."""
    a = kabar.client("alice/a", mechanisms=[mechanism])
    b = kabar.client("alice/b", mechanisms=[mechanism])
    a.message(b.jid, "hop")
    b.expect_message(frm=a.jid, body="hop")


def test_invalid_resource_is_bad_request(kabar):
    """RFC 6120 §7.7.2.1 / RFC 7622 §3.4: a resourcepart longer than 1023 bytes is invalid →
    <bad-request/>; the stream stays usable for a valid bind."""
    raw = kabar.raw()
    raw.open()
    raw.starttls()
    assert raw.auth_scram("alice", DEFAULT_USERS["alice"]).ok
    raw.restart()
    answer = raw.bind("r" * 1100)
    assert answer.type == "error" and answer.error_condition == "bad-request", answer
    assert raw.bind("fine").type == "result"
    raw.message_self_roundtrip()
