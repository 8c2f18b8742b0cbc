"""RFC 6120 §6.5.11: a login the server cannot check, because the account store does not answer (a
PostgreSQL outage, its pool exhausted in a login storm), fails with `<temporary-auth-failure/>` — never
`<not-authorized/>`, which tells the client its password is wrong (and counts against the failed-login
limits). kabar reaches PostgreSQL through a TCP relay here, so the test can cut the database off without
touching the shared PostgreSQL other tests use.

Needs PostgreSQL (KABAR_TEST_POSTGRES_URL, scripts/pg; scripts/test starts it).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse

import pytest

from harness import LoginFailed, free_ports
from test_cluster import pg_storage  # noqa: F401


class Relay:
    """A loopback TCP relay to (host, port) that can refuse and drop everything, then come back."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_ports(1)[0]
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            if ls is not self.listener:
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuses new connections and drops the open ones (the database is gone)."""
        if self.listener is not None:
            ls, self.listener = self.listener, None
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            ls.close()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_rfc6120_6_5_11_login_while_the_account_store_is_unreachable_is_temporary_auth_failure(pg_storage, server):
    url = urllib.parse.urlsplit(pg_storage["url"])
    relay = Relay(url.hostname or "127.0.0.1", url.port or 5432)
    netloc = url.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{relay.port}"
    storage = dict(pg_storage, url=urllib.parse.urlunsplit(url._replace(netloc=netloc)))
    srv = server(config={"storage": storage})
    try:
        srv.client("alice").disconnect()

        relay.cut()
        for user in ("bob", "carol", "bob"):
            with pytest.raises(LoginFailed) as failed:
                srv.client(user, name=f"{user}-while-cut")
            assert failed.value.condition == "temporary-auth-failure", failed.value
        assert "credential lookup failed" in srv.log()

        # The store is back: the same account logs in (the pool reconnects by itself, and the failures
        # above were not counted as wrong passwords).
        relay.open()
        deadline = time.monotonic() + 30
        while True:
            try:
                srv.client("bob", name="bob-after").disconnect()
                break
            except LoginFailed as e:
                assert e.condition == "temporary-auth-failure", e
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        relay.cut()
