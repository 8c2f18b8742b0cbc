"""Hostile or broken input ends only the offending stream, with the stream error RFC 6120 §4.9.3 names,
while everyone else carries on. Each test keeps a separately logged-in witness (carol) and checks she can
message herself before and after."""

import pytest

from harness import DEFAULT_USERS, NS, StreamClosed, stream_header


@pytest.fixture
def witness(kabar):
    carol = kabar.client("carol", name="witness")
    carol.assert_works()
    return carol


def _stage(srv, stage):
    """A raw stream at the given stage: 'pre-tls' (stream opened), 'authenticated' (TLS, SASL, bound)."""
    raw = srv.raw()
    if stage == "pre-tls":
        raw.open()
    else:
        raw.login("alice", resource="bad")
    return raw


# -- RFC 6120 §4.9.3.18 <restricted-xml/> and §11.1 (no DTD, comments, PIs, entity declarations)

def test_dtd_before_the_stream_is_restricted_xml(kabar, witness):
    """RFC 6120 §11.1 / §4.9.3.18: a DOCTYPE with an entity declaration → <restricted-xml/>."""
    raw = kabar.raw()
    header = stream_header().replace("<?xml version='1.0'?>", "")
    raw.send("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY boom 'kaboom'>]>" + header)
    assert raw.expect_stream_error() == "restricted-xml"
    assert raw.wait_closed()
    witness.assert_works()


def test_billion_laughs_is_restricted_xml(kabar, witness):
    """RFC 6120 §11.1 (and the entity-expansion attack it prevents): nested entity declarations are refused before
    any expansion, with <restricted-xml/>, and the server stays responsive."""
    raw = kabar.raw()
    laughs = "".join(f"<!ENTITY l{i} '" + f"&l{i - 1};" * 10 + "'>" for i in range(1, 10))
    header = stream_header().replace("<?xml version='1.0'?>", "")
    raw.send(f"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY l0 'lol'>{laughs}]>{header}"
             "<message><body>&l9;</body></message>")
    assert raw.expect_stream_error() == "restricted-xml"
    witness.assert_works()


@pytest.mark.parametrize("stage", ["pre-tls", "authenticated"])
@pytest.mark.parametrize("payload", [
    pytest.param("<!-- a comment -->", id="comment"),
    pytest.param("<?evil instruction?>", id="processing-instruction"),
    pytest.param("<message to='carol@localhost'><body>x</body><!-- hi --></message>", id="comment-inside-stanza"),
])
def test_comments_and_processing_instructions_are_restricted_xml(kabar, witness, stage, payload):
    """RFC 6120 §11.1 / §4.9.3.18: comments and processing instructions inside the stream →
    <restricted-xml/>."""
    raw = _stage(kabar, stage)
    raw.send(payload)
    assert raw.expect_stream_error() == "restricted-xml"
    assert raw.wait_closed()
    witness.assert_works()
    witness.expect_no_message(body="x")


def test_undeclared_entity_reference_is_refused(kabar, witness):
    """RFC 6120 §11.1: only the five predefined entities may be used; an undeclared one ends the stream
    (<restricted-xml/>, or <not-well-formed/> since it is also an XML well-formedness error)."""
    raw = _stage(kabar, "authenticated")
    raw.send("<message to='carol@localhost'><body>&boom;</body></message>")
    assert raw.expect_stream_error() in ("restricted-xml", "not-well-formed")
    witness.assert_works()


# -- RFC 6120 §4.9.3.13 <not-well-formed/>

@pytest.mark.parametrize("stage", ["pre-tls", "authenticated"])
@pytest.mark.parametrize("payload", [
    pytest.param(b"<message to='carol@localhost'><body>oops</message>", id="mismatched-tags"),
    pytest.param(b"<message to='carol@localhost' to='bob@localhost'><body>x</body></message>", id="duplicate-attribute"),
    pytest.param(b"<message to='carol@localhost'><body>\x01</body></message>", id="control-character"),
    pytest.param(b"<message to='carol@localhost'><foo:body>x</foo:body></message>", id="unbound-prefix"),
    pytest.param(b"<message to=carol@localhost><body>x</body></message>", id="bad-attribute-quoting"),
])
def test_malformed_xml_is_not_well_formed(kabar, witness, stage, payload):
    """RFC 6120 §4.9.3.13: XML that violates well-formedness (or namespace well-formedness) →
    <not-well-formed/>, and nothing of it is delivered."""
    raw = _stage(kabar, stage)
    raw.send(payload)
    assert raw.expect_stream_error() == "not-well-formed"
    assert raw.wait_closed()
    witness.assert_works()
    witness.expect_no_message(body="x")


def test_invalid_utf8_is_refused(kabar, witness):
    """RFC 6120 §11.6 / §4.9.3.22: bytes that are not UTF-8 → <unsupported-encoding/> (or
    <not-well-formed/>)."""
    raw = _stage(kabar, "authenticated")
    raw.send(b"<message to='carol@localhost'><body>\xff\xfe\xc3(</body></message>")
    assert raw.expect_stream_error() in ("unsupported-encoding", "not-well-formed")
    witness.assert_works()


@pytest.mark.parametrize("payload", [
    pytest.param(b"hello world", id="text-before-the-root"),
    pytest.param(b"\xff\xfe\xfd", id="invalid-utf8-before-the-root"),
    pytest.param(b"  \x01<stream>", id="control-character-before-the-root"),
])
def test_garbage_instead_of_a_stream_header_is_refused_at_once(kabar, witness, payload):
    """RFC 6120 §4.9.3.13 (and §4.9.3.22 for bytes that are not UTF-8): input that cannot begin an XML
    document — binary, text before the root element, invalid UTF-8 — is refused as soon as it is read
    (not left hanging until the unauthenticated timeout), and everyone else carries on."""
    raw = kabar.raw()
    raw.send(payload)
    assert raw.expect_stream_error() in ("not-well-formed", "unsupported-encoding")
    assert raw.wait_closed()
    witness.assert_works()


def test_tls_client_hello_on_the_starttls_port_gets_direct_tls(kabar, witness):
    """XEP-0368 leniency: a client that starts TLS straight away on the STARTTLS port (several try
    direct TLS first) gets a TLS handshake there instead of an error, then a normal stream."""
    raw = kabar.raw(direct_tls=True, port=kabar.c2s_port)
    features = raw.open()
    assert "SCRAM-SHA-256" in raw.mechanisms, f"no SASL after direct TLS on the STARTTLS port: {features}"
    raw.close()
    witness.assert_works()


def test_plaintext_on_the_direct_tls_port_is_dropped(kabar, witness):
    """XEP-0368: the direct TLS port expects a TLS handshake; XML in the clear gets the connection closed."""
    raw = kabar.raw(port=kabar.tls_port)
    raw.send(stream_header())
    reply = raw.read_until_eof()
    assert reply is not None, "server kept a non-TLS connection open on the direct TLS port"
    assert not reply.startswith(b"<"), f"the direct TLS port answered in clear XML: {reply[:200]!r}"
    witness.assert_works()


# -- RFC 6120 §4.9.3.12 / §6 / §7: nothing is routed before authentication and binding

@pytest.mark.parametrize("stage", ["plain", "after-starttls", "after-sasl-before-bind"])
def test_stanza_before_authentication_is_not_authorized(kabar, witness, stage):
    """RFC 6120 §4.9.3.12 (and §6.4 / §7.1): a <message/> sent before SASL (or before binding a
    resource) → <not-authorized/>, and it is not delivered."""
    raw = kabar.raw()
    raw.open()
    if stage != "plain":
        raw.starttls()
    if stage == "after-sasl-before-bind":
        assert raw.auth_scram("alice", DEFAULT_USERS["alice"]).ok
        raw.restart()
    raw.send("<message to='carol@localhost' type='chat' id='sneaky'><body>unauthenticated</body></message>")
    assert raw.expect_stream_error() == "not-authorized"
    assert raw.wait_closed()
    witness.assert_works()
    witness.expect_no_message(body="unauthenticated")


# -- RFC 6120 §4.9.3.17 <policy-violation/>: configured limits

def test_oversized_stanza_is_policy_violation(server):
    """RFC 6120 §13.12 (resource exhaustion) / §4.9.3.17: a stanza larger than limits.max_stanza_bytes
    → <policy-violation/>; one comfortably under the limit is delivered."""
    srv = server(config={"limits": {"max_stanza_bytes": 8192}})
    witness = srv.client("carol", name="witness")
    witness.assert_works()
    raw = srv.raw()
    raw.login("alice", resource="big")
    fits = "f" * 6000
    raw.send(f"<message to='{raw.jid}' type='chat' id='fits'><body>{fits}</body></message>")
    while True:
        st = raw.recv()
        if st.name == "message" and st.body == fits:
            break
    raw.send(f"<message to='carol@localhost' type='chat' id='huge'><body>{'A' * 12000}</body></message>")
    assert raw.expect_stream_error() == "policy-violation"
    assert raw.wait_closed()
    witness.assert_works()
    witness.expect_no_message(frm="alice@localhost")


def test_oversized_stream_header_is_policy_violation(server):
    """RFC 6120 §13.12 (resource exhaustion) / §4.9.3.17: the stream header is bounded like a stanza —
    an unauthenticated peer must not make the server buffer an endless <stream:stream ...> (here 20 kB of
    attributes against max_stanza_bytes = 8192)."""
    srv = server(config={"limits": {"max_stanza_bytes": 8192}})
    witness = srv.client("carol", name="witness")
    raw = srv.raw()
    header = stream_header().rstrip(">")
    raw.send(header + " " + " ".join(f"a{i}='b'" for i in range(2500)))
    assert raw.expect_stream_error() == "policy-violation"
    assert raw.wait_closed()
    witness.assert_works()


def test_too_deep_xml_is_policy_violation(server):
    """RFC 6120 §13.12 / §4.9.3.17: nesting deeper than limits.max_xml_depth → <policy-violation/>."""
    srv = server(config={"limits": {"max_xml_depth": 8}})
    witness = srv.client("carol", name="witness")
    raw = srv.raw()
    raw.login("alice", resource="deep")
    raw.send("<message to='carol@localhost'><body>deep</body>" + "<x xmlns='urn:example:deep'>" * 30
             + "</x>" * 30 + "</message>")
    assert raw.expect_stream_error() == "policy-violation"
    witness.assert_works()
    witness.expect_no_message(body="deep")


@pytest.mark.slow
def test_unauthenticated_connections_time_out(server):
    """RFC 6120 §4.9.3.4 <connection-timeout/> with limits.unauthenticated_timeout_secs: a connection that
    does not authenticate in time is closed (with <connection-timeout/> if a stream error is sent)."""
    srv = server(config={"limits": {"unauthenticated_timeout_secs": 2}})
    witness = srv.client("carol", name="witness")
    raw = srv.raw()
    raw.open()
    conditions = []
    try:
        while True:
            st = raw.recv(timeout=20)
            if st.ns == NS["stream"] and st.name == "error":
                conditions.append(st.error_condition)
    except StreamClosed:
        pass
    except TimeoutError:
        pytest.fail("the unauthenticated connection is still open 20 s after its last stanza (limit: 2 s)")
    assert conditions in ([], ["connection-timeout"]), conditions
    witness.assert_works()


# -- stream header errors

def test_stream_to_unknown_host_is_host_unknown(kabar, witness):
    """RFC 6120 §4.9.3.6: a stream header 'to' a domain the server does not serve → <host-unknown/>."""
    raw = kabar.raw()
    raw.send(stream_header(to="example.org"))
    assert raw.expect_stream_error() == "host-unknown"
    witness.assert_works()


def test_wrong_stream_namespace_is_invalid_namespace(kabar, witness):
    """RFC 6120 §4.9.3.10 / §4.8.1: a stream whose namespace is not http://etherx.jabber.org/streams →
    <invalid-namespace/>."""
    raw = kabar.raw()
    raw.send("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
             "xmlns:stream='urn:example:not-streams'>")
    assert raw.expect_stream_error() == "invalid-namespace"
    witness.assert_works()
