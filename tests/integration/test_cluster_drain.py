"""Draining a node before a stop or upgrade (docs/CLUSTER.md, "Rolling restart"): `kabar drain`, the
admin API's /drain and SIGTERM. The node refuses new streams and asks its clients to move with RFC 6120
§4.9.3.19 `<see-other-host/>` naming another live node's `[cluster] public_address` (or closes them
with `<system-shutdown/>` when it knows none), reroutes what they never acknowledged (XEP-0198) to
offline storage, waits for them to leave, then exits; nothing sent during the drain is lost.

Needs PostgreSQL and nats-server like test_cluster.py (whose fixtures these tests reuse).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import KABAR_BIN, NS, REPO, pause, to_toml
from test_admin import Http
from test_cluster import nats_url, pg_storage, start_cluster, wait_known, wait_log  # noqa: F401 (fixtures)
from test_delivery import silence_acks, sm_client

OPENAPI = REPO / "docs" / "openapi.yaml"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


def start_drain_cluster(server, pg_storage, nats_url, names, drain=None):
    """Nodes on one schema and NATS, each announcing `localhost:<its c2s port>` as its public address."""
    def prepare(srv):
        srv.config["cluster"]["public_address"] = f"localhost:{srv.c2s_port}"
        srv.config["drain"] = drain or {}
        srv.config_path.write_text(to_toml(srv.config))

    nodes = start_cluster(server, pg_storage, nats_url, names, prepare)
    for srv in nodes:
        srv.admin = Http(srv, (srv.data_dir / "admin-token").read_text().strip())
    for srv in nodes:
        # The public addresses travel on their own subject, once per heartbeat or on joining.
        want = {f"localhost:{n.c2s_port}" for n in nodes if n is not srv}
        deadline = time.monotonic() + 20
        while set(drain_status(srv)["targets"]) != want:
            assert time.monotonic() < deadline, f"{srv.workdir}: targets {drain_status(srv)['targets']} != {want}"
            pause(0.1)
    return nodes


def drain_status(srv) -> dict:
    r = srv.admin.api("GET", "/drain")
    assert r.status == 200, r
    return r.json


def see_other_host(error) -> str | None:
    """The host an RFC 6120 §4.9.3.19 stream error names (its character data)."""
    el = error.xml.find(f"{{{NS_STREAMS_ERR}}}see-other-host")
    return None if el is None else (el.text or "")


def node_at(nodes, host: str):
    """The node whose public address is `host` (`localhost:<c2s port>`)."""
    matches = [n for n in nodes if f"localhost:{n.c2s_port}" == host]
    assert len(matches) == 1, f"{host!r} names none of the nodes {[n.c2s_port for n in nodes]}"
    return matches[0]


def stay_put(client) -> None:
    """slixmpp follows see-other-host by itself, but to the address it first dialled (1.17 keeps its
    custom address): stop it, the tests log in again where the server said."""
    client.xmpp.max_redirects = -1


def bodies(*clients, prefix: str = "") -> set[str]:
    return {s.body for c in clients for s in c.received
            if s.name == "message" and s.type != "error" and s.body and s.body.startswith(prefix)}


def stopped_by_itself(srv, timeout: float) -> int:
    """Waits for the node to exit on its own (the drain ends it) and tells the harness so."""
    srv.proc.wait(timeout)
    return srv.stop()


def test_cluster_drain_rfc6120_4_9_3_19_clients_move_to_a_live_node_and_no_message_is_lost(server, pg_storage,
                                                                                         nats_url):
    """`kabar drain` on n1 (through the admin API): alice (XEP-0198, not acknowledging) gets
    `<see-other-host/>` naming n2 or n3, logs in there, and receives every message bob sent before,
    during and after the drain — the ones her old session had not acknowledged come back from offline
    storage. New streams to n1 are redirected too, /readyz says 503, the other nodes stop choosing n1
    as a target, and n1 exits cleanly."""
    n1, n2, n3 = start_drain_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"],
                                     drain={"linger_secs": 300})
    alice = sm_client(n1, "alice/desk")
    silence_acks(alice)
    stay_put(alice)
    bob = n2.client("bob/phone")
    wait_known([n2], alice)

    before = [f"sebelum {i}" for i in range(5)]
    for b in before:
        bob.message("alice@localhost", b)
    for b in before:
        alice.expect_message(frm=bob.jid, body=b)

    cli = subprocess.Popen([str(KABAR_BIN), "drain", "--config", str(n1.config_path), "--data", str(n1.data_dir)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        during = []
        error = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = f"selama {len(during)}"
            bob.message("alice@localhost", body)
            during.append(body)
            if alice.stream_errors:
                error = alice.stream_errors[-1]
                if len(during) > 10:
                    break
            pause(0.03)
        assert error is not None, "alice was never asked to move"
        assert error.error_condition == "see-other-host", error
        host = see_other_host(error)
        target = node_at([n2, n3], host)
        alice.kill()

        # A new stream to the draining node is sent elsewhere as well, before any negotiation.
        raw = n1.raw()
        raw.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 f"xmlns:stream='{NS['stream']}' to='localhost' version='1.0'>")
        got = raw.recv()
        while not (got.ns == NS["stream"] and got.name == "error"):
            got = raw.recv()
        assert see_other_host(got) in {f"localhost:{n2.c2s_port}", f"localhost:{n3.c2s_port}"}, got
        assert n1.admin.request("GET", "/readyz", token=None).status == 503

        moved = target.client("alice/desk", name="alice-moved")
        wait_known([n2], moved)
        after = [f"setelah {i}" for i in range(5)]
        for b in after:
            bob.message("alice@localhost", b)
        for b in after:
            moved.expect_message(frm=bob.jid, body=b)

        # Every message sent to alice reached her new session (live, or from offline storage) — or
        # waits offline for her next login, if it was stored after this one fetched offline messages.
        sent = set(before) | set(during) | set(after)
        deadline = time.monotonic() + 10
        while not sent <= bodies(moved) and time.monotonic() < deadline:
            pause(0.1)
        again = target.client("alice/other", name="alice-again")
        pause(0.5)
        missing = sent - bodies(moved, again)
        assert not missing, f"lost during the drain: {sorted(missing)}"
        # The unacknowledged ones were flushed (rerouted), not just delivered once to the old session.
        assert set(before) <= bodies(moved, again)

        status = drain_status(n1)
        assert status["draining"] and status["sessions"] == 0, status
        assert status["redirected"] >= 2 and status["refused_streams"] >= 1, status
        for other in (n2, n3):
            wait_log(other, ['cluster node is draining.* node="?n1'], timeout=10)
            assert f"localhost:{n1.c2s_port}" not in drain_status(other)["targets"]
    finally:
        # n1 lingers (redirecting) until stopped; a stop signal ends the drain at once.
        code = n1.stop()
        out, _ = cli.communicate(timeout=30)
    assert code == 0, n1.log_tail(40)
    assert cli.returncode == 0 and "draining:" in out and "the node has stopped" in out, out
    wait_log(n2, ["cluster node left.*n1"], timeout=10)


def test_cluster_sigterm_drains_the_node_to_another_one(server, pg_storage, nats_url):
    """SIGTERM (what systemd and Kubernetes send) drains: carol on n1 is sent to n2 with
    `<see-other-host/>`, n1 exits by itself with status 0 once she has left, and what bob sent her
    meanwhile reaches her on n2."""
    n1, n2 = start_drain_cluster(server, pg_storage, nats_url, ["n1", "n2"])
    carol = n1.client("carol/desk")
    stay_put(carol)
    bob = n2.client("bob/phone")
    wait_known([n2], carol)
    bob.message(carol.jid, "halo")
    carol.expect_message(frm=bob.jid, body="halo")

    n1.proc.send_signal(signal.SIGTERM)
    sent = []
    deadline = time.monotonic() + 60
    while not carol.stream_errors and time.monotonic() < deadline:
        sent.append(f"pindah {len(sent)}")
        bob.message("carol@localhost", sent[-1])
        pause(0.02)
    assert carol.expect_stream_error() == "see-other-host"
    assert see_other_host(carol.stream_errors[-1]) == f"localhost:{n2.c2s_port}"
    assert stopped_by_itself(n1, 30) == 0, n1.log_tail(40)
    wait_log(n1, ["drain: done"], timeout=1)

    moved = n2.client("carol/desk", name="carol-moved")
    deadline = time.monotonic() + 10
    while not set(sent) <= bodies(carol, moved) and time.monotonic() < deadline:
        pause(0.1)
    missing = set(sent) - bodies(carol, moved)
    assert not missing, f"lost during the drain: {sorted(missing)}"


def test_drain_api_refuses_invalid_requests_and_a_lone_node_shuts_clients_down(server):
    """POST /drain against docs/openapi.yaml: schemathesis's negative mode (every request invalid) must
    not start a drain; a valid request answers 202 with the documented DrainStatus. A node outside a
    cluster has nowhere to send clients: they get `<system-shutdown/>` (RFC 6120 §4.9.3.21)."""
    srv = server()
    srv.admin = Http(srv, (srv.data_dir / "admin-token").read_text().strip())
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.skip("schemathesis is not installed (pip install -r tests/requirements.txt)")
    res = subprocess.run(
        [str(exe), "run", str(OPENAPI), "--url", f"https://localhost:{srv.http_port}/admin/api/v1",
         "--header", f"Authorization: Bearer {srv.admin.token}", "--tls-verify", str(srv.ca),
         "--include-operation-id", "startDrain", "--mode", "negative",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "40", "--seed", "20261207", "--request-timeout", "10"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"), stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert drain_status(srv)["draining"] is False, "an invalid request started a drain"

    alice = srv.client("alice/desk")
    stay_put(alice)
    r = srv.admin.api("POST", "/drain", {"timeout_secs": 20})
    assert r.status == 202, r
    schema = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]["DrainStatus"]
    import jsonschema_rs
    jsonschema_rs.validate(schema, r.json)
    assert r.json["draining"] is True and r.json["targets"] == [], r.json
    assert alice.expect_stream_error() == "system-shutdown"
    assert stopped_by_itself(srv, 30) == 0, srv.log_tail(40)
