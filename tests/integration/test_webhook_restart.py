"""Outage-monitor webhook deliveries survive a server restart (docs/MONITOR.md "Webhooks"): pending
and retrying deliveries are kept in the store, resumed after a crash (SIGKILL) with the same
delivery id, body and signature, and bounded (oldest dropped, logged and counted in /metrics).

A local HTTP receiver in the test decides which attempts fail; the probe minute is one second
(`[monitor] minute_secs = 1`) as in test_status.py."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading

import pytest

from harness import to_toml
from test_status import Https, Listener, component, probe_config, wait_for

SECRET = "restart-webhook-secret"


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records every POST; answers 204 only while `accepting` is set (per server instance)."""

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        ok = self.server.accepting.is_set()
        self.server.received.append({"delivery": self.headers.get("X-Kabar-Delivery"),
                                     "attempt": int(self.headers.get("X-Kabar-Attempt", "0")),
                                     "signature": self.headers.get("X-Kabar-Signature"), "body": raw,
                                     "accepted": ok})
        self.send_response(204 if ok else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def receiver() -> http.server.ThreadingHTTPServer:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    hook.received = []
    hook.accepting = threading.Event()
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    return hook


def url(hook) -> str:
    return f"http://127.0.0.1:{hook.server_port}/hook"


def signed(r) -> bool:
    return r["signature"] == "sha256=" + hmac.new(SECRET.encode(), r["body"], hashlib.sha256).hexdigest()


def posts(hook) -> list:
    return [dict(r, alert=json.loads(r["body"])) for r in list(hook.received)]


def accepted(hook) -> list:
    return [r for r in posts(hook) if r["accepted"]]


def metric(srv, name: str) -> float | None:
    status, _, raw = Https(srv).request("GET", "/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.timeout(240)
def test_webhook_delivery_retrying_at_a_crash_arrives_once_after_restart_with_same_id_and_signature(server):
    """The receiver refuses every attempt; the server is SIGKILLed while it retries the first alert
    of an outage; after the restart the same delivery (id, body, signature, attempt count going
    on) is accepted exactly once, and no alert is made up twice."""
    svc = Listener()
    hook = receiver()
    try:
        srv = server(config=probe_config(svc.port, {
            "webhooks": [url(hook)], "webhook_secret": SECRET,
            "webhook_retries": 1000, "webhook_backoff_ms": 100, "webhook_max_backoff_ms": 300}))
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        svc.stop()
        wait_for(lambda: len(hook.received) >= 2, "two refused attempts of the first alert", timeout=60)
        srv.kill9()
        refused = posts(hook)
        delivery = refused[0]["delivery"]
        # Deliveries to one URL go in order: later alerts wait behind the refused one.
        assert {r["delivery"] for r in refused} == {delivery}, refused
        assert not any(r["accepted"] for r in refused)
        assert refused[0]["alert"]["from"] == "ok", refused[0]["alert"]
        last_attempt = max(r["attempt"] for r in refused)

        hook.accepting.set()
        srv.start()
        got = wait_for(lambda: [r for r in accepted(hook) if r["delivery"] == delivery], "the resumed delivery",
                       timeout=60)
        assert len(got) == 1 and got[0]["body"] == refused[0]["body"], "the same body as before the crash"
        assert signed(got[0]), got[0]
        # The count goes on from the store (a crash between a refused attempt and saving its count
        # may repeat that number once, never restart at 1).
        assert got[0]["attempt"] >= max(last_attempt, 2), (got[0]["attempt"], last_attempt)

        # Once the recovery alert is accepted, nothing sent before it can still be on its way.
        svc.start()
        wait_for(lambda: any(r["alert"]["to"] == "ok" for r in accepted(hook)), "the recovery alert", timeout=90)
        done = accepted(hook)
        ids = [r["delivery"] for r in done]
        assert len(ids) == len(set(ids)), "every delivery accepted once"
        transitions = [(r["alert"]["from"], r["alert"]["to"]) for r in done]
        assert len(transitions) == len(set(transitions)), f"an alert was made up again after the restart: {transitions}"
        assert [r for r in posts(hook) if r["delivery"] == delivery][-1]["accepted"], "no attempt after acceptance"
        assert all(signed(r) for r in posts(hook))
        wait_for(lambda: metric(srv, "kabar_monitor_webhook_pending") == 0, "nothing pending")
    finally:
        hook.shutdown()
        if svc.running:
            svc.stop()


@pytest.mark.timeout(240)
def test_pending_deliveries_over_the_total_bound_after_restart_drop_the_oldest_with_log_and_metric(server):
    """Two receivers refuse every alert of an outage; after a crash the server comes back with room
    for one pending delivery in total (`webhook_pending_max = 1`): all but the newest delivery are
    dropped with a log line each and counted in `kabar_monitor_webhook_dropped_total`; the newest
    (the "problems detected" alert, for the second URL) is delivered."""
    svc = Listener()
    first, second = receiver(), receiver()
    try:
        srv = server(config=probe_config(svc.port, {
            "webhooks": [url(first), url(second)], "webhook_secret": SECRET,
            "webhook_retries": 1000, "webhook_backoff_ms": 100, "webhook_max_backoff_ms": 300}))
        wait_for(lambda: component(srv, "chat")["kabar"]["probes"].get("tcp-b", {}).get("ok"), "probes up")
        svc.stop()
        # The final state: no further alert until the service is back.
        wait_for(lambda: component(srv, "chat")["status"] == "major_outage", "problems detected", timeout=60)
        wait_for(lambda: first.received and second.received, "both URLs attempted", timeout=60)
        pending = wait_for(lambda: metric(srv, "kabar_monitor_webhook_pending") or None, "pending deliveries")
        srv.kill9()
        assert pending >= 2, pending
        seen_by_first = len(first.received)

        srv.config["monitor"]["webhook_pending_max"] = 1
        srv.config_path.write_text(to_toml(srv.config))
        first.accepting.set()
        second.accepting.set()
        srv.start()
        got = wait_for(lambda: accepted(second), "the second URL's delivery", timeout=60)
        assert len(got) == 1 and signed(got[0]), got
        assert got[0]["alert"]["to"] == "problems_detected", got[0]["alert"]
        assert metric(srv, "kabar_monitor_webhook_dropped_total") == pending - 1
        assert srv.log().count("webhook queue full; oldest waiting alert dropped") >= pending - 1
        assert len(first.received) == seen_by_first, "dropped deliveries are not attempted again"
        wait_for(lambda: metric(srv, "kabar_monitor_webhook_pending") == 0, "nothing pending")
    finally:
        first.shutdown()
        second.shutdown()
        if svc.running:
            svc.stop()
