"""XEP-0215 External Service Discovery (urn:xmpp:extdisco:2, docs/CALLS.md): configured STUN/TURN
services and TURN REST credentials, checked by recomputing the HMAC here and, when coturn is installed
(scripts/test installs Debian's coturn), by coturn itself accepting them for a relay allocation."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import time

import pytest

from harness import free_ports

NS = "urn:xmpp:extdisco:2"
SECRET = "correct-horse-turn-secret"
TTL = 3600

SERVICES = [
    {"host": "stun.localhost", "port": 3478, "type": "stun", "transport": "udp"},
    {"host": "turn.localhost", "port": 3478, "type": "turn", "transport": "udp", "name": "relay"},
    {"host": "turn.localhost", "port": 5349, "type": "turns", "transport": "tcp"},
]


def services_of(resp) -> list:
    return resp.findall(f"{{{NS}}}services/{{{NS}}}service") or resp.findall(f"{{{NS}}}credentials/{{{NS}}}service")


def xep0082_to_unix(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def assert_turn_rest_credentials(svc, user: str, secret: str = SECRET, ttl: int = TTL) -> None:
    """TURN REST API: username = '<expiry>:<user>', password = base64(HMAC-SHA1(secret, username))."""
    username, password = svc.get("username"), svc.get("password")
    assert username and password, f"no credentials on {svc.attrib}"
    expiry, _, who = username.partition(":")
    assert who == user
    now = time.time()
    assert now + ttl - 30 <= int(expiry) <= now + ttl + 30, (expiry, now)
    expected = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected
    assert xep0082_to_unix(svc.get("expires")) == int(expiry)
    assert svc.get("restricted") in ("1", "true")


def extdisco_server(server, services=SERVICES, secret=SECRET):
    cfg = {"credentials_ttl_secs": TTL, "service": services}
    if secret is not None:
        cfg["secret"] = secret
    return server(config={"external_services": cfg})


def test_xep0215_3_1_services_lists_every_configured_service_with_turn_credentials(server):
    """§3.1: <services/> returns all services; TURN ones carry time-limited REST credentials, STUN
    ones none. The server advertises the namespace in disco#info."""
    srv = extdisco_server(server)
    alice = srv.client("alice")
    features = {f.get("var") for f in alice.disco_info(srv.domain).findall("disco_info:query/disco_info:feature")}
    assert NS in features
    resp = alice.iq_ok("get", f"<services xmlns='{NS}'/>", to=srv.domain)
    got = services_of(resp)
    assert [(s.get("host"), s.get("port"), s.get("type"), s.get("transport")) for s in got] == [
        (s["host"], str(s["port"]), s["type"], s["transport"]) for s in SERVICES]
    stun, turn, turns = got
    assert stun.get("username") is None and stun.get("password") is None and stun.get("restricted") is None
    assert turn.get("name") == "relay"
    assert_turn_rest_credentials(turn, "alice@localhost")
    assert_turn_rest_credentials(turns, "alice@localhost")


def test_xep0215_3_2_services_filtered_by_type(server):
    srv = extdisco_server(server)
    bob = srv.client("bob")
    got = services_of(bob.iq_ok("get", f"<services xmlns='{NS}' type='turn'/>", to=srv.domain))
    assert [(s.get("host"), s.get("type")) for s in got] == [("turn.localhost", "turn")]
    assert_turn_rest_credentials(got[0], "bob@localhost")
    assert services_of(bob.iq_ok("get", f"<services xmlns='{NS}' type='stuns'/>", to=srv.domain)) == []


def test_xep0215_3_3_credentials_request_for_one_service(server):
    """§3.3: <credentials><service host type/></credentials> returns that service with fresh
    credentials; an unknown service (or one that needs none) is <item-not-found/>."""
    srv = extdisco_server(server)
    alice = srv.client("alice")
    resp = alice.iq_ok("get", f"<credentials xmlns='{NS}'><service host='turn.localhost' type='turn'/></credentials>",
                       to=srv.domain)
    got = services_of(resp)
    assert len(got) == 1 and got[0].get("type") == "turn" and got[0].get("port") == "3478"
    assert_turn_rest_credentials(got[0], "alice@localhost")
    resp = alice.iq_ok("get", f"<credentials xmlns='{NS}'><service host='turn.localhost' type='turns' port='5349'/>"
                              f"</credentials>", to=srv.domain)
    assert services_of(resp)[0].get("type") == "turns"
    for bad in ("<service host='nope.localhost' type='turn'/>", "<service host='stun.localhost' type='stun'/>",
                "<service host='turn.localhost' type='turn' port='9999'/>"):
        resp = alice.iq("get", f"<credentials xmlns='{NS}'>{bad}</credentials>", to=srv.domain)
        assert resp.type == "error" and resp.error_condition == "item-not-found", resp
    resp = alice.iq("get", f"<credentials xmlns='{NS}'/>", to=srv.domain)
    assert resp.type == "error" and resp.error_condition == "bad-request", resp


def test_xep0215_without_a_secret_turn_has_no_credentials(server):
    srv = extdisco_server(server, secret=None)
    alice = srv.client("alice")
    got = services_of(alice.iq_ok("get", f"<services xmlns='{NS}'/>", to=srv.domain))
    assert len(got) == 3 and all(s.get("username") is None and s.get("restricted") is None for s in got)


def test_xep0215_not_offered_when_no_service_is_configured(server):
    srv = server()
    alice = srv.client("alice")
    features = {f.get("var") for f in alice.disco_info(srv.domain).findall("disco_info:query/disco_info:feature")}
    assert NS not in features
    resp = alice.iq("get", f"<services xmlns='{NS}'/>", to=srv.domain)
    assert resp.type == "error" and resp.error_condition == "service-unavailable", resp


def test_xep0215_relays_are_only_for_local_accounts(server):
    """TURN relays cost bandwidth: a component (anyone but user@our-domain) gets <forbidden/>, not credentials."""
    srv = extdisco_server(server)
    bot = srv.component()
    resp = bot.iq("get", f"<services xmlns='{NS}'/>", to=srv.domain, frm="bot.localhost")
    assert resp.type == "error" and resp.error_condition == "forbidden", resp


def _turnserver_or_skip() -> str:
    path = shutil.which("turnserver")
    if path is None or shutil.which("turnutils_uclient") is None:
        if os.environ.get("CI"):
            pytest.fail("coturn is not installed although scripts/test installs it under CI")
        pytest.skip("coturn (turnserver, turnutils_uclient) is not installed: apt-get install coturn")
    return path


def _allocate(port: int, username: str, password: str) -> subprocess.CompletedProcess:
    """A TURN allocation and a relayed round trip with coturn's own test client."""
    return subprocess.run(
        ["turnutils_uclient", "-u", username, "-w", password, "-p", str(port), "-n", "1", "-m", "1", "-l", "64",
         "-y", "127.0.0.1"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_xep0215_coturn_accepts_the_turn_rest_credentials_kabar_hands_out(server, tmp_path):
    """docs/CALLS.md setup, end to end: coturn with use-auth-secret/static-auth-secret on loopback; the
    credentials kabar gives alice open a relay allocation; a tampered password does not."""
    turnserver = _turnserver_or_skip()
    turn_port, = free_ports(1)
    # coturn picks relay ports from this range; a narrow, high range on loopback only.
    relay_min = 49152 + (turn_port % 1000) * 10
    log = tmp_path / "turnserver.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [turnserver, "-n", "--listening-ip=127.0.0.1", f"--listening-port={turn_port}", "--relay-ip=127.0.0.1",
             "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=localhost", "--no-tls", "--no-dtls",
             "--no-cli", f"--min-port={relay_min}", f"--max-port={relay_min + 9}", "--allow-loopback-peers",
             "--log-file=stdout", "--simple-log"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 10
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect(("127.0.0.1", turn_port))
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"turnserver did not start:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.1)
            finally:
                s.close()
        srv = extdisco_server(server, services=[
            {"host": "127.0.0.1", "port": turn_port, "type": "turn", "transport": "udp"}])
        alice = srv.client("alice")
        svc, = services_of(alice.iq_ok(
            "get", f"<credentials xmlns='{NS}'><service host='127.0.0.1' type='turn'/></credentials>", to=srv.domain))
        ok = _allocate(turn_port, svc.get("username"), svc.get("password"))
        assert ok.returncode == 0, f"coturn refused kabar's credentials:\n{ok.stdout[-2000:]}{ok.stderr[-2000:]}"
        bad = _allocate(turn_port, svc.get("username"), svc.get("password")[:-2] + "AA")
        assert bad.returncode != 0, "coturn accepted a tampered password: the check above proves nothing"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
