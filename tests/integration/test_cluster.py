"""kabar as a cluster: several nodes on one PostgreSQL schema, joined over NATS (docs/CLUSTER.md).

Needs PostgreSQL (KABAR_TEST_POSTGRES_URL, scripts/pg) and nats-server (KABAR_TEST_NATS_URL, scripts/nats;
scripts/test starts both). Without PostgreSQL these tests skip unless KABAR_REQUIRE_POSTGRES=1. Without
KABAR_TEST_NATS_URL the tests start their own nats-server (it must be installed). The outage test always
runs a private nats-server of its own, since it stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import time
import urllib.parse
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


def start_cluster(server, pg_storage, nats_url: str, names: list[str], prepare=None):
    """One kabar per name on the same schema and NATS; accounts are created once (by the first).
    `prepare(srv)`, when given, edits each node's config (srv.config, srv.config_path) before it starts."""
    nodes = []
    for i, name in enumerate(names):
        cfg = {
            "storage": pg_storage,
            "cluster": {"enabled": True, "nats_url": nats_url, "node": name, "heartbeat_secs": HEARTBEAT,
                        "lease_secs": LEASE, "delivery_timeout_ms": 1500},
        }
        srv = server(config=cfg, users=None if i == 0 else {}, start=prepare is None)
        if prepare is not None:
            prepare(srv)
            srv.start()
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


def directory(srv) -> list[dict]:
    """One node's copy of the session directory, read through its admin API (`GET /sessions` answers
    from that copy): the listed entries (jid, node, available, …)."""
    from test_admin import Http

    if getattr(srv, "_directory_http", None) is None:
        srv._directory_http = Http(srv, (srv.data_dir / "admin-token").read_text().strip())
    r = srv._directory_http.api("GET", "/sessions")
    assert r.status == 200, r
    return json.loads(r.text)["sessions"]


def wait_known(nodes, *sessions, available: bool = True, timeout: float = 20) -> None:
    """Waits until every node in `nodes` lists each of `sessions` (clients or raw streams: on the node
    they are connected to; or full JIDs) in its copy of the directory — as available, unless
    `available` is False.

    The directory is learnt over NATS (docs/CLUSTER.md): for a moment after a bind or an initial
    presence the other nodes do not know the session yet, and a stanza they route to that user then
    goes where it would for an offline user (offline storage, or no conflict on a cross-node rebind).
    A test that talks across nodes right after a login waits for this first; what it then checks is
    routing on a directory that has heard of the session, which is what the cluster promises."""
    wanted = [(s, None) if isinstance(s, str) else (s.jid, s.server.config["cluster"]["node"]) for s in sessions]
    deadline = time.monotonic() + timeout
    for srv in nodes:
        while True:
            seen = directory(srv)
            missing = [(jid, node) for jid, node in wanted
                       if not any(e["jid"] == jid and node in (None, e.get("node")) and (e["available"] or not available)
                                  for e in seen)]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{srv.workdir} ({srv.config['cluster']['node']}) does not list {missing} "
                                     f"{'as available ' if available else ''}within {timeout}s: {seen}")
            pause(0.05)  # (the clients' loop runs meanwhile: they keep answering the server's pings)


def test_cluster_rfc6121_chat_and_presence_between_users_on_different_nodes(server, pg_storage, nats_url):
    """RFC 6121 §8.5.3.1 (full JID), §8.5.2.1.1 (bare JID: every available resource, cluster-wide) and
    §4.2.2/§4.4.2 (presence broadcast) with alice, bob and carol on three different nodes."""
    n1, n2, n3 = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    alice = n1.client("alice/desk")
    bob = n2.client("bob/phone")
    wait_known([n1, n2], alice, bob)
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
    wait_known([n1], bob2)
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
    wait_known([n3], carol_old)
    carol_new = n3.client("carol/desk", name="carol-on-n3")
    assert carol_old.expect_stream_error() == "conflict"
    carol_new.sync()
    wait_known([n1], carol_new)
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
    wait_known([n1, n2], alice, bob)
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
    wait_known([n1], bob_back)
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
    wait_known([n1], bob)
    alice.message(bob.jid, "sebelum beku")
    bob.expect_message(frm=alice.jid, body="sebelum beku")

    n1_offset = len(n1.log())
    os.kill(n2.proc.pid, signal.SIGSTOP)
    try:
        frozen = [f"beku {i}" for i in range(3)]
        for body in frozen:
            alice.message("bob@localhost", body)
        wait_log(n1, ["cluster node does not take stanzas.* node=\"n2\""], timeout=20, since=n1_offset)
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
    cross-node chat works again and the stored messages reach their user, who stayed connected, each
    exactly once, with a XEP-0203 delay (XEP-0160; docs/CLUSTER.md "Failure behaviour")."""
    n1, n2 = start_cluster(server, pg_storage, private_nats.url, ["n1", "n2"])
    alice = n1.client("alice/desk")
    carol = n1.client("carol/desk")
    bob = n2.client("bob/phone")
    wait_known([n1], bob)
    alice.message(bob.jid, "sebelum gangguan")
    bob.expect_message(frm=alice.jid, body="sebelum gangguan")

    n1_offset = len(n1.log())
    private_nats.stop()
    wait_log(n1, ["cluster: lost NATS"], timeout=10, since=n1_offset)

    # Local service goes on.
    alice.message(carol.jid, "masih jalan")
    carol.expect_message(frm=alice.jid, body="masih jalan")
    # Cross-node: no loss, it is stored for bob.
    during = [f"selama gangguan {i}" for i in range(5)]
    for body in during:
        alice.message("bob@localhost", body)
    alice.sync()
    # Longer than the lease: each node forgets the other's sessions and learns them again after.
    wait_log(n1, ["cluster node missed its lease.* node=n2 "], timeout=LEASE + 6, since=n1_offset)
    n2_offset = len(n2.log())

    private_nats.start()
    wait_log(n1, ['cluster node joined node="n2"'], timeout=20, since=n1_offset)
    wait_log(n2, ['cluster node joined node="n1"'], timeout=20, since=n2_offset)
    # XEP-0160 / RFC 6121 §8.5.2.1: bob stayed online on n2 all along; once the cluster heals his
    # node hands him what was stored for him meanwhile, as at initial presence (with XEP-0203 delay).
    for body in during:
        msg = bob.expect_message(frm=alice.jid, body=body, timeout=30)
        assert msg.find("delay:delay") is not None, f"stored message comes with <delay/>: {msg}"
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

    # Each exactly once: no second hand-over (both nodes heal), and nothing left in the offline store.
    got = [m.body for m in bob.received if m.name == "message" and m.body in during]
    assert sorted(got) == sorted(during), f"outage messages delivered more than once: {got}"
    bob.disconnect()
    bob = n2.client("bob/phone", name="bob-again")
    bob.sync()
    left = [m.body for m in bob.drain() if m.name == "message" and m.body in during]
    assert not left, f"delivered live yet still in the offline store: {left}"


def test_cluster_refuses_to_start_without_shared_storage(server, tmp_path):
    """A cluster node on the embedded SQLite store would have accounts and offline messages nobody else
    sees: kabar refuses to start and says why."""
    from harness import ServerError

    srv = server(config={"cluster": {"enabled": True, "node": "lonely"}}, start=False)
    with pytest.raises(ServerError) as err:
        srv.start()
    assert 'backend = "postgres"' in str(err.value), str(err.value)


def _muc_home(nodes, room: str):
    """The node whose log says it serves `room` (docs/CLUSTER.md "Homes")."""
    pattern = re.escape(f"this node now serves {room}")
    homes = [n for n in nodes if re.search(pattern, n.log())]
    assert len(homes) == 1, f"expected one home for {room}, got {[h.config['cluster']['node'] for h in homes]}"
    return homes[0]


def _self_ping_until(client, occupant: str, condition: str, timeout: float = 20):
    """XEP-0410 §3.2 self-ping, repeated until the answer is `condition` (None: a result)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=occupant, timeout=10)
        got = None if answer.type == "result" else answer.error_condition
        if got == condition:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"self-ping to {occupant} answered {got!r}, wanted {condition!r}: {answer}")
        pause(0.2)


def test_cluster_xep0045_room_shared_across_nodes_and_rehomed_when_its_node_dies(server, pg_storage, nats_url):
    """XEP-0045 across nodes: alice (n1), bob (n2) and carol (n3) share one persistent room — each
    sees the others' presence (§7.2.3) and every groupchat message (§7.4) — though the room lives on
    one home node. kill -9 of that node: the next stanza re-homes the room on a survivor from the
    stored state (name, persistence, affiliations); the survivors' XEP-0410 self-ping says
    not-acceptable (they are not occupants of the re-homed room), they join again and chat on."""
    from test_muc import create_room, join, muc, muc_client, status_codes

    nodes = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    users = {"n1": "alice", "n2": "bob", "n3": "carol"}
    clients = {name: muc_client(n, f"{users[name]}/pc") for name, n in zip(users, nodes)}
    wait_known(nodes, *clients.values())
    room = "rapat@conference.localhost"
    alice, bob, carol = clients["n1"], clients["n2"], clients["n3"]
    create_room(alice, room, "alice", **{"muc#roomconfig_persistentroom": "1",
                                         "muc#roomconfig_roomname": "Rapat Lintas Node"})
    home = _muc_home(nodes, room)

    _, _, bob_sees, _ = join(bob, room, "bob")
    assert [str(p["from"]) for p in bob_sees] == [f"{room}/alice"]
    alice.expect_presence(frm=f"{room}/bob")
    _, _, carol_sees, _ = join(carol, room, "carol")
    assert sorted(str(p["from"]) for p in carol_sees) == [f"{room}/alice", f"{room}/bob"]
    alice.expect_presence(frm=f"{room}/carol")
    bob.expect_presence(frm=f"{room}/carol")

    for sender, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        body = f"groupchat dari {nick}"
        sender.send(f"<message to='{room}' type='groupchat' id='gc-{nick}'><body>{body}</body></message>")
        for c in (alice, bob, carol):
            got = c.expect_message(frm=f"{room}/{nick}", body=body)
            assert got.get("type") == "groupchat" and got.get("id") == f"gc-{nick}", got
    # Only the home node ever held the room: nobody else claimed it.
    assert _muc_home(nodes, room) is home

    home_name = home.config["cluster"]["node"]
    survivors = [(name, clients[name]) for name in users if name != home_name]
    for _, c in survivors:
        _self_ping_until(c, f"{room}/{users[_]}", None)
    home.kill9()

    # The next stanza for the room goes to a surviving node, which serves it from the stored state.
    for name, c in survivors:
        _self_ping_until(c, f"{room}/{users[name]}", "not-acceptable")
    new_home = _muc_home([n for n in nodes if n is not home], room)
    (a_name, a), (b_name, b) = survivors
    own, _, a_sees, _ = join(a, room, users[a_name])
    assert "110" in status_codes(own) and "201" not in status_codes(own), own
    assert a_sees == []
    _, _, b_sees, _ = join(b, room, users[b_name])
    assert [str(p["from"]) for p in b_sees] == [f"{room}/{users[a_name]}"]
    a.expect_presence(frm=f"{room}/{users[b_name]}")
    info = a.iq_ok("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room)
    identity = info.find("{http://jabber.org/protocol/disco#info}query/{http://jabber.org/protocol/disco#info}identity")
    assert identity.get("name") == "Rapat Lintas Node", info
    b.send(f"<message to='{room}' type='groupchat' id='after'><body>masih rapat</body></message>")
    for c in (a, b):
        c.expect_message(frm=f"{room}/{users[b_name]}", body="masih rapat")
    _self_ping_until(a, f"{room}/{users[a_name]}", None)
    assert new_home.died() is None


NS_SM = "urn:xmpp:sm:3"


def test_cluster_xep0198_resume_on_another_node_after_kill_fails_cleanly_and_nothing_acked_is_lost(
        server, pg_storage, nats_url):
    """XEP-0198 §5 across nodes (docs/CLUSTER.md "XEP-0198 across nodes"): resumption state lives on
    the node holding the connection, and every message is archived (XEP-0313) on the sender's node
    before the sender's ack. alice's stream (raw socket, resumption on, never acking) is on n2 and
    a slixmpp client with resumption too; bob on n1 sends with <r/> after each message. n2 gets
    kill -9 mid-flow. On n3, <resume/> with alice's previd fails with <item-not-found/> (§5, the
    stream stays usable and binds a new session), slixmpp falls back to a new session by itself,
    and every message the cluster acked to bob is in alice's offline store or archive."""
    from harness import loop, plugin_client, run

    n1, n2, n3 = start_cluster(server, pg_storage, nats_url, ["n1", "n2", "n3"])
    alice = n2.raw(name="alice-raw-n2")
    alice.login("alice", resource="phone")
    alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = alice.expect("enabled", NS_SM)
    previd = enabled.get("id")
    assert previd and enabled.get("resume") in ("true", "1"), enabled
    alice.send("<presence/>")
    carol = plugin_client(n2, "carol/pc", {"xep_0198": {}})
    carol_sm = carol.xmpp.plugin["xep_0198"]
    assert carol_sm.sm_id, "slixmpp did not get a resumable session"
    wait_known([n1], alice, carol)

    bob = n1.raw(name="bob-raw-n1")
    bob.login("bob", resource="pump")
    bob.send(f"<enable xmlns='{NS_SM}'/>")
    bob.expect("enabled", NS_SM)
    acked = 0

    def send_and_wait_acked(bodies, to):
        nonlocal acked
        start = acked
        bob.send("".join(f"<message to='{to}' type='chat' id='sm{start + i}'><body>{b}</body></message>"
                         f"<r xmlns='{NS_SM}'/>" for i, b in enumerate(bodies)))
        deadline = time.monotonic() + 30
        while acked < start + len(bodies):
            st = bob.recv(max(0.01, deadline - time.monotonic()))
            if st.name == "a" and st.ns == NS_SM:
                acked = max(acked, int(st.get("h")))

    before = [f"sebelum mati {i}" for i in range(10)]
    send_and_wait_acked(before, "alice@localhost")
    send_and_wait_acked(["untuk carol"], carol.jid)
    carol.expect_message(frm=bob.jid, body="untuk carol")
    # alice's stream read them but never acknowledged: n2 holds them as unacked when it dies.
    live = set()
    deadline = time.monotonic() + 10
    while len(live) < len(before) and time.monotonic() < deadline:
        st = alice.recv(max(0.01, deadline - time.monotonic()))
        if st.name == "message" and st.body:
            live.add(st.body)
    n2.kill9()
    after = [f"setelah mati {i}" for i in range(10)]
    send_and_wait_acked(after, "alice@localhost")
    assert acked == len(before) + 1 + len(after)

    # §5: resumption on another node fails cleanly; the same stream then binds a new session.
    again = n3.raw(name="alice-raw-n3")
    again.open()
    again.starttls()
    assert again.auth_scram("alice", n1.passwords[n1.jid("alice")]).ok
    again.restart()
    again.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
    failed = again.expect("failed", NS_SM)
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None, failed
    assert again.bind("phone").type == "result"
    again.kill()

    # slixmpp tries to resume on n3 and binds a new session when told item-not-found.
    x = carol.xmpp

    async def reconnect_to_n3():
        fut = loop().create_future()
        x.add_event_handler("session_resumed", lambda ev: fut.done() or fut.set_result("resumed"), disposable=True)
        x.add_event_handler("session_start", lambda ev: fut.done() or fut.set_result("new-session"), disposable=True)
        carol.disconnected = False
        # Each test node has its own private CA (same subject name): trust only n3's now.
        x.ssl_context = ssl.create_default_context()
        x.ca_certs = n3.ca
        x.connect("127.0.0.1", n3.c2s_port)
        return await asyncio.wait_for(fut, 30)

    carol.expect_disconnected()
    outcome = run(reconnect_to_n3(), timeout=40)
    assert outcome == "new-session", outcome

    # Every message the cluster acked is in the offline store or the archive (MAM), or arrived.
    alice_n3 = n3.client("alice/laptop")
    pause(1)
    offline = {m.body for m in alice_n3.drain() if m.name == "message" and m.body}
    archived = {i.body for i in mam_all(alice_n3, {"with": "bob@localhost"})}
    lost = [b for b in before + after if b not in live | offline | archived]
    assert not lost, f"acked messages lost: {lost}"
    # Those n2 held unacknowledged died with it: the archive is what keeps them.
    assert set(before) <= archived, sorted(set(before) - archived)
    assert set(after) <= offline | archived


def test_cluster_component_on_one_node_serves_users_of_another_and_admin_sees_every_node(
        server, pg_storage, nats_url):
    """XEP-0114 across nodes: the component bot.localhost connects to n1; alice on n2 reaches it and
    its reply reaches her; a second connection for the same domain on n2 is refused while n1 serves it.
    The admin API of n2 lists the sessions of both nodes with their node and kicks a session held
    by n1; /metrics on n2 shows the cluster (nodes seen, remote sessions, routes and forwards)."""
    from harness import COMPONENT_DOMAIN, LoginFailed
    from test_admin import Http, metric

    n1, n2 = start_cluster(server, pg_storage, nats_url, ["n1", "n2"])
    bot = n1.component()
    wait_log(n1, [re.escape(f"this node now serves component:{COMPONENT_DOMAIN}")], timeout=10)
    alice = n2.client("alice/desk")
    alice.message(COMPONENT_DOMAIN, "halo bot")
    got = bot.expect_message(frm=alice.jid, body="halo bot")
    assert got.to == COMPONENT_DOMAIN
    bot.message(alice.jid, "halo manusia", frm=COMPONENT_DOMAIN)
    alice.expect_message(frm=COMPONENT_DOMAIN, body="halo manusia")
    alice.send(f"<iq type='get' to='{COMPONENT_DOMAIN}' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    asked = bot.expect(lambda s: s.name == "iq" and s.id == "v1", "the version query")
    bot.send(f"<iq type='result' from='{COMPONENT_DOMAIN}' to='{asked.frm}' id='v1'/>")
    assert alice.expect(lambda s: s.name == "iq" and s.id == "v1", "the answer").type == "result"
    with pytest.raises(LoginFailed):
        n2.component()

    bob = n1.client("bob/phone")
    wait_known([n2], bob)
    h = Http(n2, (n2.data_dir / "admin-token").read_text().strip())
    r = h.api("GET", "/sessions")
    assert r.status == 200, r
    listed = {s["jid"]: s.get("node") for s in json.loads(r.text)["sessions"]}
    assert listed == {alice.jid: "n2", bob.jid: "n1"}, listed
    r = h.api("DELETE", "/sessions/" + urllib.parse.quote(bob.jid, safe=""))
    assert r.status == 204, r
    assert bob.expect_stream_error() == "policy-violation"

    samples = h.metrics()
    assert metric(samples, "kabar_cluster_nodes_seen", node="n2") == 1
    assert metric(samples, "kabar_cluster_nats_connected", node="n2") == 1
    assert metric(samples, "kabar_cluster_nats_connects_total", node="n2") >= 1
    assert metric(samples, "kabar_cluster_forwarded_total", node="n2") >= 2
    assert metric(samples, "kabar_cluster_forward_failures_total", node="n2") == 0
    assert metric(samples, "kabar_cluster_homes_served", node="n2") == 0
    n1_samples = Http(n1, None).metrics()
    assert metric(n1_samples, "kabar_cluster_homes_served", node="n1") == 1
    assert metric(n1_samples, "kabar_cluster_remote_routes_total", node="n1") >= 2
