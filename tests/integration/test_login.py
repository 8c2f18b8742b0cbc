"""Logging in: TLS (RFC 6120 §5, XEP-0368), SASL (RFC 6120 §6) with SCRAM (RFC 5802, RFC 7677), channel
binding (RFC 5929, RFC 9266, XEP-0440) and PLAIN (RFC 4616)."""

import base64

import pytest

from harness import DEFAULT_USERS, NS, LoginFailed, StreamClosed

TRANSPORTS = ["starttls", "direct_tls"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_login_succeeds_with_each_mechanism(kabar, mechanism, transport):
    """RFC 6120 §6.4 (SASL negotiation) with RFC 7677 SCRAM-SHA-256, RFC 5802 SCRAM-SHA-1 and RFC 4616 PLAIN,
    over STARTTLS (RFC 6120 §5.4) and over direct TLS (XEP-0368). slixmpp checks the server signature."""
    alice = kabar.client("alice", mechanisms=[mechanism], direct_tls=transport == "direct_tls")
    assert alice.mechanism == mechanism
    alice.assert_works()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_login_succeeds_with_scram_plus_channel_binding(kabar, mechanism, cb_type, transport):
    """RFC 5802 §6 / RFC 7677 SCRAM-*-PLUS with RFC 9266 tls-exporter and RFC 5929 tls-server-end-point
    binding data, advertised per XEP-0440; the server's final message proves it knows the password."""
    raw = kabar.raw(direct_tls=transport == "direct_tls")
    raw.open()
    if transport == "starttls":
        raw.starttls()
    assert mechanism in raw.mechanisms
    assert cb_type in raw.channel_binding_types
    res = raw.auth_scram("alice", DEFAULT_USERS["alice"], mechanism, cb_type=cb_type)
    assert res.ok, f"{mechanism} with {cb_type} failed: {res}"
    assert res.server_verified, "server-final-message v= does not match the server signature"
    raw.restart()
    assert raw.bind("plus").type == "result"
    raw.message_self_roundtrip()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_channel_binding_types_and_plus_mechanisms_are_advertised(kabar, transport):
    """XEP-0440 §2: <sasl-channel-binding/> lists tls-exporter and tls-server-end-point; RFC 5802 §6: the
    -PLUS variants are offered over TLS."""
    raw = kabar.raw(direct_tls=transport == "direct_tls")
    raw.open()
    if transport == "starttls":
        raw.starttls()
    assert {"tls-exporter", "tls-server-end-point"} <= set(raw.channel_binding_types), raw.features
    assert {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"} <= set(raw.mechanisms)


def test_scram_plus_with_wrong_channel_binding_data_fails(kabar):
    """RFC 5802 §6: the server MUST fail authentication when the channel binding data does not match its
    own view of the channel (this is what defeats a TLS man in the middle)."""
    raw = kabar.raw()
    raw.open()
    raw.starttls()
    res = raw.auth_scram("alice", DEFAULT_USERS["alice"], "SCRAM-SHA-256-PLUS", cb_type="tls-exporter",
                         cb_data=bytes(32))
    assert not res.ok
    assert res.condition == "not-authorized", res


def test_scram_downgrade_flag_y_is_refused_when_plus_is_offered(kabar):
    """RFC 5802 §6: a client sending gs2 flag "y" says it supports binding but believes the server does
    not; a server that does offer -PLUS MUST then fail the authentication (downgrade detection)."""
    raw = kabar.raw()
    raw.open()
    raw.starttls()
    assert "SCRAM-SHA-256-PLUS" in raw.mechanisms
    res = raw.auth_scram("alice", DEFAULT_USERS["alice"], "SCRAM-SHA-256", flag="y")
    assert not res.ok, "server accepted gs2 flag 'y' although it advertises SCRAM-SHA-256-PLUS"


def test_scram_plus_with_unsupported_binding_type_fails(kabar):
    """RFC 5802 §6/§7: a channel binding type the server does not support (tls-unique is not defined for
    TLS 1.3, RFC 9266 §4) must make authentication fail."""
    raw = kabar.raw()
    raw.open()
    raw.starttls()
    res = raw.auth_scram("alice", DEFAULT_USERS["alice"], "SCRAM-SHA-256-PLUS", cb_type="tls-unique",
                         cb_data=bytes(12))
    assert not res.ok


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_wrong_password_fails_with_not_authorized(kabar, mechanism):
    """RFC 6120 §6.5.10: bad credentials → <failure><not-authorized/></failure>; no session."""
    with pytest.raises(LoginFailed) as failed:
        kabar.client("alice", password="not-her-password", mechanisms=[mechanism])
    assert failed.value.kind == "auth-failed"
    assert failed.value.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_unknown_user_fails_exactly_like_a_wrong_password(kabar, mechanism):
    """RFC 6120 §6.5.10 and RFC 6120 §13.9.4 (no account enumeration): an unknown user gets the same
    <not-authorized/> as a wrong password."""
    with pytest.raises(LoginFailed) as failed:
        kabar.client("mallory", password="whatever-1", mechanisms=[mechanism])
    assert failed.value.kind == "auth-failed"
    assert failed.value.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_challenge_for_unknown_user_looks_like_a_real_one(kabar, mechanism):
    """RFC 5802 §9 / RFC 6120 §13.9.4: the server-first-message for a non-existent user must not give it
    away: same iteration count and salt length as a real user, and the same salt when asked twice."""

    def challenge(user, password):
        raw = kabar.raw()
        raw.open()
        raw.starttls()
        res = raw.auth_scram(user, password, mechanism)
        raw.close()
        assert not res.ok and res.condition == "not-authorized", res
        assert res.challenge is not None, "no server-first-message: the failure came before the challenge"
        fields = dict(kv.split("=", 1) for kv in res.challenge.decode().split(","))
        return int(fields["i"]), base64.b64decode(fields["s"])

    real_i, real_salt = challenge("alice", "wrong-password")
    ghost_i, ghost_salt = challenge("ghost", "wrong-password")
    again_i, again_salt = challenge("ghost", "other-password")
    assert ghost_i == real_i
    assert len(ghost_salt) == len(real_salt)
    assert ghost_salt == again_salt, "the fake salt changes between attempts: the user is visibly unknown"


def test_a_failed_attempt_can_be_retried_on_the_same_stream(kabar):
    """RFC 6120 §6.4.5: after a SASL failure the server SHOULD allow the client to retry (at least two
    attempts) on the same stream."""
    raw = kabar.raw()
    raw.open()
    raw.starttls()
    assert not raw.auth_scram("alice", "wrong").ok
    res = raw.auth_scram("alice", DEFAULT_USERS["alice"])
    assert res.ok and res.server_verified
    raw.restart()
    assert raw.bind("retry").type == "result"
    raw.message_self_roundtrip()


def test_tls_is_required_before_authentication(kabar):
    """RFC 6120 §5.3.1 / §5.4.1: with require_encryption the pre-TLS features mark <starttls/> as
    <required/> and PLAIN is not offered in the clear; a PLAIN attempt over plain TCP does not succeed."""
    raw = kabar.raw()
    features = raw.open()
    starttls = features.find("tls:starttls")
    assert starttls is not None, f"no <starttls/> offered: {features}"
    assert starttls.find("tls:required", NS) is not None, f"<starttls/> not marked <required/>: {features}"
    assert "PLAIN" not in raw.mechanisms
    try:
        res = raw.auth_plain("alice", DEFAULT_USERS["alice"])
        assert not res.ok, "PLAIN succeeded over an unencrypted connection"
    except StreamClosed:
        pass  # closing the stream (after a stream error) is also a refusal


def test_certificate_is_valid_for_the_domain_and_signed_by_the_generated_ca(kabar):
    """RFC 6120 §13.7.2 / RFC 6125: the certificate presented on both ports chains to <data>/tls/ca.pem
    and names the domain (checked by the TLS handshake itself, which verifies against that CA only)."""
    for direct in (False, True):
        raw = kabar.raw(direct_tls=direct)
        if not direct:
            raw.open()
            raw.starttls()
        assert raw.tls is not None
        raw.close()


def test_repeated_failures_from_one_address_are_throttled(server):
    """RFC 6120 §6.5.11 <temporary-auth-failure/> and §13.9.1 (dictionary attacks): past
    limits.auth_failures_per_ip_per_minute, even a correct password is refused for a while."""
    srv = server(config={"limits": {"auth_failures_per_ip_per_minute": 3,
                                    "auth_failures_per_account_per_minute": 100}})
    for i in range(3):
        with pytest.raises(LoginFailed):
            srv.client("alice", password=f"guess-{i}", mechanisms=["PLAIN"], name=f"guess{i}")
    with pytest.raises(LoginFailed) as failed:
        srv.client("bob", mechanisms=["PLAIN"])
    assert failed.value.condition == "temporary-auth-failure", failed.value


def test_repeated_failures_for_one_account_are_throttled(server):
    """RFC 6120 §6.5.11 / §13.9.1: past limits.auth_failures_per_account_per_minute that account is
    refused with <temporary-auth-failure/> while other accounts still log in."""
    srv = server(config={"limits": {"auth_failures_per_ip_per_minute": 100,
                                    "auth_failures_per_account_per_minute": 2}})
    for i in range(2):
        with pytest.raises(LoginFailed):
            srv.client("alice", password=f"guess-{i}", mechanisms=["SCRAM-SHA-256"], name=f"guess{i}")
    with pytest.raises(LoginFailed) as failed:
        srv.client("alice", mechanisms=["SCRAM-SHA-256"])
    assert failed.value.condition == "temporary-auth-failure", failed.value
    srv.client("bob").assert_works()
