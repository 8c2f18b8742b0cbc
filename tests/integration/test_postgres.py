"""The real binary on the PostgreSQL backend (`[storage] backend = "postgres"`, docs/STORAGE.md).

Needs a database: KABAR_TEST_POSTGRES_URL (scripts/test starts a private cluster with scripts/pg and
sets it). Without it these tests skip, unless KABAR_REQUIRE_POSTGRES=1 (scripts/test sets that too):
then they fail. Each test uses a schema of its own in that database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from harness import REPO, mam_all

FULLTEXT = "{urn:xmpp:fulltext:0}fulltext"


@pytest.fixture
def pg_storage():
    """The `[storage]` table for a fresh schema; the schema is dropped afterwards."""
    url = os.environ.get("KABAR_TEST_POSTGRES_URL", "").strip()
    if not url:
        if os.environ.get("KABAR_REQUIRE_POSTGRES") == "1":
            pytest.fail("KABAR_REQUIRE_POSTGRES=1 but KABAR_TEST_POSTGRES_URL is not set: "
                        "run `eval \"$(scripts/pg start)\"` first (scripts/test does)")
        pytest.skip("KABAR_TEST_POSTGRES_URL is not set (see scripts/pg)")
    schema = "it_" + uuid.uuid4().hex[:16]
    # Requested before `server` by the tests, so the schema outlives the servers using it.
    yield {"backend": "postgres", "url": url, "schema": schema, "pool_size": 4}
    psql = shutil.which("psql")
    if psql:
        subprocess.run([psql, "-X", "-q", url, "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def test_postgres_backend_chat_offline_across_restart_and_mam_from_another_node(pg_storage, server):
    """RFC 6121 §8.5.2.1 / XEP-0160 §3 / XEP-0313 §4 on PostgreSQL: alice and bob chat; a message to
    bob while he is offline is stored, survives a restart of the server, and is delivered when he comes
    back; his archive (queried with XEP-0431 full-text search, served by the tsvector index) holds it.
    Then a second server with an empty data folder on the same database sees the same accounts and
    archive: the state lives in PostgreSQL, not in the data folder."""
    srv = server(config={"storage": pg_storage})
    assert not (srv.data_dir / "kabar.db").exists(), "the postgres backend must not create the SQLite file"

    alice = srv.client("alice/desk")
    bob = srv.client("bob/phone")
    alice.message(bob.jid, "selamat pagi bob")
    bob.expect_message(frm=alice.jid, body="selamat pagi bob")
    bob.message(alice.jid, "pagi juga alice")
    alice.expect_message(frm=bob.jid, body="pagi juga alice")

    bob.disconnect()
    word = "kabarpg" + uuid.uuid4().hex[:8]
    alice.message("bob@localhost", f"titipan {word} untukmu")
    alice.sync()

    srv.restart()
    bob = srv.client("bob/phone", name="bob-again")
    msg = bob.expect_message(frm="alice@localhost", body=f"titipan {word} untukmu")
    assert msg.find("delay:delay") is not None, f"offline delivery carries <delay/> (XEP-0203): {msg}"

    found = mam_all(bob, {FULLTEXT: word.upper()})
    assert [i.body for i in found] == [f"titipan {word} untukmu"], found
    history = [i.body for i in mam_all(bob, {"with": "alice@localhost"})]
    assert history == ["selamat pagi bob", "pagi juga alice", f"titipan {word} untukmu"], history
    srv.stop()

    other = server(config={"storage": pg_storage}, users={})
    other.passwords = dict(srv.passwords)
    bob2 = other.client("bob/tablet", name="bob-on-node-2")
    assert [i.body for i in mam_all(bob2, {FULLTEXT: word})] == [f"titipan {word} untukmu"]
    assert not (other.data_dir / "kabar.db").exists()


def test_postgres_restart_is_survived_without_restarting_kabar(pg_storage, server):
    """A PostgreSQL restart (every pooled connection cut) costs kabar nothing it acknowledged: the pool
    replaces the dead connections by itself, and messages for an offline user sent before and after the
    restart are all stored and delivered (XEP-0160 §3), in order. Needs the private scripts/pg cluster
    (KABAR_PG_DIR): a database named only by URL is never restarted by a test."""
    if not os.environ.get("KABAR_PG_DIR"):
        pytest.skip("KABAR_PG_DIR is not set: the database is not a private scripts/pg cluster")
    srv = server(config={"storage": pg_storage})
    alice = srv.client("alice")
    alice.message("bob@localhost", "sebelum restart")
    alice.sync()
    subprocess.run([str(REPO / "scripts" / "pg"), "restart"], check=True, timeout=90,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    alice.message("bob@localhost", "sesudah restart 1")
    alice.message("bob@localhost", "sesudah restart 2")
    alice.sync()
    alice.expect_no_message(frm="bob@localhost")
    bob = srv.client("bob")
    got = [bob.expect_message(frm="alice@localhost").body for _ in range(3)]
    assert got == ["sebelum restart", "sesudah restart 1", "sesudah restart 2"], got
    assert srv.running, "kabar itself was never restarted"


def test_postgres_backend_without_url_refuses_to_start_with_a_clear_error(server, tmp_path):
    """Choosing the postgres backend without a URL is a configuration error named at start, not a
    silent fall-back to SQLite."""
    srv = server(config={"storage": {"backend": "postgres"}}, users={}, start=False)
    res = srv.kabar("user", "list", "--config", str(srv.config_path), "--data", str(srv.data_dir), check=False)
    assert res.returncode != 0
    assert "needs url" in res.stderr and "postgres" in res.stderr, res.stderr
    assert not (srv.data_dir / "kabar.db").exists()
