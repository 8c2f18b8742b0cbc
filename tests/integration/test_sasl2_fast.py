"""XEP-0388 SASL2 with XEP-0386 Bind2 and XEP-0484 FAST, driven over a raw TLS stream: one round trip
to an authenticated, bound, stream-managed session, and a token login that survives a server restart."""

import base64
import hashlib
import hmac
import os
import uuid

from harness import DEFAULT_USERS, b64

SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
SM = "urn:xmpp:sm:3"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def _q(ns, name):
    return f"{{{ns}}}{name}"


def _tls_stream(srv):
    raw = srv.raw(name="sasl2")
    raw.open()
    features = raw.starttls()
    return raw, features


def _authenticate(raw, mechanism, initial: bytes, ua_id: str, extra: str = "") -> None:
    raw.send(
        f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>"
        f"<initial-response>{b64(initial)}</initial-response>"
        f"<user-agent id='{ua_id}'><software>kabar-tests</software><device>ci</device></user-agent>"
        f"{extra}</authenticate>"
    )


def _scram_sha256_sasl2(raw, user, password, ua_id, extra=""):
    """SCRAM-SHA-256 (RFC 7677) inside SASL2; returns the <success/> element's Stanza."""
    cnonce = base64.b64encode(os.urandom(18)).decode()
    gs2 = "n,,"
    first_bare = f"n={user},r={cnonce}"
    _authenticate(raw, "SCRAM-SHA-256", (gs2 + first_bare).encode(), ua_id, extra)
    challenge = raw.expect("challenge", SASL2)
    server_first = base64.b64decode(challenge.xml.text).decode()
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert fields["r"].startswith(cnonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c={b64(gs2.encode())},r={fields['r']}"
    auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored, auth_msg, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    raw.send(f"<response xmlns='{SASL2}'>{b64((without_proof + ',p=' + b64(proof)).encode())}</response>")
    success = raw.recv()
    assert success.name == "success" and success.ns == SASL2, f"expected SASL2 success, got {success}"
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected_v = "v=" + b64(hmac.new(server_key, auth_msg, hashlib.sha256).digest())
    additional = success.xml.find(_q(SASL2, "additional-data"))
    assert additional is not None and base64.b64decode(additional.text).decode() == expected_v, \
        "server signature must prove the server knows the password's ServerKey (RFC 5802 §5)"
    return success


def _ht_initial(user: str, token: str) -> bytes:
    return user.encode() + b"\0" + hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()


def _self_message_roundtrip(raw, jid):
    raw.send(f"<message to='{jid}' type='chat' id='m1'><body>still here</body></message>")
    msg = raw.expect("message", "client")
    assert msg.body == "still here"


def test_xep0388_features_offer_sasl2_with_bind2_and_fast_inline(kabar):
    """XEP-0388 §2.1, XEP-0386 §2, XEP-0484 §3: SASL2 mechanisms with Bind2 and FAST advertised inline."""
    raw, features = _tls_stream(kabar)
    auth = features.xml.find(_q(SASL2, "authentication"))
    assert auth is not None, f"no SASL2 feature in {features}"
    mechs = [m.text for m in auth.findall(_q(SASL2, "mechanism"))]
    assert "SCRAM-SHA-256" in mechs and "SCRAM-SHA-256-PLUS" in mechs
    inline = auth.find(_q(SASL2, "inline"))
    assert inline.find(_q(BIND2, "bind")) is not None
    bind_features = [f.get("var") for f in inline.find(_q(BIND2, "bind")).iter(_q(BIND2, "feature"))]
    assert SM in bind_features and "urn:xmpp:carbons:2" in bind_features
    fast = [m.text for m in inline.find(_q(FAST, "fast")).findall(_q(FAST, "mechanism"))]
    assert "HT-SHA-256-NONE" in fast
    raw.close()


def test_xep0386_one_round_trip_to_a_bound_stream_managed_session_and_xep0484_token_after_restart(server):
    """XEP-0388 §2.5 (no restart), XEP-0386 §3 (bind + inline SM), XEP-0484 §4 (token issued, then a
    one-round-trip login with it works after the server restarts; a wrong token is refused)."""
    srv = server()
    ua = str(uuid.uuid4())
    raw, _ = _tls_stream(srv)
    extra = (f"<bind xmlns='{BIND2}'><tag>kabartest</tag><enable xmlns='{SM}' resume='true'/>"
             f"<enable xmlns='urn:xmpp:carbons:2'/></bind>"
             f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>")
    success = _scram_sha256_sasl2(raw, "alice", DEFAULT_USERS["alice"], ua, extra)
    jid = success.xml.find(_q(SASL2, "authorization-identifier")).text
    assert jid.startswith("alice@localhost/kabartest."), jid
    enabled = success.xml.find(f"{_q(BIND2, 'bound')}/{_q(SM, 'enabled')}")
    assert enabled is not None and enabled.get("resume") == "true" and enabled.get("id")
    token_el = success.xml.find(_q(FAST, "token"))
    assert token_el is not None and token_el.get("expiry")
    token = token_el.get("token")
    _self_message_roundtrip(raw, jid)  # no stream restart was needed
    raw.close()

    srv.restart()

    raw, _ = _tls_stream(srv)
    _authenticate(raw, "HT-SHA-256-NONE", _ht_initial("alice", token), ua,
                  f"<bind xmlns='{BIND2}'><tag>kabartest</tag></bind>")
    success = raw.recv()
    assert success.name == "success" and success.ns == SASL2, f"FAST login failed: {success}"
    additional = base64.b64decode(success.xml.find(_q(SASL2, "additional-data")).text)
    assert additional == hmac.new(token.encode(), b"Responder", hashlib.sha256).digest()
    jid2 = success.xml.find(_q(SASL2, "authorization-identifier")).text
    assert jid2 == jid, "the same user-agent id gets the same resource"
    _self_message_roundtrip(raw, jid2)
    raw.close()

    raw, _ = _tls_stream(srv)
    _authenticate(raw, "HT-SHA-256-NONE", _ht_initial("alice", token + "x"), ua)
    failure = raw.recv()
    assert failure.name == "failure" and failure.ns == SASL2
    assert failure.xml.find(_q(SASL, "not-authorized")) is not None
    raw.close()


def test_xep0484_invalidate_revokes_the_token(kabar):
    """XEP-0484 §5: <fast invalidate='true'/> logs in once more and revokes the token."""
    ua = str(uuid.uuid4())
    raw, _ = _tls_stream(kabar)
    success = _scram_sha256_sasl2(raw, "bob", DEFAULT_USERS["bob"], ua,
                                  f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>")
    token = success.xml.find(_q(FAST, "token")).get("token")
    raw.close()

    raw, _ = _tls_stream(kabar)
    _authenticate(raw, "HT-SHA-256-NONE", _ht_initial("bob", token), ua, f"<fast xmlns='{FAST}' invalidate='true'/>")
    assert raw.recv().name == "success"
    raw.close()

    raw, _ = _tls_stream(kabar)
    _authenticate(raw, "HT-SHA-256-NONE", _ht_initial("bob", token), ua)
    assert raw.recv().name == "failure"
    raw.close()


def test_xep0388_wrong_password_fails_like_an_unknown_user(kabar):
    """XEP-0388 §2.6 + RFC 6120 §6.5.10: SASL2 failure is <not-authorized/>, the same for a wrong
    password and a missing account."""
    conditions = []
    for user, password in (("alice", "wrong"), ("nobody", "wrong")):
        raw, _ = _tls_stream(kabar)
        cnonce = base64.b64encode(os.urandom(18)).decode()
        _authenticate(raw, "SCRAM-SHA-256", f"n,,n={user},r={cnonce}".encode(), str(uuid.uuid4()))
        challenge = raw.expect("challenge", SASL2)
        server_first = base64.b64decode(challenge.xml.text).decode()
        fields = dict(kv.split("=", 1) for kv in server_first.split(","))
        bogus = f"c={b64(b'n,,')},r={fields['r']},p={b64(bytes(32))}"
        raw.send(f"<response xmlns='{SASL2}'>{b64(bogus.encode())}</response>")
        failure = raw.recv()
        assert failure.name == "failure" and failure.ns == SASL2
        conditions.append([c.tag for c in failure.xml][0])
        raw.close()
    assert conditions[0] == conditions[1] == _q(SASL, "not-authorized")
