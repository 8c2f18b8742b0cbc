"""In-band registration (XEP-0077), off by default."""

import pytest

from harness import NS, LoginFailed, StreamClosed

REGISTER = NS["register"]


def _register_stream(srv):
    raw = srv.raw()
    raw.open()
    raw.starttls()
    return raw


def _register(raw, username, password):
    return raw.iq("set", f"<query xmlns='{REGISTER}'><username>{username}</username>"
                         f"<password>{password}</password></query>")


def test_registration_is_off_by_default(kabar):
    """XEP-0077 §3 / §7: with registration disabled the stream feature is absent and a registration
    attempt fails (an error such as <service-unavailable/> or <not-allowed/>, or a closed stream); no
    account is created."""
    raw = _register_stream(kabar)
    assert raw.features.find("register_feature:register") is None, raw.features
    try:
        answer = _register(raw, "mallory", "mallory-password")
        assert answer.type == "error", f"registration accepted while disabled: {answer}"
    except StreamClosed:
        pass
    with pytest.raises(LoginFailed):
        kabar.client("mallory", password="mallory-password")


def test_new_account_registers_and_logs_in(server):
    """XEP-0077 §3.1: the feature is advertised, the form asks for username and password, the set
    creates the account, which can then log in."""
    srv = server(config={"registration": {"enabled": True}})
    raw = _register_stream(srv)
    assert raw.features.find("register_feature:register") is not None, raw.features
    form = raw.iq("get", f"<query xmlns='{REGISTER}'/>")
    assert form.type == "result", form
    assert form.find("register:query/register:username") is not None
    assert form.find("register:query/register:password") is not None
    answer = _register(raw, "dave", "dave-password-1")
    assert answer.type == "result", answer
    raw.close()
    dave = srv.client("dave", password="dave-password-1")
    dave.assert_works()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
def test_xep0077_3_1_registered_account_logs_in_with_scram_sha1_sha256_and_plain(server, mechanism):
    """XEP-0077 §3.1 + RFC 5802 / RFC 7677: registration derives both SCRAM key sets (the server's
    hand-rolled PBKDF2 loop), and each works against slixmpp's independent SCRAM client (hashlib
    PBKDF2); PLAIN is checked against the same stored keys. A wrong password is still refused."""
    srv = server(config={"registration": {"enabled": True}})
    assert _register(_register_stream(srv), "frank", "frank-pässword-9").type == "result"
    frank = srv.client("frank", password="frank-pässword-9", mechanisms=[mechanism])
    assert frank.mechanism == mechanism
    frank.assert_works()
    with pytest.raises(LoginFailed):
        srv.client("frank", password="frank-password-9", mechanisms=[mechanism])


def test_existing_username_cannot_be_registered_again(server):
    """XEP-0077 §3.1: a taken username → <conflict/>; the original password still works."""
    srv = server(config={"registration": {"enabled": True}})
    answer = _register(_register_stream(srv), "alice", "hijack-password")
    assert answer.type == "error" and answer.error_condition == "conflict", answer
    srv.client("alice").assert_works()


@pytest.mark.parametrize("username,password", [("admin", "long-enough-pass"), ("erin", "short")])
def test_reserved_names_and_short_passwords_are_refused(server, username, password):
    """XEP-0077 §3.1: invalid registration data is refused (reserved_usernames, min_password_length);
    the account does not exist afterwards."""
    srv = server(config={"registration": {"enabled": True}})
    answer = _register(_register_stream(srv), username, password)
    assert answer.type == "error", answer
    with pytest.raises(LoginFailed):
        srv.client(username, password=password)


def test_registrations_per_ip_are_limited(server):
    """XEP-0077 §11 (security: registration flooding): past per_ip_per_hour, registrations from the same
    address are refused."""
    srv = server(config={"registration": {"enabled": True, "per_ip_per_hour": 2}})
    for name in ("reg1", "reg2"):
        assert _register(_register_stream(srv), name, "password-123").type == "result"
    answer = _register(_register_stream(srv), "reg3", "password-123")
    assert answer.type == "error", answer
