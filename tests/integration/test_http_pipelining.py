"""HTTP/1.1 pipelining on the HTTPS listener (RFC 9112 §9.3.2: a server answers pipelined requests in
the order received). The report benchmark (`kabar-report-load`, docs/BENCHMARKS.md) keeps 16 requests
in flight per connection, and the report handler reads the whole request itself
(`crates/kabar/src/http/status.rs`); these tests check that pipelined answers are complete, in order
and not held back, and that a client which pipelines without reading cannot make the server buffer
answers without bound."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path


def tls_socket(srv, source: str = "127.0.0.1") -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    raw = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def read_responses(sock: ssl.SSLSocket, count: int) -> list[tuple[int, bytes]]:
    """`count` responses (status, body) read in order from a kept-alive connection."""
    buf = b""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1")
            status = int(head.split()[1])
            length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                          if line.lower().startswith("content-length:"))
            if len(buf) >= end + 4 + length:
                out.append((status, buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} of {count} responses"
        buf += chunk
    return out


def test_rfc9112_9_3_2_pipelined_requests_are_answered_in_order(server):
    """Reports, errors and other routes sent back to back in one write come back complete and in
    request order, and the last answer is not held back waiting for more requests."""
    srv = server(config={"monitor": {"service": [{"name": "chat"}]}})
    sock = tls_socket(srv)
    batch = b""
    expected = []
    for i in range(48):
        kind = i % 4
        if kind == 0:
            batch += post("/status/reports", {"service": "chat", "problem": "cant_send", "device": f"pipe-{i}"})
            expected.append((202, "chat"))
        elif kind == 1:
            batch += get("/healthz")
            expected.append((200, None))
        elif kind == 2:
            batch += post("/status/reports", {"service": f"nope-{i}", "problem": "cant_send"})
            expected.append((400, "unknown_service"))
        else:
            batch += post("/status/reports", {"service": "chat", "problem": "other", "device": f"pipe-{i}",
                                              "comment": f"request {i}"})
            expected.append((202, "chat"))
    sock.sendall(batch)
    answers = read_responses(sock, len(expected))
    for i, ((status, body), (want_status, marker)) in enumerate(zip(answers, expected)):
        assert status == want_status, (i, status, body)
        if want_status == 202:
            assert json.loads(body)["service"] == marker, (i, body)
        elif want_status == 400:
            assert json.loads(body)["error"] == marker, (i, body)
        else:
            assert body == b"ok\n", (i, body)
    # A single request after the burst is answered on its own (nothing waits for a next request).
    sock.sendall(get("/healthz"))
    assert read_responses(sock, 1) == [(200, b"ok\n")]
    sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_rfc9112_9_3_2_pipelining_without_reading_does_not_grow_server_memory(server):
    """A client that keeps pipelining requests but never reads the answers is stopped by TCP
    back-pressure: the server stops reading once its answers cannot be written, so its memory
    stays flat instead of holding every unread answer."""
    srv = server(config={"monitor": {"service": [{"name": "chat"}]}})
    pid = srv.proc.pid
    before = rss_kib(pid)
    sock = tls_socket(srv)
    sock.settimeout(2)
    chunk = get("/healthz") * 2000  # ~80 KB of requests, ~2,000 answers of ~100 bytes
    sent = 0
    # 200,000 unread answers would be ~20 MB if the server kept them; the socket buffers hold a few
    # MB at most, so sendall blocks (timeout) once the server stops reading.
    deadline = time.monotonic() + 60
    while sent < 100 and time.monotonic() < deadline:
        try:
            sock.sendall(chunk)
        except (socket.timeout, TimeoutError):
            break
        sent += 1
    assert sent < 100, "the server kept reading requests whose answers it could not send"
    grown = rss_kib(pid) - before
    assert grown < 16 * 1024, f"server RSS grew by {grown} KiB for one non-reading client"
    sock.close()
    # The listener still serves others.
    other = tls_socket(srv)
    other.sendall(get("/healthz"))
    assert read_responses(other, 1) == [(200, b"ok\n")]
    other.close()
