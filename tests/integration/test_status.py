"""The outage monitor wired into the server (docs/MONITOR.md): /status, /status/summary.json,
POST /status/reports, /status/incidents.atom, probes, chat reporting (status bot, XEP-0050
commands), alerts to subscribed accounts and webhooks, admin annotation, persistence.

Probe tests shorten the detection minute to one second (`[monitor] minute_secs = 1`), so "3 minutes
of failing probes" takes three seconds; report-counting tests keep the real 60-second minute so the
30-minute dedupe window and the hourly token refill are what a deployment sees."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import REPO, free_ports, pause

OPENAPI = REPO / "docs" / "openapi.yaml"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_ATOM = "{http://www.w3.org/2005/Atom}"
BOT = "status@localhost"


# ---------------------------------------------------------------------------------------------------------
# helpers


class Https:
    """HTTPS to one kabar from a chosen loopback source address (127.0.0.x), one kept-alive connection."""

    def __init__(self, srv, source: str = "127.0.0.1"):
        self.srv = srv
        self.source = source
        self.ctx = ssl.create_default_context(cafile=str(srv.ca))
        self.conn = None

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        # No reconnect-and-retry here: a server that closes a kept-alive connection must say so
        # (`Connection: close`, which http.client honours by opening a new one for the next
        # request); one that drops it silently fails the test.
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("localhost", self.srv.http_port, context=self.ctx, timeout=10,
                                                    source_address=(self.source, 0))
        self.conn.request(method, path, body=data, headers=hdrs)
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def report(self, **body):
        status, headers, raw = self.request("POST", "/status/reports", body)
        return status, json.loads(raw)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def summary(srv) -> dict:
    status, headers, raw = Https(srv).request("GET", "/status/summary.json")
    assert status == 200, raw
    assert headers["content-type"].startswith("application/json")
    return json.loads(raw)


def component(srv, name: str) -> dict:
    for c in summary(srv)["components"]:
        if c["id"] == name:
            return c
    raise AssertionError(f"no component {name}")


def wait_for(pred, what: str, timeout: float = 30.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Listener:
    """A TCP service the probes watch: accepts and closes connections until stopped."""

    def __init__(self, port: int | None = None):
        self.port = port or free_ports(1)[0]
        self.sock = None
        self.start()

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.settimeout(0.2)
        self.sock = s
        self.running = True
        self.thread = threading.Thread(target=self._serve, args=(s,), daemon=True)
        self.thread.start()

    def _serve(self, s):
        while self.running:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                continue

    def stop(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


class Webhook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        Webhook.received.append((self.path, self.headers.get("Content-Type"), self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def probe_config(listener_port: int, extra: dict | None = None) -> dict:
    """One service `chat` with two TCP probes of the listener (both must fail for "problems detected")."""
    probe = {"kind": "tcp", "target": f"127.0.0.1:{listener_port}", "interval_secs": 1, "timeout_secs": 1,
             "retries": 0}
    cfg = {"monitor": {"minute_secs": 1, "tick_secs": 1,
                       "service": [{"name": "chat", "title": "Chat", "probe": [dict(probe, name="tcp-a"),
                                                                             dict(probe, name="tcp-b")]}]}}
    for k, v in (extra or {}).items():
        cfg["monitor"][k] = v
    return cfg


def command(client, node: str, form: dict | None = None):
    """Run a XEP-0050 command on the server; with `form`, execute and then submit it."""
    first = client.iq_ok("set", f"<command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/>", to="localhost")
    cmd = first.xml.find(f"{{{NS_COMMANDS}}}command")
    if form is None:
        return cmd
    assert cmd.get("status") == "executing", ET.tostring(cmd)
    fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in form.items())
    done = client.iq_ok("set", f"<command xmlns='{NS_COMMANDS}' node='{node}' sessionid='{cmd.get('sessionid')}' "
                               f"action='complete'><x xmlns='{NS_DATA}' type='submit'>{fields}</x></command>",
                        to="localhost")
    return done.xml.find(f"{{{NS_COMMANDS}}}command")


def alerts_until(client, prefix: str, timeout: float = 40.0) -> list[str]:
    """Bodies of the bot's messages up to and including the first starting with `prefix`."""
    bodies = []
    deadline = time.monotonic() + timeout
    while not bodies or not bodies[-1].startswith(prefix):
        left = deadline - time.monotonic()
        assert left > 0, f"no alert starting {prefix!r}; got {bodies}"
        bodies.append(client.expect_message(frm=BOT, timeout=left).body)
    return bodies


def note(cmd) -> str:
    n = cmd.find(f"{{{NS_COMMANDS}}}note")
    return "" if n is None else (n.text or "")


# ---------------------------------------------------------------------------------------------------------
# reports


def test_report_flood_from_many_addresses_counts_per_device_and_per_address_limit(server):
    """Gate rules over the JSON API: one counted report per device and service per 30 minutes; each
    client address (here 8 distinct loopback sources, no proxy trusted) gets 30 counted reports
    (the burst), the rest are acknowledged with 202 but not counted; a device already counted does
    not count again from another address; without a device id the address is the reporter."""
    srv = server(config={"monitor": {"service": [{"name": "chat", "regions": ["Jakarta", "Surabaya"]}]}})
    counted = 0
    for i in range(8):
        h = Https(srv, f"127.0.0.{10 + i}")
        for d in range(40):
            status, body = h.report(service="chat", problem="cant_send" if d % 3 else "cant_log_in",
                                    region="Jakarta" if d % 2 else "Surabaya", device=f"dev-{i}-{d}")
            assert status == 202, body
            if d < 30:
                assert body == {"counted": True, "reason": None, "service": "chat", "message": body["message"]}, body
                counted += 1
            else:
                assert body["counted"] is False and body["reason"] == "ip_limited", (i, d, body)
        h.close()
    # The same device from a fresh address: a duplicate, not a new count.
    status, body = Https(srv, "127.0.0.50").report(service="chat", problem="other", device="dev-0-0")
    assert (status, body["counted"], body["reason"]) == (202, False, "duplicate"), body
    # No device: the address is the reporter key.
    h = Https(srv, "127.0.0.51")
    status, body = h.report(service="chat", problem="other")
    assert (status, body["counted"]) == (202, True), body
    counted += 1
    status, body = h.report(service="chat", problem="other")
    assert (status, body["counted"], body["reason"]) == (202, False, "duplicate"), body
    # X-Forwarded-For is ignored when no proxy is trusted: still this address, still a duplicate.
    status, _, raw = h.request("POST", "/status/reports", {"service": "chat", "problem": "other"},
                               headers={"X-Forwarded-For": "203.0.113.9"})
    assert (status, json.loads(raw)["reason"]) == (202, "duplicate"), raw

    pause(1.1)  # the summary is rendered at most once a second
    kabar = component(srv, "chat")["kabar"]
    problems = kabar["problems_last_hour"]
    assert sum(problems.values()) == counted == 241, problems
    assert problems["cant_log_in"] == 8 * 10 and problems["other"] == 1, problems
    assert kabar["reports_received_last_hour"] == 8 * 40 + 4, kabar
    # The page shows the region breakdown of counted reports.
    status, _, page = Https(srv).request("GET", "/status")
    assert status == 200 and b"Jakarta" in page and b"Surabaya" in page


def test_trusted_proxy_forwarded_address_is_the_client_address(server):
    """With [monitor] trusted_proxies naming the peer, X-Forwarded-For decides the rate-limit key:
    31 reports through the proxy for one forwarded address exhaust its bucket, another forwarded
    address still counts."""
    srv = server(config={"monitor": {"trusted_proxies": ["127.0.0.1"], "service": [{"name": "chat"}]}})
    h = Https(srv, "127.0.0.1")
    results = []
    for d in range(31):
        status, _, raw = h.request("POST", "/status/reports", {"service": "chat", "problem": "cant_send", "device": f"p{d}"},
                                   headers={"X-Forwarded-For": "198.51.100.7"})
        results.append(json.loads(raw)["counted"])
    assert results == [True] * 30 + [False], results
    status, _, raw = h.request("POST", "/status/reports", {"service": "chat", "problem": "cant_send", "device": "q"},
                               headers={"X-Forwarded-For": "198.51.100.8, 127.0.0.1"})
    assert json.loads(raw)["counted"] is True, raw


def test_malformed_reports_are_refused_with_json_errors(server):
    srv = server(config={"monitor": {"service": [{"name": "chat"}]}})
    h = Https(srv)
    cases = [
        ({"service": "nope", "problem": "cant_send"}, 400, "unknown_service"),
        ({"service": "chat", "problem": "on_fire"}, 400, "unknown_problem"),
        ({"service": "chat", "problem": "other", "region": "x" * 65}, 400, "invalid_region"),
        ({"service": "chat", "problem": "other", "extra": 1}, 400, "invalid_body"),
        ({"service": "chat"}, 400, "invalid_body"),
    ]
    for body, code, error in cases:
        status, _, raw = h.request("POST", "/status/reports", body)
        assert status == code and json.loads(raw)["error"] == error, (body, status, raw)
    status, _, raw = h.request("POST", "/status/reports", raw=b"service=chat", headers={"Content-Type": "text/plain"})
    assert status == 415 and json.loads(raw)["error"] == "invalid_body"
    big = json.dumps({"service": "chat", "problem": "other", "comment": "x" * 5000}).encode()
    status, _, raw = h.request("POST", "/status/reports", raw=big, headers={"Content-Type": "application/json"})
    assert status == 413 and json.loads(raw)["error"] == "too_large", raw


def test_reports_in_chat_count_per_account_across_services(server):
    """The status bot (status@localhost) and the XEP-0050 report command: an account's reports
    count at most 5 at once across services (account bucket), one per service per 30 minutes."""
    services = [{"name": n} for n in ("chat", "web", "api", "push", "calls", "voice", "upload")]
    srv = server(config={"monitor": {"service": services}})
    alice, bob = srv.client("alice"), srv.client("bob")
    replies = []
    for s in services:
        alice.message(BOT, f"report {s['name']} send Jakarta")
        replies.append(alice.expect_message(frm=BOT).body)
    assert [r.startswith("Thanks, your report was counted") for r in replies] == [True] * 5 + [False] * 2, replies
    assert "not counted again" in replies[5]

    cmd = command(bob, "urn:kabar:status:report", {"service": "chat", "problem": "cant_log_in", "region": "Bandung"})
    assert cmd.get("status") == "completed" and note(cmd).startswith("Thanks, your report was counted"), ET.tostring(cmd)
    cmd = command(bob, "urn:kabar:status:report", {"service": "chat", "problem": "cant_log_in"})
    assert "already reported" in note(cmd), ET.tostring(cmd)
    # Bad input: the proper XEP-0050 error, and the bot explains its usage.
    bad = bob.iq("set", f"<command xmlns='{NS_COMMANDS}' node='urn:kabar:status:report' action='complete'>"
                        f"<x xmlns='{NS_DATA}' type='submit'><field var='service'><value>chat</value></field>"
                        f"<field var='problem'><value>on_fire</value></field></x></command>", to="localhost")
    assert bad.type == "error" and bad.error_condition == "bad-request", bad
    bad = bob.iq("set", f"<command xmlns='{NS_COMMANDS}' node='urn:kabar:nope' action='execute'/>", to="localhost")
    assert bad.error_condition == "item-not-found", bad
    bob.message(BOT, "report nosuch send")
    assert "Unknown service" in bob.expect_message(frm=BOT).body

    pause(1.1)
    comps = {c["id"]: c["kabar"]["problems_last_hour"] for c in summary(srv)["components"]}
    assert comps["chat"] == {"cant_send": 1, "cant_log_in": 1, "app_wont_load": 0, "messages_delayed": 0, "other": 0}, comps
    assert sum(comps["voice"].values()) == 0 and sum(comps["calls"].values()) == 1, comps


# ---------------------------------------------------------------------------------------------------------
# probes, state, incidents


@pytest.mark.timeout(120)
def test_tcp_probe_of_stopped_service_turns_problems_detected_and_back_across_restart(server):
    """Two TCP probes watch a service. Stopped: "problems detected" (major_outage) with an incident
    in the summary and the Atom feed; the state and incident survive a server restart; started
    again: back to operational, and the incident resolves on its own."""
    svc = Listener()
    srv = server(config=probe_config(svc.port))
    try:
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        assert component(srv, "chat")["status"] == "operational"
        svc.stop()
        wait_for(lambda: component(srv, "chat")["status"] == "major_outage", "problems detected", timeout=40)
        s = summary(srv)
        assert s["status"]["indicator"] == "major", s["status"]
        assert len(s["incidents"]) == 1 and s["incidents"][0]["status"] == "investigating", s["incidents"]
        incident = s["incidents"][0]["id"]
        assert not component(srv, "chat")["kabar"]["probes"]["tcp-a"]["ok"]

        srv.restart()
        # The same incident (a fresh monitor would open a new one with a later id).
        c = wait_for(lambda: (lambda c: c if c["kabar"]["open_incident"] == incident else None)(component(srv, "chat")),
                     "the incident restored", timeout=30)
        assert c["status"] == "major_outage", c

        svc.start()
        wait_for(lambda: component(srv, "chat")["status"] == "operational", "recovery", timeout=40)
        # 30 minutes (here seconds) of "no problems" resolve the incident.
        wait_for(lambda: not summary(srv)["incidents"], "incident resolved", timeout=60)
        status, headers, raw = Https(srv).request("GET", "/status/incidents.atom")
        assert status == 200 and headers["content-type"].startswith("application/atom+xml")
        feed = ET.fromstring(raw)
        entries = feed.findall(f"{NS_ATOM}entry")
        assert len(entries) == 1, raw
        assert "resolved" in entries[0].find(f"{NS_ATOM}title").text
        content = entries[0].find(f"{NS_ATOM}content").text
        assert "problems detected" in content and "resolved (automatically)" in content, content
    finally:
        if svc.running:
            svc.stop()


def test_xmpp_probes_log_in_and_round_trip_a_message_through_kabar_itself(server):
    """XMPP probes against the server itself: a c2s login round trip (STARTTLS, SASL, bind, ping),
    a message between two probe accounts, and a login with a wrong password that must fail."""
    users = {"alice": "alice-pass-1", "probe1": "probe-pass-1", "probe2": "probe-pass-2"}
    srv = server(users=users, start=False)
    base = {"kind": "xmpp_login", "target": f"127.0.0.1:{srv.c2s_port}", "interval_secs": 1, "timeout_secs": 5,
            "retries": 0}
    srv.config["monitor"] = {"minute_secs": 1, "tick_secs": 1, "service": [{"name": "kabar", "probe": [
        dict(base, name="login", jid="probe1@localhost", password="probe-pass-1"),
        dict(base, name="message", kind="xmpp_message", jid="probe1@localhost", password="probe-pass-1",
             peer_jid="probe2@localhost", peer_password="probe-pass-2"),
        dict(base, name="bad-login", jid="probe1@localhost", password="wrong-password"),
    ]}]}
    from harness import to_toml
    srv.config_path.write_text(to_toml(srv.config))
    srv.start()

    def probes():
        p = component(srv, "kabar")["kabar"]["probes"]
        return p if {"login", "message", "bad-login"} <= set(p) else None

    p = wait_for(probes, "three probe results")
    assert p["login"]["ok"] is True and p["login"]["detail"] == "login, bind and ping ok", p
    assert p["message"]["ok"] is True and p["message"]["detail"].startswith("message delivered"), p
    assert p["bad-login"]["ok"] is False and "authentication failed" in p["bad-login"]["detail"], p
    log = srv.log()
    assert "authenticated user=probe1@localhost" in log and "authenticated user=probe2@localhost" in log
    # The latency chart is drawn once results exist.
    pause(1.1)
    status, _, page = Https(srv).request("GET", "/status")
    assert b'class="chart latency-chart"' in page


def test_http_dns_and_tls_probes_report_status_keyword_and_certificate_days(server):
    """HTTP probe of the server's own /healthz (status and keyword), one with a keyword that is not
    there (fails), a DNS probe of localhost, a TLS probe of the direct-TLS port (certificate days
    reported, kabar's own CA trusted) and one demanding more certificate days than it has (fails)."""
    srv = server(start=False)
    base = {"interval_secs": 1, "timeout_secs": 5, "retries": 0}
    srv.config["monitor"] = {"minute_secs": 1, "tick_secs": 1, "service": [{"name": "web", "probe": [
        dict(base, name="health", kind="http", target=f"https://localhost:{srv.http_port}/healthz", keyword="ok"),
        dict(base, name="keyword", kind="http", target=f"https://localhost:{srv.http_port}/healthz", keyword="nope"),
        dict(base, name="status", kind="http", target=f"https://localhost:{srv.http_port}/no-such-page"),
        dict(base, name="dns", kind="dns", target="localhost"),
        dict(base, name="tls", kind="tls", target=f"127.0.0.1:{srv.tls_port}", server_name="localhost"),
        dict(base, name="tls-expiring", kind="tls", target=f"127.0.0.1:{srv.tls_port}", server_name="localhost",
             min_cert_days=10_000_000),
    ]}]}
    from harness import to_toml
    srv.config_path.write_text(to_toml(srv.config))
    srv.start()
    names = {"health", "keyword", "status", "dns", "tls", "tls-expiring"}
    p = wait_for(lambda: (lambda p: p if names <= set(p) else None)(component(srv, "web")["kabar"]["probes"]),
                 "six probe results")
    assert p["health"]["ok"] and p["health"]["detail"] == "HTTP 200", p["health"]
    assert not p["keyword"]["ok"] and "keyword not found" in p["keyword"]["detail"], p["keyword"]
    assert not p["status"]["ok"] and p["status"]["detail"] == "HTTP 404", p["status"]
    assert p["dns"]["ok"] and p["dns"]["detail"].endswith("addresses"), p["dns"]
    assert p["tls"]["ok"] and p["tls"]["cert_days"] > 0, p["tls"]
    assert not p["tls-expiring"]["ok"] and "certificate expires in" in p["tls-expiring"]["detail"], p["tls-expiring"]


@pytest.mark.timeout(120)
def test_state_change_alerts_reach_subscribed_accounts_and_webhooks(server):
    """alice subscribes with the XEP-0050 command, bob by chatting with the bot; a webhook is
    configured. When the probed service stops, both get a chat message from status@localhost and
    the webhook a JSON POST; carol, not subscribed, gets nothing; after unsubscribing, alice gets
    no recovery alert while bob does."""
    svc = Listener()
    Webhook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        srv = server(config=probe_config(svc.port, {"webhooks": [f"http://127.0.0.1:{hook.server_port}/hook"]}))
        alice, bob, carol = srv.client("alice"), srv.client("bob"), srv.client("carol")
        cmd = command(alice, "urn:kabar:status:subscribe")
        assert cmd.get("status") == "completed" and note(cmd).startswith("Subscribed"), ET.tostring(cmd)
        bob.message(BOT, "subscribe")
        assert bob.expect_message(frm=BOT).body.startswith("Subscribed")
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")

        svc.stop()
        bodies = alerts_until(alice, "Chat: problems detected")
        assert bodies[0].startswith("Chat: possible problems (was no problems)"), bodies
        assert "probes failing" in bodies[-1] and f":{srv.http_port}/status" in bodies[-1], bodies
        alerts_until(bob, "Chat: problems detected")
        carol.expect_no_message(frm=BOT, within=0.5)

        def hooked():
            for path, ctype, raw in Webhook.received:
                body = json.loads(raw)
                if body["to"] == "problems_detected":
                    return path, ctype, body
            return None

        path, ctype, body = wait_for(hooked, "the webhook POST")
        assert path == "/hook" and ctype == "application/json"
        assert body["service"] == "chat" and body["cause"] == "probes" and body["incident"], body

        cmd = command(alice, "urn:kabar:status:unsubscribe")
        assert note(cmd) == "Unsubscribed.", ET.tostring(cmd)
        alice.drain()
        bob.drain()
        svc.start()
        recovered = bob.expect_message(frm=BOT, timeout=40)
        assert "no problems" in recovered.body and "back to normal" in recovered.body, recovered
        alice.expect_no_message(frm=BOT, within=1.0)
    finally:
        hook.shutdown()
        if svc.running:
            svc.stop()


@pytest.mark.timeout(120)
def test_admin_annotates_and_resolves_an_incident_through_the_admin_api(server):
    """POST /admin/api/v1/monitor/incidents/{id}/annotations: token required; the note appears in
    the summary, page and feed; `resolve` closes the incident at once and a second resolve is 409."""
    svc = Listener()
    srv = server(config=probe_config(svc.port))
    token = (srv.data_dir / "admin-token").read_text().strip()
    try:
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        svc.stop()
        incident = wait_for(lambda: component(srv, "chat")["kabar"]["open_incident"], "an incident", timeout=40)
        path = f"/admin/api/v1/monitor/incidents/{incident}/annotations"
        h = Https(srv)
        status, _, raw = h.request("POST", path, {"text": "router <b>replaced</b>"})
        assert status == 401, raw
        auth = {"Authorization": f"Bearer {token}"}
        status, _, raw = h.request("POST", path, {"text": "router <b>replaced</b>"}, headers=auth)
        assert status == 200, raw
        body = json.loads(raw)
        assert body["status"] == "identified" and any(u["body"] == "router <b>replaced</b>" for u in body["incident_updates"]), body
        status, _, raw = h.request("POST", "/admin/api/v1/monitor/incidents/nope@1/annotations", {"text": "x"}, headers=auth)
        assert status == 404, raw
        pause(1.1)
        status, _, page = h.request("GET", "/status")
        assert b"router &lt;b&gt;replaced&lt;/b&gt;" in page and b"<b>replaced" not in page

        status, _, raw = h.request("POST", path, {"text": "known cause, closing", "resolve": True}, headers=auth)
        assert status == 200 and json.loads(raw)["status"] == "resolved", raw
        status, _, raw = h.request("POST", path, {"text": "", "resolve": True}, headers=auth)
        assert status == 409, raw
        pause(1.1)
        assert not summary(srv)["incidents"]
        _, _, feed = h.request("GET", "/status/incidents.atom")
        content = ET.fromstring(feed).find(f"{NS_ATOM}entry/{NS_ATOM}content").text
        assert "router <b>replaced</b>" in content and "by an administrator" in content, content
    finally:
        if svc.running:
            svc.stop()


def test_status_page_and_summary_are_well_formed(server):
    """The page is self-contained HTML (CSP with a script hash, no external resources) with one
    reports chart per service, the summary follows Statuspage's shape, the feed parses as Atom, and
    titles are escaped."""
    srv = server(config={"monitor": {"title": "Kabar <status>", "service": [
        {"name": "chat", "title": "Chat & calls"}, {"name": "web", "title": "<script>x</script>"}]}})
    status, headers, page = Https(srv).request("GET", "/status")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp, csp
    text = page.decode()
    assert text.count('class="chart reports-chart"') == 2
    assert "Chat &amp; calls" in text and "&lt;script&gt;x&lt;/script&gt;" in text and "<script>x" not in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    s = summary(srv)
    assert set(s) == {"page", "status", "components", "incidents", "scheduled_maintenances"}, s
    assert s["page"]["name"] == "Kabar <status>" and s["status"] == {"indicator": "none", "description": "All Systems Operational"}
    assert [(c["id"], c["name"], c["status"]) for c in s["components"]] == [
        ("chat", "Chat & calls", "operational"), ("web", "<script>x</script>", "operational")]
    _, headers, feed = Https(srv).request("GET", "/status/incidents.atom")
    root = ET.fromstring(feed)
    assert root.tag == f"{NS_ATOM}feed" and root.find(f"{NS_ATOM}title").text == "Kabar <status>: incidents"


def test_monitor_can_be_switched_off(server):
    srv = server(config={"monitor": {"enabled": False}})
    h = Https(srv)
    for method, path in [("GET", "/status"), ("GET", "/status/summary.json"), ("GET", "/status/incidents.atom")]:
        status, _, raw = h.request(method, path)
        assert status == 404 and json.loads(raw)["error"] == "not_found", (path, raw)
    status, _, _ = h.request("POST", "/status/reports", {"service": "localhost", "problem": "other"})
    assert status == 404


def _schemathesis() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    if exe.exists():
        return str(exe)
    found = shutil.which("schemathesis")
    if not found:
        pytest.skip("schemathesis is not installed (pip install -r tests/requirements.txt)")
    return found


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_openapi_description_of_status_endpoints_holds_against_the_live_server(server, tmp_path):
    """schemathesis on the `status` operations of docs/openapi.yaml with the listener's root as base
    URL: no 5xx, documented status codes, content types and response schemas."""
    srv = server(config={"monitor": {"service": [{"name": "chat"}]}})
    cmd = [
        _schemathesis(), "run", str(OPENAPI),
        "--url", f"https://localhost:{srv.http_port}",
        "--include-tag", "status",
        "--tls-verify", str(srv.ca),
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "25", "--max-time", os.environ.get("KABAR_SCHEMATHESIS_SECONDS", "25"), "--workers", "2",
        "--seed", os.environ.get("KABAR_SCHEMATHESIS_SEED", "20261207"),
        "--request-timeout", "10", "--max-failures", "10",
    ]
    env = dict(os.environ, NO_COLOR="1", SCHEMATHESIS_HOOKS="")
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=140, env=env, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    (tmp_path / "schemathesis.txt").write_text(out)
    assert res.returncode == 0, f"schemathesis found problems (exit {res.returncode}):\n{out[-6000:]}"
    # page, summary, reports, feed, subscriptions, confirm (GET and POST)
    assert "Tested: 7" in out, out[-3000:]
    assert summary(srv)["components"][0]["id"] == "chat"


# ---------------------------------------------------------------------------------------------------------
# alerts: subscription from the page (confirmed in chat or by link), webhook retries and signature


def _confirmation(client) -> tuple[str, str]:
    """The bot's confirmation message: (token, link)."""
    msg = client.expect_message(frm=BOT, timeout=20)
    assert msg.body.startswith("Someone (perhaps you) asked on"), msg.body
    token = msg.body.split('reply "confirm ', 1)[1].split('"', 1)[0]
    link = msg.body.split(" or open ", 1)[1].split(" ", 1)[0]
    assert len(token) == 32 and link.endswith(f"/status/confirm?token={token}"), msg.body
    return token, link


def test_page_subscription_is_confirmed_in_chat_before_the_subscriber_gets_alerts(server):
    """Anyone can type a JID into the page, so POST /status/subscriptions only makes the status bot
    send that account a confirmation: carol asks for alice, alice gets the message, and nothing is
    subscribed until alice replies "confirm <token>" (carol replying with the token is refused).
    A repeated request while one waits sends no second message. After confirming, the probed
    service stopping reaches alice as an alert."""
    svc = Listener()
    try:
        srv = server(config=probe_config(svc.port))
        alice, carol = srv.client("alice"), srv.client("carol")
        web = Https(srv)
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        status, _, raw = web.request("POST", "/status/subscriptions", {"jid": "alice@localhost", "action": "subscribe"})
        assert status == 202 and json.loads(raw)["pending"] is True, raw
        token, _ = _confirmation(alice)
        status, _, raw = web.request("POST", "/status/subscriptions", {"jid": "alice@localhost", "action": "subscribe"})
        assert status == 202, raw
        alice.expect_no_message(frm=BOT, within=1.0)

        carol.message(BOT, f"confirm {token}")
        assert "another account" in carol.expect_message(frm=BOT).body
        svc.stop()
        # Not subscribed yet: the state change reaches nobody.
        wait_for(lambda: component(srv, "chat")["status"] == "major_outage", "problems detected")
        alice.expect_no_message(frm=BOT, within=1.0)
        svc.start()
        wait_for(lambda: component(srv, "chat")["status"] == "operational", "back to normal", timeout=60)

        alice.message(BOT, f"confirm {token}")
        assert alice.expect_message(frm=BOT).body.startswith("Confirmed: you are subscribed")
        alice.message(BOT, f"confirm {token}")
        assert "already used" in alice.expect_message(frm=BOT).body
        svc.stop()
        bodies = alerts_until(alice, "Chat: problems detected")
        assert "probes failing" in bodies[-1], bodies
    finally:
        if svc.running:
            svc.stop()


def test_page_unsubscribe_by_link_needs_the_button_and_the_token_works_once(server):
    """The page offers the alerts form. bob is subscribed (chat). An unsubscribe request from the
    page sends him a link; GET on the link only shows a confirmation page (link previews must not
    act), POSTing the token unsubscribes once; a reused or made-up token is refused. Foreign and
    malformed JIDs are refused with 400."""
    srv = server(config={"monitor": {"minute_secs": 1, "tick_secs": 1}})
    bob = srv.client("bob")
    web = Https(srv)
    status, _, page = web.request("GET", "/status")
    assert status == 200 and b'<form id="alerts-form"' in page and b"fetch('/status/subscriptions'" in page
    bob.message(BOT, "subscribe")
    assert bob.expect_message(frm=BOT).body.startswith("Subscribed")

    status, _, raw = web.request("POST", "/status/subscriptions", {"jid": "bob@localhost", "action": "unsubscribe"})
    assert status == 202, raw
    token, link = _confirmation(bob)
    path = link.split(f":{srv.http_port}", 1)[1]
    status, headers, raw = web.request("GET", path)
    assert status == 200 and b"bob@localhost" in raw and b"stop receiving outage alerts" in raw, raw
    assert "default-src 'none'" in headers["content-security-policy"]
    # Still subscribed after the GET: the bot's answer to "subscribe" says so.
    bob.message(BOT, "subscribe")
    assert bob.expect_message(frm=BOT).body == "You are already subscribed."

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, raw = web.request("POST", "/status/confirm", raw=f"token={token}".encode(), headers=form)
    assert status == 200 and b"no longer receive outage alerts" in raw, raw
    status, _, raw = web.request("POST", "/status/confirm", raw=f"token={token}".encode(), headers=form)
    assert status == 404, raw
    status, _, raw = web.request("GET", "/status/confirm?token=" + "0" * 32)
    assert status == 404, raw
    bob.message(BOT, "subscribe")
    assert bob.expect_message(frm=BOT).body.startswith("Subscribed:"), "the link unsubscribed bob"

    for jid, code in (("eve@example.org", "not_local"), ("not a jid@@", "invalid_jid"), (BOT, "not_local")):
        status, _, raw = web.request("POST", "/status/subscriptions", {"jid": jid, "action": "subscribe"})
        assert status == 400 and json.loads(raw)["error"] == code, (jid, raw)
    status, _, raw = web.request("POST", "/status/subscriptions", {"jid": "bob@localhost", "action": "maybe"})
    assert status == 400 and json.loads(raw)["error"] == "invalid_action", raw


def test_page_subscription_requests_are_limited_per_client_address(server):
    """At most `max_pending_per_ip` confirmations wait per client address: the next request from
    that address gets 429 and sends no message, another address is unaffected."""
    srv = server(config={"monitor": {"minute_secs": 1, "tick_secs": 1, "max_pending_per_ip": 2}})
    carol = srv.client("carol")
    one, two = Https(srv, "127.0.0.2"), Https(srv, "127.0.0.3")
    for user in ("u1", "u2"):
        status, _, raw = one.request("POST", "/status/subscriptions", {"jid": f"{user}@localhost", "action": "subscribe"})
        assert status == 202, raw
    status, _, raw = one.request("POST", "/status/subscriptions", {"jid": "carol@localhost", "action": "subscribe"})
    assert status == 429 and json.loads(raw)["error"] == "rate_limited", raw
    carol.expect_no_message(frm=BOT, within=1.0)
    status, _, raw = two.request("POST", "/status/subscriptions", {"jid": "carol@localhost", "action": "subscribe"})
    assert status == 202, raw
    _confirmation(carol)


class FlakyWebhook(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` POSTs of each delivery id, then 204."""

    failures = 2
    received: list = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        delivery = self.headers.get("X-Kabar-Delivery")
        seen = sum(1 for r in FlakyWebhook.received if r["delivery"] == delivery)
        FlakyWebhook.received.append({"delivery": delivery, "attempt": self.headers.get("X-Kabar-Attempt"),
                                      "signature": self.headers.get("X-Kabar-Signature"), "body": raw})
        self.send_response(503 if seen < FlakyWebhook.failures else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_deliveries_are_retried_until_accepted_and_signed_with_the_secret(server):
    """The receiver fails the first two attempts of every delivery: kabar retries (backoff from
    `webhook_backoff_ms`), the third attempt of the same delivery id is accepted and not repeated;
    every attempt carries `X-Kabar-Signature: sha256=HMAC(secret, body)` over the exact body."""
    import hashlib
    import hmac

    secret = "s3cret-for-the-test"
    svc = Listener()
    FlakyWebhook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyWebhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        srv = server(config=probe_config(svc.port, {
            "webhooks": [f"http://127.0.0.1:{hook.server_port}/hook"], "webhook_secret": secret,
            "webhook_retries": 4, "webhook_backoff_ms": 100, "webhook_max_backoff_ms": 400}))
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        svc.stop()

        def accepted():
            by_id: dict = {}
            for r in FlakyWebhook.received:
                by_id.setdefault(r["delivery"], []).append(r)
            for attempts in by_id.values():
                if len(attempts) >= 3 and json.loads(attempts[0]["body"])["to"] == "problems_detected":
                    return attempts
            return None

        attempts = wait_for(accepted, "a delivery accepted on its third attempt", timeout=60)
        assert [a["attempt"] for a in attempts[:3]] == ["1", "2", "3"], attempts
        for a in attempts:
            want = "sha256=" + hmac.new(secret.encode(), a["body"], hashlib.sha256).hexdigest()
            assert a["signature"] == want, a
        assert len({a["body"] for a in attempts}) == 1, "every attempt sends the same body"
        body = json.loads(attempts[0]["body"])
        assert body["delivery"] == attempts[0]["delivery"] and body["service"] == "chat", body
        # Accepted on the third attempt: no fourth. Deliveries to one URL go in order, so once the
        # recovery alert has arrived every retry of the earlier one is over.
        svc.start()
        wait_for(lambda: any(json.loads(r["body"])["to"] == "ok" for r in FlakyWebhook.received), "the recovery alert",
                 timeout=60)
        assert len([r for r in FlakyWebhook.received if r["delivery"] == attempts[0]["delivery"]]) == 3
    finally:
        hook.shutdown()
        if svc.running:
            svc.stop()
