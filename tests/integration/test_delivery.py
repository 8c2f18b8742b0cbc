"""Delivery guarantees: XEP-0198 stream management (acks, resumption, the resumption window) and what
survives a SIGKILL of the server (XEP-0198 acks vs. offline storage XEP-0160 and the XEP-0313 archive)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import (
    LOGIN_TIMEOUT,
    QUIET,
    WAIT,
    StreamClosed,
    loop,
    mam_all,
    pause,
    plugin_client,
    run,
    transcript,
)

NS_SM = "urn:xmpp:sm:3"


# ---------------------------------------------------------------------------------------------------------
# helpers


def sm_client(srv, user, **opts):
    """A slixmpp client with XEP-0198 (stream management with resumption) enabled at login."""
    c = plugin_client(srv, user, {"xep_0198": {}}, **opts)
    sm = c.xmpp.plugin["xep_0198"]
    assert "stream_management" in c.features and sm.sm_id, \
        f"{c.name}: stream management was not enabled with resumption (features {c.features}, id {sm.sm_id})"
    return c


def drop_connection(c) -> None:
    """Kill the client's TCP connection abruptly (transport.abort(): no </stream:stream>, no TLS
    close_notify), the way a phone losing its network looks to the server."""
    transcript(c.name, "--", "transport.abort() (connection dropped)")
    c.xmpp.transport.abort()
    c.expect_disconnected()


def reconnect(c, timeout: float = LOGIN_TIMEOUT) -> str:
    """Connect again with the same slixmpp object. Returns "resumed" when XEP-0198 resumption
    succeeded, "new-session" when the server refused it and slixmpp bound a fresh session."""
    x = c.xmpp

    async def go():
        outcome = loop().create_future()

        def done(kind, _ev=None):
            if not outcome.done():
                outcome.set_result(kind)

        x.add_event_handler("session_resumed", lambda ev: done("resumed"), disposable=True)
        x.add_event_handler("session_start", lambda ev: done("new-session"), disposable=True)
        x.add_event_handler("connection_failed", lambda ev: done("connection-failed"), disposable=True)
        c.disconnected = False
        x.connect("127.0.0.1", c.server.c2s_port)
        try:
            return await asyncio.wait_for(outcome, timeout)
        except asyncio.TimeoutError:
            return "timeout"

    transcript(c.name, "--", "reconnecting")
    kind = run(go())
    transcript(c.name, "--", f"reconnect: {kind}")
    return kind


def bodies_from(c, frm: str) -> list[str]:
    """Bodies of every message from `frm` that `c` received so far (consumed or not), in order."""
    return [s.body for s in c.received
            if s.name == "message" and s.type != "error" and (s.frm or "").split("/")[0] == frm
            and s.body is not None]


def wait_for_bodies(c, frm: str, expected: list[str], timeout: float = WAIT) -> list[str]:
    """Wait until every expected body from `frm` has arrived, then listen QUIET longer for extras
    (duplicates); return everything that arrived from `frm`."""
    deadline = time.monotonic() + timeout
    while not set(expected) <= set(bodies_from(c, frm)) and time.monotonic() < deadline:
        pause(0.05)
    pause(QUIET)
    return bodies_from(c, frm)


def silence_acks(c):
    """Stop slixmpp answering the server's <r/> (the client still counts what it handles). Returns a
    function telling whether an <r/> went unanswered since."""
    c.xmpp.remove_handler("Stream Management Request Ack")
    start = len(c.received)
    return lambda: any(s.name == "r" and s.ns == NS_SM for s in c.received[start:])


def restore_acks(c) -> None:
    """Undo silence_acks: slixmpp answers <r/> again."""
    sm = c.xmpp.plugin["xep_0198"]
    c.xmpp.register_handler(Callback("Stream Management Request Ack", MatchXPath(sm_stanza.RequestAck.tag_name()),
                                     sm._handle_request_ack, instream=True))


def stanza_id(msg, by: str) -> str | None:
    """The XEP-0359 <stanza-id/> that `by` put on a message."""
    for sid in msg.xml.findall("{urn:xmpp:sid:0}stanza-id"):
        if sid.get("by") == by:
            return sid.get("id")
    return None


def wait_for_log(srv, pattern: str, timeout: float = WAIT, after: int = 0) -> str:
    """Wait until the server log (from character `after`) has a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while True:
        for line in srv.log()[after:].splitlines():
            if rx.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{srv.log_tail(30)}")
        pause(0.05)


# ---------------------------------------------------------------------------------------------------------
# XEP-0198 resumption


def test_resumed_session_gets_every_message_exactly_once_after_connection_drop(server):
    """XEP-0198 §5 (resumption) / §4 (acks): the recipient's TCP connection dies abruptly in the middle
    of a conversation; the sender keeps sending; the recipient reconnects and resumes with the h it
    handled. The server drops what the client handled (acknowledged with <a/> or only counted in the
    <resume h/>), resends the rest, then what was queued while detached: every message arrives exactly
    once, in order."""
    srv = server()
    alice = sm_client(srv, "alice/phone")
    bob = srv.client("bob/desk")
    sent = []

    def send(phase, n=5):
        for i in range(n):
            sent.append(f"{phase} {i}")
            bob.message("alice@localhost/phone", sent[-1])

    send("read and acked")
    for body in sent:
        alice.expect_message(frm=bob.jid, body=body)
    alice.sync()  # lets slixmpp answer the server's <r/>

    unacked = silence_acks(alice)
    send("read, not acked")
    for body in sent[-5:]:
        alice.expect_message(frm=bob.jid, body=body)
    assert unacked(), "the server asked for no ack although alice read new messages"

    send("in flight")  # alice's loop does not run: these sit unread in her socket, or not yet written
    drop_connection(alice)
    send("while away")
    bob.sync()

    assert reconnect(alice) == "resumed", "the server refused to resume the session"
    got = wait_for_bodies(alice, bob.bare, sent)
    missing = [b for b in sent if b not in got]
    dupes = sorted({b for b in got if got.count(b) > 1})
    assert not missing and not dupes, f"missing {missing}, duplicated {dupes}; got {got}"
    assert got == sent, f"out of order: {got}"
    # and the resumed session is a normal one again: it sends and receives
    restore_acks(alice)
    alice.assert_works()
    alice.message(bob.jid, "back")
    bob.expect_message(frm="alice@localhost/phone", body="back")


def test_messages_sent_around_a_connection_drop_reach_the_peer_exactly_once(server):
    """XEP-0198 §5, the client's direction: alice sends messages, some written before her connection
    dies, some still in her client's queue. On resumption the server's <resumed h/> tells her client
    which ones it handled; the client resends only the others: bob gets each message exactly once."""
    srv = server()
    alice = sm_client(srv, "alice/phone")
    bob = srv.client("bob/desk")
    sm = alice.xmpp.plugin["xep_0198"]
    # the harness writes some stanzas around slixmpp's counter; an ack aligns slixmpp with the server
    sm.request_ack()
    alice.expect(lambda s: s.name == "a" and s.ns == NS_SM, "the server's <a/>")
    sent = []
    for i in range(5):
        sent.append(f"written {i}")
        alice.xmpp.send_message(mto=bob.jid, mbody=sent[-1], mtype="chat")
    pause(0.01)
    for i in range(5):
        sent.append(f"still queued {i}")
        alice.xmpp.send_message(mto=bob.jid, mbody=sent[-1], mtype="chat")
    drop_connection(alice)
    assert reconnect(alice) == "resumed"
    got = wait_for_bodies(bob, alice.bare, sent)
    assert got == sent, f"bob got {got}"


@pytest.mark.slow
def test_messages_left_when_the_resumption_window_passes_go_to_offline_storage(server):
    """XEP-0198 §5 (the session is kept only for the resumption window) / RFC 6121 §8.5.3.2.1 /
    XEP-0160: when the window (`stream_management.resume_timeout_secs`) passes, messages the client
    received but never acknowledged and messages queued while it was gone are not lost: they go to
    offline storage. A late <resume/> fails with <item-not-found/>, and the next login gets every one
    of them (with XEP-0203 delay stamps); the unacknowledged ones may be duplicates of what the client
    saw (at-least-once) but carry the same XEP-0359 stanza-id, and the archive holds each message once."""
    srv = server(config={"stream_management": {"resume_timeout_secs": 2}})
    alice = sm_client(srv, "alice/phone")
    bob = srv.client("bob/desk")
    assert alice.xmpp.plugin["xep_0198"].sm_id
    unacked = silence_acks(alice)
    for i in range(3):
        bob.message("alice@localhost/phone", f"seen, never acked {i}")
    first_copies = [alice.expect_message(frm=bob.jid, body=f"seen, never acked {i}") for i in range(3)]
    assert unacked()
    log_mark = len(srv.log())
    drop_connection(alice)
    for i in range(3):
        bob.message("alice@localhost/phone", f"queued while away {i}")
    bob.sync()

    wait_for_log(srv, r"resumption window passed", timeout=10, after=log_mark)
    wait_for_log(srv, r"session ended", timeout=WAIT, after=log_mark)  # rerouting done

    before = len(alice.received)
    restore_acks(alice)
    assert reconnect(alice) == "new-session", "the session was resumed after its window passed"
    failed = [s for s in alice.received[before:] if s.name == "failed" and s.ns == NS_SM]
    assert failed and failed[0].xml.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None, \
        f"expected <failed><item-not-found/></failed> for the expired session, got {failed}"
    alice.send("<presence/>")  # offline messages come with initial presence (XEP-0160 §3)
    expected = [f"seen, never acked {i}" for i in range(3)] + [f"queued while away {i}" for i in range(3)]
    redelivered = {}
    for body in expected:
        msg = alice.expect_message(frm=bob.jid, body=body)
        assert msg.find("delay:delay") is not None, f"not from offline storage (no <delay/>): {msg}"
        redelivered[body] = stanza_id(msg, "alice@localhost")
    alice.expect_no_message(frm=bob.bare)

    # docs/MAM.md: routed a second time, a message keeps its stanza-id and is archived only once
    archived = mam_all(alice, {"with": "bob@localhost"})
    assert [i.body for i in archived] == expected, archived
    assert redelivered == {i.body: i.id for i in archived}, (redelivered, archived)
    assert [stanza_id(s, "alice@localhost") for s in first_copies] == [i.id for i in archived[:3]]


# ---------------------------------------------------------------------------------------------------------
# SIGKILL of the server: what it acknowledged must survive


def pump_and_kill(srv, to: str, n: int, kill_after: int) -> int:
    """bob (a raw stream with XEP-0198 enabled) sends n messages to `to`, each followed by <r/>; as
    soon as the server acknowledged kill_after of them, the server gets SIGKILL. Returns the highest
    h the server acknowledged (acks already on the wire at the kill included)."""
    bob = srv.raw(name="bob-raw")
    bob.login("bob", resource="pump")
    bob.send(f"<enable xmlns='{NS_SM}'/>")
    enabled = bob.recv()
    assert enabled.name == "enabled" and enabled.ns == NS_SM, f"expected <enabled/>, got {enabled}"
    bob.send("".join(f"<message to='{to}' type='chat' id='k{i}'><body>kill test {i}</body></message>"
                     f"<r xmlns='{NS_SM}'/>" for i in range(n)))
    acked = 0
    deadline = time.monotonic() + 20
    while acked < kill_after:
        st = bob.recv(max(0.01, deadline - time.monotonic()))
        if st.name == "a" and st.ns == NS_SM:
            acked = max(acked, int(st.get("h")))
    srv.kill9()
    transcript("test", "--", f"server killed with SIGKILL after h={acked}")
    while True:  # acks already sent before the kill count too
        try:
            st = bob.recv(2)
        except (StreamClosed, TimeoutError):
            break
        if st.name == "a" and st.ns == NS_SM:
            acked = max(acked, int(st.get("h")))
    bob.kill()
    transcript("test", "--", f"highest ack from the server: h={acked} of {n}")
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("recipient", ["offline", "online"])
def test_every_message_the_server_acked_survives_sigkill(server, recipient):
    """XEP-0198 §4 (<a h/> means handled) with kabar's durability promise (docs/PROTOCOL.md: handled =
    routed, stored or answered, stored = written to the database; docs/MAM.md: archived durably before
    delivery): a sender pumps messages with <r/> after each and the server is SIGKILLed in the middle.
    After a restart, every message the server had acknowledged is delivered to the recipient at login
    (offline storage) or present in her archive (XEP-0313) — for a recipient that was offline, and one
    that was online with stream management (her unacknowledged deliveries die with the process)."""
    n = 300
    srv = server()
    live = None
    if recipient == "online":
        live = sm_client(srv, "alice/phone")
    acked = pump_and_kill(srv, "alice@localhost", n, kill_after=30)
    assert acked < n, "the server handled every message before the kill: the test proves nothing"
    received_live = set()
    if live is not None:
        live.expect_disconnected()  # reads what the server wrote to her before it died
        received_live = set(bodies_from(live, "bob@localhost"))

    srv.start()
    alice = srv.client("alice/again")
    pause(QUIET)
    offline = bodies_from(alice, "bob@localhost")
    archived = [item.body for item in mam_all(alice, {"with": "bob@localhost"})]

    transcript("test", "--", f"acked {acked}; after the restart: {len(received_live)} had arrived live, "
                             f"{len(offline)} delivered from offline storage, {len(archived)} archived")
    dup_offline = sorted({b for b in offline if offline.count(b) > 1})
    dup_archive = sorted({b for b in archived if archived.count(b) > 1})
    assert not dup_offline and not dup_archive, \
        f"duplicates: offline {dup_offline[:10]}, archive {dup_archive[:10]}"
    known = received_live | set(offline) | set(archived)
    lost = [i for i in range(acked) if f"kill test {i}" not in known]
    assert not lost, (f"{len(lost)} of the {acked} acknowledged messages are lost (neither delivered "
                      f"live, nor offline after the restart, nor archived): indexes {lost[:20]}")
    # the archive is in sending order, with nothing bob never sent
    order = [int(b.rsplit(" ", 1)[1]) for b in archived]
    assert order == sorted(order) and all(0 <= i < n for i in order), order
