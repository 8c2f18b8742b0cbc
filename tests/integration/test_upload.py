"""XEP-0363 HTTP File Upload (docs/UPLOAD.md): slots from the server's own domain through slixmpp's
xep_0363 plugin (discovery, slot requests), PUT and GET over the HTTPS listener with plain http.client
and the test CA, and the admin API's /uploads."""

from __future__ import annotations

import hashlib
import hmac
import http.client as httpclient
import json
import os
import socket
import ssl
import time
import urllib.parse

import pytest

from harness import run

NS_UPLOAD = "urn:xmpp:http:upload:0"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ADMIN = "/admin/api/v1"


# ---------------------------------------------------------------------------------------------------------
# helpers


def upload_client(srv, user: str):
    c = srv.client(user)
    c.xmpp.register_plugin("xep_0363")
    return c


def request_slot(client, filename: str, size: int, content_type: str | None):
    """The plugin's slot request; returns (put_url, get_url) or raises IqError."""
    iq = run(client.xmpp.plugin["xep_0363"].request_slot(client.xmpp.boundjid.domain, filename, size, content_type,
                                                    timeout=5), timeout=10)
    slot = iq["http_upload_slot"]
    return slot["put"]["url"], slot["get"]["url"]


def slot_error(client, filename: str, size: int, content_type: str = "application/octet-stream"):
    """A raw slot request expected to fail; returns the <error/> element."""
    resp = client.iq("get", f"<request xmlns='{NS_UPLOAD}' filename='{filename}' size='{size}' "
                            f"content-type='{content_type}'/>", to=client.server.domain)
    assert resp.type == "error", f"expected an error, got {resp}"
    return resp.error_element


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"<{self.status} {self.body[:200]!r}>"


def http(srv, method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         token: str | None = None) -> Resp:
    """One HTTPS request to the server under test, trusting its private CA."""
    u = urllib.parse.urlsplit(url)
    assert u.scheme == "https" and u.port == srv.http_port, url
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    conn = httpclient.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=20)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def put(srv, url: str, data: bytes, content_type: str | None = "application/octet-stream", length: int | None = None):
    headers = {"Content-Length": str(len(data) if length is None else length)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return http(srv, "PUT", url, data, headers)


def upload(srv, client, filename: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    put_url, get_url = request_slot(client, filename, len(data), content_type)
    r = put(srv, put_url, data, content_type)
    assert r.status == 201, r
    return get_url


def with_query(url: str, **changes) -> str:
    u = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(u.query))
    q.update({k: str(v) for k, v in changes.items()})
    return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(q)))


def admin_token(srv) -> str:
    return (srv.data_dir / "admin-token").read_text().strip()


def upload_files(srv) -> list[str]:
    d = srv.data_dir / "uploads"
    return sorted(os.listdir(d)) if d.exists() else []


# ---------------------------------------------------------------------------------------------------------
# discovery


def test_xep0363_2_service_discovery_finds_the_server_with_max_file_size(server):
    """§2: the server's disco#info has the store/file identity, the feature, and the XEP-0128 form
    with max-file-size; slixmpp's find_upload_service picks the server itself."""
    srv = server(config={"upload": {"max_file_size": 12345}})
    alice = upload_client(srv, "alice")
    info = run(alice.xmpp.plugin["xep_0363"].find_upload_service(timeout=5), timeout=10)
    assert info is not None, "slixmpp found no upload service"
    assert str(info["from"]) == srv.domain
    forms = [f["values"] for f in info["disco_info"].iterables]
    upload_forms = [v for v in forms if v.get("FORM_TYPE") == [NS_UPLOAD]]
    assert len(upload_forms) == 1, forms
    assert upload_forms[0]["max-file-size"] == "12345"


def test_xep0363_uploads_disabled_are_not_advertised_or_served(server):
    srv = server(config={"upload": {"enabled": False}})
    alice = upload_client(srv, "alice")
    assert run(alice.xmpp.plugin["xep_0363"].find_upload_service(timeout=5), timeout=10) is None
    err = slot_error(alice, "a.txt", 10)
    assert err.find(f"{{{STANZAS}}}service-unavailable") is not None
    r = http(srv, "GET", f"https://localhost:{srv.http_port}/upload/AAAAAAAAAAAAAAAAAAAAAA/a.txt")
    assert r.status == 404, r


# ---------------------------------------------------------------------------------------------------------
# round trip


def test_xep0363_5_slot_put_get_round_trip_keeps_content_type_and_any_user_can_fetch(server):
    """§5: PUT to the slot's URL stores the file (201); GET returns it with the requested content type;
    the GET URL is the capability, so bob (or anyone) can fetch alice's file. HEAD gives the headers."""
    srv = server()
    alice = upload_client(srv, "alice")
    data = "Grüße aus Kabar\n".encode() * 50
    ct = "text/plain; charset=utf-8"
    put_url, get_url = request_slot(alice, "greetings 1.txt", len(data), ct)
    assert urllib.parse.urlsplit(get_url).path.endswith("/greetings%201.txt"), get_url
    assert put_url != get_url and put_url.startswith(get_url + "?")
    # Nothing is served before the PUT.
    assert http(srv, "GET", get_url).status == 404
    r = put(srv, put_url, data, ct)
    assert r.status == 201, r
    for method in ("GET", "HEAD"):
        r = http(srv, method, get_url)
        assert r.status == 200, r
        assert r.headers["content-type"] == ct
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-disposition"].startswith("inline;"), r.headers
        assert r.body == (data if method == "GET" else b"")
    bob = upload_client(srv, "bob")
    bob.assert_works()
    assert http(srv, "GET", get_url).body == data
    # The same slot cannot be used twice.
    assert put(srv, put_url, b"x" * len(data), ct).status == 409


def test_xep0363_large_file_streams_through_and_html_is_never_served_inline(server):
    """A 5 MiB upload (beyond any in-memory body limit) arrives intact; an HTML upload is served as an
    attachment with a sandboxing CSP and nosniff, so it can never run as a page of the server."""
    srv = server()
    alice = upload_client(srv, "alice")
    big = os.urandom(5 * 1024 * 1024)
    url = upload(srv, alice, "big.bin", big)
    r = http(srv, "GET", url)
    assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(big).digest()
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;"), r.headers
    html = b"<html><script>alert(document.cookie)</script></html>"
    url = upload(srv, alice, "page.html", html, "text/html")
    r = http(srv, "GET", url)
    assert r.status == 200 and r.body == html
    assert r.headers["content-type"] == "text/html"
    assert r.headers["content-disposition"].startswith("attachment;"), r.headers
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------------------------------
# limits


def test_xep0363_4_1_oversized_file_refused_with_file_too_large(server):
    """§4.1: a request over the maximum gets <not-acceptable/> with <file-too-large><max-file-size/>."""
    srv = server(config={"upload": {"max_file_size": 1000}})
    alice = upload_client(srv, "alice")
    err = slot_error(alice, "big.bin", 1001)
    assert err.get("type") == "modify"
    assert err.find(f"{{{STANZAS}}}not-acceptable") is not None
    max_el = err.find(f"{{{NS_UPLOAD}}}file-too-large/{{{NS_UPLOAD}}}max-file-size")
    assert max_el is not None and max_el.text == "1000", err
    # Exactly the maximum is fine.
    put_url, _ = request_slot(alice, "ok.bin", 1000, None)
    assert put(srv, put_url, b"a" * 1000).status == 201


def test_xep0363_4_2_quota_exceeded_refused_at_slot_and_at_put(server):
    """Per-account quota (sum of stored bytes): a slot that would exceed it is refused with
    <resource-constraint/> (and a retry stamp when files expire); two slots granted before either
    upload cannot both be filled past the quota; other accounts are not affected."""
    srv = server(config={"upload": {"quota_bytes": 1500, "max_file_size": 10000}})
    alice = upload_client(srv, "alice")
    first_put, _ = request_slot(alice, "one.bin", 1000, None)
    second_put, _ = request_slot(alice, "two.bin", 1000, None)
    assert put(srv, first_put, b"1" * 1000).status == 201
    r = put(srv, second_put, b"2" * 1000)
    assert r.status == 413, r
    err = slot_error(alice, "three.bin", 600)
    assert err.get("type") == "wait"
    assert err.find(f"{{{STANZAS}}}resource-constraint") is not None
    assert err.find(f"{{{NS_UPLOAD}}}retry") is not None, "files expire by default: a retry stamp is expected"
    put_url, _ = request_slot(alice, "fits.bin", 500, None)
    assert put(srv, put_url, b"3" * 500).status == 201
    bob = upload_client(srv, "bob")
    request_slot(bob, "bob.bin", 1500, None)
    assert len(upload_files(srv)) == 2


def test_xep0363_put_refused_for_wrong_size_type_forged_or_expired_slots(server):
    """The PUT URL is bound to size, content type, owner and time: anything else gets 4xx and stores
    nothing."""
    srv = server(config={"upload": {"slot_lifetime_secs": 4}})
    alice = upload_client(srv, "alice")
    data = b"0123456789" * 10
    put_url, get_url = request_slot(alice, "bound.bin", len(data), "image/png")
    assert put(srv, put_url, data + b"!", "image/png").status == 413          # larger than the slot
    assert put(srv, put_url, data[:-1], "image/png").status == 400            # smaller than the slot
    assert put(srv, put_url, data, "text/html").status == 403                 # another content type
    assert put(srv, put_url, data, None).status == 403                        # no content type
    assert put(srv, with_query(put_url, owner="bob@localhost"), data, "image/png").status == 403
    assert put(srv, with_query(put_url, expires=int(time.time()) + 3600), data, "image/png").status == 403
    sig = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(put_url).query))["sig"]
    forged = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert put(srv, with_query(put_url, sig=forged), data, "image/png").status == 403
    assert put(srv, get_url, data, "image/png").status == 403                 # no slot parameters at all
    # A made-up slot with a signature from another secret.
    fake = hmac.new(b"guess", b"whatever", hashlib.sha256).hexdigest()
    assert put(srv, with_query(put_url, sig=fake), data, "image/png").status == 403
    assert upload_files(srv) == []
    time.sleep(5.1)
    assert put(srv, put_url, data, "image/png").status == 403                 # expired
    assert http(srv, "GET", get_url).status == 404
    assert upload_files(srv) == []


def test_xep0363_stalled_upload_is_dropped_and_leaves_nothing(server):
    """A PUT whose body stops arriving is answered 408 after [upload] slot_lifetime_secs of silence and
    its partial file is removed, so a stalled client cannot hold storage."""
    srv = server(config={"upload": {"slot_lifetime_secs": 4}})
    alice = upload_client(srv, "alice")
    put_url, get_url = request_slot(alice, "stall.bin", 1000, None)
    u = urllib.parse.urlsplit(put_url)
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall((f"PUT {u.path}?{u.query} HTTP/1.1\r\nHost: localhost\r\n"
                         "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n").encode()
                        + b"x" * 100)
            # The partial file appears once the server reads the body; poll for it rather than
            # guess how long that takes (the HTTPS listener runs at a lower priority, so a busy
            # machine delays it), well within the seconds of silence the server allows.
            deadline = time.monotonic() + 10
            while not [n for n in upload_files(srv) if n.endswith(".part")]:
                assert time.monotonic() < deadline, "the upload did not start"
                time.sleep(0.02)
            tls.settimeout(30)
            answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert upload_files(srv) == []
    assert http(srv, "GET", get_url).status == 404


def test_xep0363_slot_requests_need_filename_and_valid_size(server):
    srv = server()
    alice = upload_client(srv, "alice")
    for payload in (f"<request xmlns='{NS_UPLOAD}' size='10'/>",
                    f"<request xmlns='{NS_UPLOAD}' filename='a' size='-1'/>",
                    f"<request xmlns='{NS_UPLOAD}' filename='a' size='ten'/>",
                    f"<request xmlns='{NS_UPLOAD}' filename='a' size='10' content-type='not a type'/>"):
        resp = alice.iq("get", payload, to=srv.domain)
        assert resp.type == "error" and resp.error_condition == "bad-request", resp


# ---------------------------------------------------------------------------------------------------------
# expiry and administration


def test_xep0363_expired_files_are_deleted_by_the_sweep(server):
    """[upload] expire_after_secs: a file is served until it expires, then the periodic sweep deletes it
    from disk and from the metadata."""
    srv = server(config={"upload": {"expire_after_secs": 2, "sweep_interval_secs": 1}})
    alice = upload_client(srv, "alice")
    url = upload(srv, alice, "short-lived.txt", b"soon gone", "text/plain")
    assert http(srv, "GET", url).status == 200
    assert len(upload_files(srv)) == 1
    deadline = time.time() + 10
    while upload_files(srv) and time.time() < deadline:
        time.sleep(0.2)
    assert upload_files(srv) == [], "the sweep did not delete the expired file"
    assert http(srv, "GET", url).status == 404
    r = http(srv, "GET", f"https://localhost:{srv.http_port}{ADMIN}/uploads", token=admin_token(srv))
    assert json.loads(r.body)["uploads"] == []


def test_admin_api_lists_pages_and_deletes_uploads_only_with_the_token(server):
    """GET /uploads (paged by id with limit/after) and DELETE /uploads/{id} need the admin token."""
    srv = server()
    token = admin_token(srv)
    base = f"https://localhost:{srv.http_port}{ADMIN}"
    alice = upload_client(srv, "alice")
    bob = upload_client(srv, "bob")
    urls = {upload(srv, alice, "a.txt", b"aaa", "text/plain"), upload(srv, bob, "b.txt", b"bbbb", "text/plain"),
            upload(srv, alice, "c.txt", b"c", "text/plain")}
    for bad in (None, "wrong-token-0123456789"):
        r = http(srv, "GET", f"{base}/uploads", token=bad)
        assert r.status == 401, r
        some_id = urllib.parse.urlsplit(next(iter(urls))).path.split("/")[2]
        r = http(srv, "DELETE", f"{base}/uploads/{some_id}", token=bad)
        assert r.status == 401, r
    r = http(srv, "GET", f"{base}/uploads", token=token)
    assert r.status == 200, r
    listed = json.loads(r.body)
    assert listed["next"] is None
    assert {u["url"] for u in listed["uploads"]} == urls
    by_name = {u["filename"]: u for u in listed["uploads"]}
    assert by_name["b.txt"]["owner"] == "bob@localhost" and by_name["b.txt"]["size"] == 4
    assert by_name["a.txt"]["content_type"] == "text/plain"
    # Paging: one at a time, in id order, ending with next = null.
    seen, after = [], None
    while True:
        q = "?limit=1" + (f"&after={after}" if after else "")
        page = json.loads(http(srv, "GET", f"{base}/uploads{q}", token=token).body)
        seen += [u["id"] for u in page["uploads"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(u["id"] for u in listed["uploads"])
    assert http(srv, "GET", f"{base}/uploads?limit=0", token=token).status == 400
    victim = by_name["a.txt"]
    assert http(srv, "DELETE", f"{base}/uploads/{victim['id']}", token=token).status == 204
    assert http(srv, "GET", victim["url"]).status == 404
    assert http(srv, "DELETE", f"{base}/uploads/{victim['id']}", token=token).status == 404
    assert http(srv, "DELETE", f"{base}/uploads/not-an-id", token=token).status == 404
    assert http(srv, "GET", by_name["b.txt"]["url"]).status == 200
    assert len(upload_files(srv)) == 2


def test_deleting_an_account_deletes_its_uploads(server):
    srv = server()
    alice = upload_client(srv, "alice")
    bob = upload_client(srv, "bob")
    alice_url = upload(srv, alice, "mine.txt", b"alice's", "text/plain")
    bob_url = upload(srv, bob, "bobs.txt", b"bob's", "text/plain")
    r = http(srv, "DELETE", f"https://localhost:{srv.http_port}{ADMIN}/users/alice%40localhost",
             token=admin_token(srv))
    assert r.status == 204, r
    assert http(srv, "GET", alice_url).status == 404
    assert http(srv, "GET", bob_url).status == 200
    assert len(upload_files(srv)) == 1


def test_uploads_survive_a_restart(server):
    srv = server()
    alice = upload_client(srv, "alice")
    url = upload(srv, alice, "kept.txt", b"still here", "text/plain")
    srv.restart()
    r = http(srv, "GET", url)
    assert r.status == 200 and r.body == b"still here"


def test_xep0363_slots_only_for_local_accounts(server):
    """Quotas are per local account: an external component (or anyone not user@our-domain) gets
    <not-allowed/> instead of a slot."""
    srv = server()
    bot = srv.component()
    resp = bot.iq("get", f"<request xmlns='{NS_UPLOAD}' filename='a.txt' size='3' content-type='text/plain'/>",
                  to=srv.domain, frm="bot.localhost")
    assert resp.type == "error" and resp.error_condition == "not-allowed", resp
