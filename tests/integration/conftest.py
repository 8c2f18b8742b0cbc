"""Fixtures for kabar's integration tests.

- `server`: a factory. `server(users=None, config=None, start=True)` makes a fresh kabar with its own
  temporary data folder, free loopback ports and accounts (default: alice, bob, carol), starts it and
  waits until every port accepts. `config` is merged into the generated TOML, e.g.
  `server(config={"registration": {"enabled": True}})`. Everything is stopped at teardown.
- `kabar`: the common case, one default server already running.

When a test fails, its report carries the kabar log tail and the transcript of every stanza the test's
clients sent and received; full logs are also copied to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import re
import shutil

import pytest

import harness
from harness import REPO, Server

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(autouse=True)
def _fresh_loop_and_transcript():
    harness.reset_transcript()
    harness.loop()
    yield
    harness.close_loop()


@pytest.fixture
def server(request, tmp_path):
    created: list[Server] = []
    request.node._kabar_servers = created

    def factory(users: dict | None = None, config: dict | None = None, start: bool = True) -> Server:
        srv = Server(tmp_path / f"kabar{len(created)}", config=config, users=users)
        created.append(srv)
        if start:
            srv.start()
        return srv

    yield factory

    crashed = []
    for srv in created:
        code = srv.died()
        if code is not None:
            crashed.append((srv, code))
        srv.close()
    panics = [(srv, line) for srv in created for line in srv.log().splitlines() if "panicked at" in line]
    rep = getattr(request.node, "rep_call", None)
    if crashed or panics or (rep is not None and rep.failed):
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
        for i, srv in enumerate(created):
            if srv.log_path.exists():
                shutil.copy(srv.log_path, ARTIFACTS / f"{name}.kabar{i}.log")
        (ARTIFACTS / f"{name}.transcript.txt").write_text("\n".join(harness.TRANSCRIPT) + "\n")
    if crashed:
        srv, code = crashed[0]
        why = ("it shut down cleanly although the harness did not stop it: a SIGTERM/SIGINT from another "
               "process on this machine?" if code == 0 else "crash?")
        pytest.fail(f"kabar exited by itself with code {code} during the test ({why}):\n{srv.log_tail(80)}")
    if panics:
        pytest.fail("kabar panicked during the test (it kept running, but a panic is a bug):\n"
                    + "\n".join(line for _, line in panics[:5]))


@pytest.fixture
def kabar(server) -> Server:
    """A running kabar with accounts alice, bob and carol (passwords in harness.DEFAULT_USERS)."""
    return server()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
    if rep.failed and rep.when in ("call", "setup"):
        if harness.TRANSCRIPT:
            rep.sections.append(("xmpp transcript (last 150 lines)", "\n".join(harness.TRANSCRIPT[-150:])))
        for i, srv in enumerate(getattr(item, "_kabar_servers", [])):
            rep.sections.append((f"kabar log #{i} ({srv.log_path})", srv.log_tail(120)))
