"""HTTPS listener isolation (docs/OVERLOAD.md "HTTPS listener isolation", `[http] listener_threads`,
`listener_nice`): the listener runs on its own runtime whose threads the kernel schedules after the
XMPP session workers, so an HTTP flood (status-page reports) cannot take the CPU from chat.

What the tests can check without timing: the threads exist with the configured nice value (read from
/proc, Linux only), the session workers keep the process's priority, and the listener still serves
the report endpoint in every mode. WebSocket and BOSH sessions through the listener (their XMPP side
is spawned back onto the session runtime) are driven by Chromium in tests/browser/webclient.test.mjs.
The effect on chat latency is a benchmark, not a test (docs/BENCHMARKS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import new_id
from test_admin import Http

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")

LISTENER_THREAD = "kabar-https"


def threads(pid: int) -> list[tuple[str, int]]:
    """(name, nice) of every thread of `pid`, from /proc/PID/task/TID/{comm,stat}."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended while we listed
        # Fields after the parenthesised name: state is field 3, nice field 19 (proc(5)).
        nice = int(stat.rsplit(")", 1)[1].split()[16])
        out.append((name, nice))
    return out


def process_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def report(srv) -> None:
    body = {"service": "localhost", "problem": "cant_send", "device": new_id("dev")}
    r = Http(srv, None).request("POST", "/status/reports", body=body, token=None)
    assert r.status == 202, r


def test_listener_threads_run_nicer_than_the_session_workers(server):
    srv = server(config={"http": {"listener_threads": 2, "listener_nice": 7}})
    pid = srv.proc.pid
    base = process_nice(pid)
    found = threads(pid)
    listener = [nice for name, nice in found if name == LISTENER_THREAD]
    # Session workers, the store's threads, the main thread: everything else keeps the process's.
    others = [nice for name, nice in found if name != LISTENER_THREAD]
    assert len(listener) >= 2, found  # the two workers, plus blocking-pool threads if any started
    assert all(n == min(base + 7, 19) for n in listener), found
    assert len(others) >= 2 and all(n == base for n in others), found
    report(srv)


def test_listener_nice_zero_keeps_the_process_priority(server):
    srv = server(config={"http": {"listener_nice": 0}})
    pid = srv.proc.pid
    listener = [nice for name, nice in threads(pid) if name == LISTENER_THREAD]
    assert listener and all(n == process_nice(pid) for n in listener), listener
    report(srv)


def test_listener_threads_zero_serves_https_on_the_session_runtime(server):
    srv = server(config={"http": {"listener_threads": 0}})
    assert not [t for t in threads(srv.proc.pid) if t[0] == LISTENER_THREAD]
    report(srv)
    r = Http(srv, None).request("GET", "/status/summary.json", token=None)
    assert r.status == 200, r


def policies(pid: int) -> list[tuple[str, int]]:
    """(name, scheduling policy) of every thread of `pid`: field 41 of /proc/PID/task/TID/stat."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        out.append((name, int(stat.rsplit(")", 1)[1].split()[38])))
    return out


SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5
# The embedded store's reader threads run under SCHED_BATCH (crates/kabar-storage-sqlite/src/readers.rs).
STORE_READER_PREFIX = "kabar-sqlite-rd"


def expected_policy(name: str) -> int:
    """The policy every thread that is not the HTTPS listener's must keep."""
    return SCHED_BATCH if name.startswith(STORE_READER_PREFIX) else SCHED_OTHER


def test_listener_sched_idle_puts_only_the_listener_threads_under_sched_idle(server):
    """`listener_sched = "idle"`: the listener's threads are SCHED_IDLE (each sets its own policy at
    thread start), every other thread stays SCHED_OTHER, and reports are still served."""
    srv = server(config={"http": {"listener_threads": 2, "listener_sched": "idle"}})
    found = policies(srv.proc.pid)
    listener = [p for name, p in found if name == LISTENER_THREAD]
    others = [(name, p) for name, p in found if name != LISTENER_THREAD]
    assert len(listener) >= 2 and all(p == SCHED_IDLE for p in listener), found
    assert len(others) >= 2 and all(p == expected_policy(name) for name, p in others), found
    report(srv)


def test_listener_sched_default_is_nice_under_sched_other(server):
    srv = server()
    found = policies(srv.proc.pid)
    assert [p for name, p in found if name == LISTENER_THREAD], found
    assert all(p == expected_policy(name) for name, p in found), found
