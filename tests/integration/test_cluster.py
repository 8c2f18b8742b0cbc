"""kabar as a cluster: several nodes on one PostgreSQL schema, joined over NATS (docs/CLUSTER.md).

Needs PostgreSQL (KABAR_TEST_POSTGRES_URL, scripts/pg) and nats-server (KABAR_TEST_NATS_URL, scripts/nats;
scripts/test starts both). Without PostgreSQL these tests skip unless KABAR_REQUIRE_POSTGRES=1. Without
KABAR_TEST_NATS_URL the tests start their own nats-server (it must be installed). The outage test always
runs a private nats-server of its own, since it stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from harness import REPO, free_ports, make_mutual, mam_all, pause

LEASE = 4  # [cluster] lease_secs in these tests
HEARTBEAT = 1


@pytest.fixture
def pg_storage():
    url = os.environ.get("KABAR_TEST_POSTGRES_URL", "").strip()
    if not url:
        if os.environ.get("KABAR_REQUIRE_POSTGRES") == "1":
            pytest.fail("KABAR_REQUIRE_POSTGRES=1 but KABAR_TEST_POSTGRES_URL is not set: "
                        "run `eval \"$(scripts/pg start)\"` first (scripts/test does)")
        pytest.skip("KABAR_TEST_POSTGRES_URL is not set (see scripts/pg)")
    schema = "it_" + uuid.uuid4().hex[:16]
    yield {"backend": "postgres", "url": url, "schema": schema, "pool_size": 4}
    psql = shutil.which("psql")
    if psql:
        subprocess.run([psql, "-X", "-q", url, "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


class Nats:
    """A private nats-server on a fixed loopback port, so it can be stopped and started again."""

    def __init__(self, workdir: Path):
        if not shutil.which("nats-server"):
            pytest.fail("nats-server is not installed (apt-get install nats-server; scripts/nats does it as root)")
        self.port = free_ports(1)[0]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = workdir / "nats.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def private_nats(tmp_path):
    n = Nats(tmp_path)
    n.start()
    yield n
    n.stop()


@pytest.fixture
def nats_url(tmp_path):
    url = os.environ.get("KABAR_TEST_NATS_URL", "").strip()
    if url:
        yield url
        return
    n = Nats(tmp_path)
    n.start()
    yield n.url
    n.stop()


def start_cluster(server, pg_storage, nats_url: str, names: list[str]):
    """One kabar per name on the same schema and NATS; accounts are created once (by the first)."""
    nodes = []
    for i, name in enumerate(names):
        cfg = {
            "storage": pg_storage,
            "cluster": {"enabled": True, "nats_url": nats_url, "node": name, "heartbeat_secs": HEARTBEAT,
                        "lease_secs": LEASE, "delivery_timeout_ms": 1500},
        }
        srv = server(config=cfg, users=None if i == 0 else {})
        if i > 0:
            srv.passwords = dict(nodes[0].passwords)
        nodes.append(srv)
    for srv in nodes:
        others = [n for n in names if n != srv.config["cluster"]["node"]]
        wait_log(srv, [f'cluster node joined node="{o}"' for o in others], timeout=20)
    return nodes


def wait_log(srv, patterns: list[str], timeout: float, since: int = 0) -> float:
    """Waits until every regex matches a line of the server's log (after offset `since`); returns when."""
    deadline = time.monotonic() + timeout
    while True:
        text = srv.log()[since:]
        if all(re.search(p, text) for p in patterns):
            return time.monotonic()
        if time.monotonic() > deadline:
            missing = [p for p in patterns if not re.search(p, text)]
            raise AssertionError(f"{missing} not in the log of {srv.workdir} within {timeout}s:\n{srv.log_tail(40)}")
        time.sleep(0.1)


def test_cluster_rfc6121_chat_and_presence_between_users_on_different_nodes(server, pg_storage, nats_url):
    """RFC 6121 §8.5.3.1 (full JID), §8.5.2.1.1 (bare JID: every available resource, cluster-wide) and
    §4.2.2/§4.4.2 (presence broadcast) with alice, bob and carol on three different nodes."""
    n1, n2, n3 = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    alice = n1.client("alice/desk")
    bob = n2.client("bob/phone")
    make_mutual(alice, bob)

    # Presence: bob's change of show on node 2 reaches alice on node 1, unchanged.
    bob.presence(show="away", status="rapat")
    p = alice.expect_presence(frm=bob.jid)
    assert p.find("client:show") is not None and p.find("client:show").text == "away", p
    assert p.find("client:status").text == "rapat", p

    alice.message(bob.jid, "halo dari node satu")
    bob.expect_message(frm=alice.jid, body="halo dari node satu")
    bob.message(alice.jid, "halo juga dari node dua")
    got = alice.expect_message(frm=bob.jid, body="halo juga dari node dua")
    assert got.get("to") == alice.jid

    # A second resource of bob on node 3: a message to the bare JID reaches both nodes' sessions.
    bob2 = n3.client("bob/tablet")
    alice.expect_presence(frm=bob2.jid)
    # §4.3.2: bob's new session learns alice's presence, answered from node 1's announced presence.
    bob2.expect_presence(frm=alice.jid)
    alice.message("bob@localhost", "untuk semua perangkat")
    bob.expect_message(frm=alice.jid, body="untuk semua perangkat")
    bob2.expect_message(frm=alice.jid, body="untuk semua perangkat")

    # A stanza passes unchanged: unknown payload survives the hop between nodes.
    alice.message(bob2.jid, "dengan ekstra", extra="<x xmlns='urn:example:kabar-cluster' a='1'><y>z</y></x>")
    m = bob2.expect_message(body="dengan ekstra")
    x = m.find("{urn:example:kabar-cluster}x")
    assert x is not None and x.get("a") == "1" and x.find("{urn:example:kabar-cluster}y").text == "z", m

    # Order is kept between two nodes.
    for i in range(20):
        alice.message(bob.jid, f"urut {i}")
    seen = [bob.expect_message(frm=alice.jid, body=f"urut {i}").body for i in range(20)]
    assert seen == [f"urut {i}" for i in range(20)]

    # Going offline on node 2 is seen on node 1.
    bob.disconnect()
    alice.expect_presence(frm=bob.jid, type="unavailable")

    # RFC 6120 §7.7.2.2 across nodes: the same full JID binding on another node replaces the session
    # (the default resource_conflict = "replace"), which ends with <conflict/>.
    carol_old = n1.client("carol/desk")
    carol_new = n3.client("carol/desk", name="carol-on-n3")
    assert carol_old.expect_stream_error() == "conflict"
    carol_new.sync()
    alice.message(carol_new.jid, "carol di node tiga")
    carol_new.expect_message(frm=alice.jid, body="carol di node tiga")


def test_cluster_node_killed_sessions_expire_and_messages_go_offline(server, pg_storage, nats_url):
    """kill -9 of the node holding bob while alice (another node) writes to him: every message alice
    sent is delivered live, or kept (offline store / archive) and delivered when bob logs in to a
    surviving node; the other nodes forget the dead node's sessions within the lease, and one of them
    tells alice bob went offline (RFC 6121 §4.5.2)."""
    n1, n2, n3 = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    alice = n1.client("alice/desk")
    bob = n2.client("bob/phone")
    make_mutual(alice, bob)
    alice.message(bob.jid, "sebelum")
    bob.expect_message(frm=alice.jid, body="sebelum")

    sent = []
    n3_log_offset = len(n3.log())
    for i in range(30):
        body = f"aliran {i}"
        alice.message("bob@localhost", body)
        sent.append(body)
        if i == 10:
            n2.kill9()
            killed_at = time.monotonic()
        pause(0.05)
    alice.sync()

    # Node 3 carried no traffic for node 2: only the lease tells it the node is gone.
    expired_at = wait_log(n3, ["cluster node missed its lease.* node=n2 "], timeout=LEASE + 6, since=n3_log_offset)
    assert expired_at - killed_at <= LEASE + 2 * HEARTBEAT + 1, f"n2 expired {expired_at - killed_at:.1f}s after the kill"
    alice.expect_presence(frm=bob.jid, type="unavailable", timeout=LEASE + 6)

    after = []
    for i in range(5):
        body = f"setelah {i}"
        alice.message("bob@localhost", body)
        after.append(body)
    alice.sync()

    received_live = {m.body for m in bob.drain() if m.name == "message" and m.body}
    bob.kill()
    bob_again = n3.client("bob/phone", name="bob-on-n3")
    offline = []
    for body in after:
        msg = bob_again.expect_message(frm=alice.jid, body=body, timeout=10)
        assert msg.find("delay:delay") is not None, f"offline delivery carries <delay/>: {msg}"
        offline.append(body)
    pause(0.5)
    received = received_live | set(offline) | {m.body for m in bob_again.drain() if m.name == "message" and m.body}
    archived = {i.body for i in mam_all(bob_again, {"with": "alice@localhost"})}
    lost = [b for b in sent + after if b not in received and b not in archived]
    assert not lost, f"acknowledged messages lost: {lost}"

    # The killed node restarts under its name and rejoins; its users chat across nodes again.
    n1_offset = len(n1.log())
    n2.start()
    wait_log(n1, ['cluster node joined node="n2"'], timeout=20, since=n1_offset)
    bob_back = n2.client("bob/laptop", name="bob-back-on-n2")
    alice.expect_presence(frm=bob_back.jid)
    alice.message(bob_back.jid, "selamat datang kembali")
    bob_back.expect_message(frm=alice.jid, body="selamat datang kembali")


def test_cluster_frozen_node_unconfirmed_messages_go_offline_and_it_recovers(server, pg_storage, nats_url):
    """A node that stops answering but keeps its NATS connection (SIGSTOP: a long GC pause, a swapped-out
    VM) never confirms: after delivery_timeout_ms the sender stores the messages offline instead. Once
    the node runs again it is routed to again without any restart. Delivery between nodes is at least
    once: nothing is lost, a message may arrive twice (live late, and from the offline store)."""
    n1, n2 = start_cluster(server, pg_storage, nats_url, ["n1", "n2"])
    alice = n1.client("alice/desk")
    bob = n2.client("bob/phone")
    alice.message(bob.jid, "sebelum beku")
    bob.expect_message(frm=alice.jid, body="sebelum beku")

    n1_offset = len(n1.log())
    os.kill(n2.proc.pid, signal.SIGSTOP)
    try:
        frozen = [f"beku {i}" for i in range(3)]
        for body in frozen:
            alice.message("bob@localhost", body)
        wait_log(n1, ["cluster node does not take stanzas.* node=\"n2\""], timeout=5, since=n1_offset)
        pause(0.5)
    finally:
        os.kill(n2.proc.pid, signal.SIGCONT)

    # Heard from again (heartbeat): n2's sessions are routable again.
    deadline = time.monotonic() + 10
    n = 0
    while True:
        n += 1
        alice.message(bob.jid, f"setelah cair {n}")
        try:
            bob.expect_message(frm=alice.jid, body=f"setelah cair {n}", timeout=1.5)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    live = {m.body for m in bob.drain() if m.name == "message" and m.body}
    bob.disconnect()
    bob = n2.client("bob/phone", name="bob-again")
    pause(1)
    offline = {m.body for m in bob.drain() if m.name == "message" and m.body}
    missing = [b for b in frozen if b not in live | offline]
    assert not missing, f"lost while the node was frozen: {missing}"
    assert set(frozen) <= offline, f"unconfirmed messages must be in the offline store: {offline}"
    assert n2.died() is None


def test_cluster_survives_a_nats_outage_without_restarts(server, pg_storage, private_nats):
    """nats-server stops for a few seconds: each node keeps serving its own users, a message to a user
    on the other node waits in offline storage, and once NATS is back (kabar reconnects by itself)
    cross-node chat works again and the stored message reaches its user."""
    n1, n2 = start_cluster(server, pg_storage, private_nats.url, ["n1", "n2"])
    alice = n1.client("alice/desk")
    carol = n1.client("carol/desk")
    bob = n2.client("bob/phone")
    alice.message(bob.jid, "sebelum gangguan")
    bob.expect_message(frm=alice.jid, body="sebelum gangguan")

    n1_offset = len(n1.log())
    private_nats.stop()
    wait_log(n1, ["cluster: lost NATS"], timeout=10, since=n1_offset)

    # Local service goes on.
    alice.message(carol.jid, "masih jalan")
    carol.expect_message(frm=alice.jid, body="masih jalan")
    # Cross-node: no loss, it is stored for bob.
    alice.message("bob@localhost", "selama gangguan")
    alice.sync()
    # Longer than the lease: each node forgets the other's sessions and learns them again after.
    wait_log(n1, ["cluster node missed its lease.* node=n2 "], timeout=LEASE + 6, since=n1_offset)
    n2_offset = len(n2.log())

    private_nats.start()
    wait_log(n1, ['cluster node joined node="n2"'], timeout=20, since=n1_offset)
    wait_log(n2, ['cluster node joined node="n1"'], timeout=20, since=n2_offset)
    # Cross-node delivery again, with no kabar restart.
    deadline = time.monotonic() + 15
    n = 0
    while True:
        n += 1
        alice.message(bob.jid, f"setelah pulih {n}")
        try:
            bob.expect_message(frm=alice.jid, body=f"setelah pulih {n}", timeout=1.5)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    bob.message(alice.jid, "balasan setelah pulih")
    alice.expect_message(frm=bob.jid, body="balasan setelah pulih")
    assert n1.died() is None and n2.died() is None

    bob.disconnect()
    bob = n2.client("bob/phone", name="bob-again")
    bob.expect_message(frm=alice.jid, body="selama gangguan", timeout=10)


def test_cluster_refuses_to_start_without_shared_storage(server, tmp_path):
    """A cluster node on the embedded SQLite store would have accounts and offline messages nobody else
    sees: kabar refuses to start and says why."""
    from harness import ServerError

    srv = server(config={"cluster": {"enabled": True, "node": "lonely"}}, start=False)
    with pytest.raises(ServerError) as err:
        srv.start()
    assert 'backend = "postgres"' in str(err.value), str(err.value)
