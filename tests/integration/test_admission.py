"""Admission control under overload (docs/OVERLOAD.md; issue: absorb the sign-up surge).

Overload is simulated with configured low limits: the connection limit is the one signal a test can
drive exactly. New logins are refused with the documented stream error (RFC 6120 §4.9.3.18
<resource-constraint/>, or §4.9.3.19 <see-other-host/> when another node is configured), registrations
earlier with a stanza error of type wait, WebSocket upgrades with HTTP 503 + Retry-After — while the
sessions already established keep chatting.
"""

from harness import NS, stream_header
from test_admin import Http, metric

REGISTER = NS["register"]


def _busy_server(server, **admission):
    cfg = {"admission": {"max_connections": 2, "retry_after_secs": 7, **admission},
           "registration": {"enabled": True}}
    return server(config=cfg)


def test_rfc6120_4_9_3_18_new_login_refused_with_resource_constraint_while_established_sessions_chat(server):
    srv = _busy_server(server)
    alice = srv.client("alice")
    bob = srv.client("bob")
    # Both connections are in use: a third stream is refused at its header.
    raw = srv.raw(name="carol-raw")
    raw.send(stream_header(srv.domain))
    assert raw.expect_stream_error() == "resource-constraint"
    # The people already online are not affected.
    alice.message("bob@localhost", "still here?")
    bob.expect_message(frm="alice@localhost", body="still here?")
    bob.message("alice@localhost", "yes")
    alice.expect_message(frm="bob@localhost", body="yes")
    samples = Http(srv, None).metrics()
    assert metric(samples, "kabar_admission_refused_total", work="login") >= 1
    assert metric(samples, "kabar_admission_connections_limit") == 2
    # Capacity comes back when someone leaves: a new login then succeeds.
    bob.disconnect()
    srv.client("carol").assert_works()


def test_rfc6120_4_9_3_19_refused_login_is_pointed_to_another_node(server):
    srv = _busy_server(server, max_connections=1, see_other_host="node2.example.org:5222")
    srv.client("alice")
    raw = srv.raw(name="redirected")
    raw.send(stream_header(srv.domain))
    assert raw.expect_stream_error() == "see-other-host"


def test_registrations_are_shed_before_logins_with_a_wait_error(server):
    # 50 % headroom of 2 connections: with one connection open, registrations stop, logins do not.
    srv = _busy_server(server, registration_headroom_pct=50)
    raw = srv.raw(name="registrant")
    raw.open()
    raw.starttls()
    answer = raw.iq("set", f"<query xmlns='{REGISTER}'><username>newcomer</username>"
                           f"<password>newcomer-pass-1</password></query>")
    assert answer.type == "error", answer
    assert answer.error_condition == "resource-constraint", answer
    assert answer.find("client:error").get("type") == "wait", answer
    raw.close()
    # A login (the second connection) is still admitted.
    srv.client("alice").assert_works()
    samples = Http(srv, None).metrics()
    assert metric(samples, "kabar_admission_refused_total", work="registration") >= 1


def test_websocket_upgrade_is_refused_with_503_and_retry_after(server):
    srv = _busy_server(server, max_connections=1)
    srv.client("alice")
    r = Http(srv, None).request("GET", "/xmpp-websocket", token=None, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "xmpp"})
    assert r.status == 503, r
    assert r.headers.get("retry-after") == "7", r.headers
