"""The cluster's session directory protocol (docs/CLUSTER.md "Directory protocol"): numbered deltas,
heartbeats that carry only the change number, snapshots only on request. What each node's copy of the
directory holds is read through the admin API (`GET /sessions` lists every node's sessions with their
node), which answers from that copy.

Same prerequisites as test_cluster.py (PostgreSQL, nats-server).
"""

from __future__ import annotations

import json
import time

from test_admin import Http, metric
from test_cluster import LEASE, nats_url, pg_storage, private_nats, start_cluster, wait_log  # noqa: F401


def listed(h: Http) -> dict[str, str]:
    r = h.api("GET", "/sessions")
    assert r.status == 200, r
    return {s["jid"]: s.get("node") for s in json.loads(r.text)["sessions"]}


def wait_listed(h: Http, expected: dict[str, str], timeout: float) -> None:
    """Polls one node's view of the cluster until it is exactly `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        got = listed(h)
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{h.srv.workdir} lists {got}, expected {expected} within {timeout}s")
        time.sleep(0.2)


def admin(srv) -> Http:
    return Http(srv, (srv.data_dir / "admin-token").read_text().strip())


def test_cluster_directory_changes_missed_during_a_nats_outage_converge_by_snapshot_on_request(
        server, pg_storage, private_nats):
    """Directory deltas travel at most once: a session that ends and one that starts on n2 while NATS is
    down never reach n1 as deltas. Once NATS is back, n1 sees from n2's change number (hello, beat) that
    its copy is behind and asks n2 for a snapshot: n1 then lists exactly n2's sessions, without any
    restart, and routes a message for bob to his new session."""
    n1, n2 = start_cluster(server, pg_storage, private_nats.url, ["n1", "n2"])
    alice = n1.client("alice/desk")
    bob_phone = n2.client("bob/phone")
    h1 = admin(n1)
    wait_listed(h1, {alice.jid: "n1", bob_phone.jid: "n2"}, timeout=20)

    n1_offset, n2_offset = len(n1.log()), len(n2.log())
    private_nats.stop()
    wait_log(n1, ["cluster: lost NATS"], timeout=10, since=n1_offset)
    wait_log(n2, ["cluster: lost NATS"], timeout=10, since=n2_offset)
    bob_phone.disconnect()
    bob_laptop = n2.client("bob/laptop")
    carol = n2.client("carol/desk")
    private_nats.start()

    wait_listed(h1, {alice.jid: "n1", bob_laptop.jid: "n2", carol.jid: "n2"}, timeout=30)
    wait_listed(admin(n2), {alice.jid: "n1", bob_laptop.jid: "n2", carol.jid: "n2"}, timeout=30)
    alice.message("bob@localhost", "setelah snapshot")
    bob_laptop.expect_message(frm=alice.jid, body="setelah snapshot")
    assert n1.died() is None and n2.died() is None


def test_cluster_directory_entries_of_a_killed_node_vanish_and_its_restart_is_learnt(server, pg_storage, nats_url):
    """kill -9 of n2 (no bye): n1 and n3 drop its entries when its lease runs out, and their
    remote-session gauge says so. n2 restarted under its name is a new incarnation: the others learn
    its new sessions from its deltas, and none of the old ones come back."""
    n1, n2, n3 = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    alice = n1.client("alice/desk")
    bob = n2.client("bob/phone")
    carol = n2.client("carol/phone")
    alice_tablet = n3.client("alice/tablet")
    h1, h3 = admin(n1), admin(n3)
    everyone = {alice.jid: "n1", bob.jid: "n2", carol.jid: "n2", alice_tablet.jid: "n3"}
    wait_listed(h1, everyone, timeout=20)
    wait_listed(h3, everyone, timeout=20)

    n2.kill9()
    survivors = {alice.jid: "n1", alice_tablet.jid: "n3"}
    wait_listed(h1, survivors, timeout=LEASE + 15)
    wait_listed(h3, survivors, timeout=LEASE + 15)
    assert metric(h1.metrics(), "kabar_cluster_directory_remote_sessions", node="n1") == 1

    n1_offset = len(n1.log())
    n2.start()
    wait_log(n1, ['cluster node joined node="n2"'], timeout=20, since=n1_offset)
    bob_back = n2.client("bob/laptop", name="bob-back")
    again = dict(survivors, **{bob_back.jid: "n2"})
    wait_listed(h1, again, timeout=20)
    wait_listed(h3, again, timeout=20)
    assert metric(h3.metrics(), "kabar_cluster_directory_remote_sessions", node="n3") == 2
