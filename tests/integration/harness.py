"""Everything kabar's integration tests need, in one place.

- `Server`: one kabar process under test, with its own config, data folder, free loopback ports, accounts
  and log. Made by the `server` fixture in conftest.py.
- `Client`: a logged-in slixmpp ClientXMPP driven synchronously. Tests send XML exactly as it goes on the
  wire (`alice.send("<message .../>")`, `alice.message(...)`) and wait for what arrives
  (`bob.expect_message(...)`), so a test reads as a conversation and a failure shows the stanzas exchanged.
- `Component`: a slixmpp ComponentXMPP (XEP-0114) with the same expect API.
- `RawStream`: a hand-driven stream over a plain socket (+ pyOpenSSL for TLS), for what a library would
  refuse to send or hide: bad XML, SCRAM-PLUS with tls-exporter / tls-server-end-point, pre-auth stanzas.

All clients of one test share one asyncio loop (`loop()`); it runs only while a helper waits, which is
enough: sockets buffer whatever arrives meanwhile. Every wait has a timeout so a broken server fails a test
fast instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import slixmpp
from OpenSSL import SSL
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from slixmpp.util.sasl.mechanisms import SCRAM
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

REPO = Path(__file__).resolve().parents[2]
KABAR_BIN = Path(os.environ.get("KABAR_BIN", REPO / "target" / "release" / "kabar"))

DOMAIN = "localhost"
COMPONENT_DOMAIN = "bot.localhost"
COMPONENT_SECRET = "s3cret"
DEFAULT_USERS = {"alice": "alice-pass-1", "bob": "bob-pass-2", "carol": "carol-pass-3"}

# Upper bounds for what must happen, not expected durations: every wait returns as soon as the
# awaited thing arrives, so they only decide how long a broken server takes to fail a test. They
# are generous because CI runs on a shared 2-core machine, where a compile next door can stall the
# server for seconds.
STARTUP_TIMEOUT = 30.0  # kabar serve → every port accepts
LOGIN_TIMEOUT = 30.0  # TCP connect → session started
WAIT = 15.0  # an expected stanza must arrive within this
QUIET = 1.0  # how long to listen when proving that something does NOT arrive

NS = {
    "client": "jabber:client",
    "component": "jabber:component:accept",
    "stream": "http://etherx.jabber.org/streams",
    "streams": "urn:ietf:params:xml:ns:xmpp-streams",
    "stanzas": "urn:ietf:params:xml:ns:xmpp-stanzas",
    "tls": "urn:ietf:params:xml:ns:xmpp-tls",
    "sasl": "urn:ietf:params:xml:ns:xmpp-sasl",
    "bind": "urn:ietf:params:xml:ns:xmpp-bind",
    "session": "urn:ietf:params:xml:ns:xmpp-session",
    "roster": "jabber:iq:roster",
    "rosterver": "urn:xmpp:features:rosterver",
    "delay": "urn:xmpp:delay",
    "disco_info": "http://jabber.org/protocol/disco#info",
    "disco_items": "http://jabber.org/protocol/disco#items",
    "caps": "http://jabber.org/protocol/caps",
    "ping": "urn:xmpp:ping",
    "version": "jabber:iq:version",
    "last": "jabber:iq:last",
    "vcard": "vcard-temp",
    "blocking": "urn:xmpp:blocking",
    "blocking_errors": "urn:xmpp:blocking:errors",
    "register": "jabber:iq:register",
    "register_feature": "http://jabber.org/features/iq-register",
    "sasl_cb": "urn:xmpp:sasl-cb:0",
    "data": "jabber:x:data",
}

log = logging.getLogger("kabar.harness")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def xml_str(el: ET.Element, parent_ns: str | None = None) -> str:
    """Serialise an element the way it looked on the wire: default namespaces, no ns0: prefixes."""
    ns, name = _ns(el.tag), _local(el.tag)
    attrs = []
    if ns != parent_ns:
        attrs.append(f"xmlns={quoteattr(ns)}")
    for key, value in el.attrib.items():
        if key.startswith("{http://www.w3.org/XML/1998/namespace}"):
            key = "xml:" + _local(key)
        elif key.startswith("{"):
            key = _local(key)
        attrs.append(f"{key}={quoteattr(value)}")
    head = "<" + " ".join([name, *attrs])
    inner = escape(el.text or "") + "".join(xml_str(c, ns) + escape(c.tail or "") for c in el)
    return f"{head}/>" if not inner else f"{head}>{inner}</{name}>"


# ---------------------------------------------------------------------------------------------------------
# Transcript: every stanza sent and received in the current test, shown when the test fails.

TRANSCRIPT: list[str] = []
_T0 = [time.monotonic()]


def transcript(who: str, direction: str, text: str | bytes) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) > 1500:
        text = text[:1500] + f"... [{len(text)} chars]"
    TRANSCRIPT.append(f"{time.monotonic() - _T0[0]:7.3f} {who:>16} {direction} {text}")


def reset_transcript() -> None:
    TRANSCRIPT.clear()
    _T0[0] = time.monotonic()


# ---------------------------------------------------------------------------------------------------------
# One asyncio loop per test, shared by every slixmpp object of that test.

_LOOP: list[asyncio.AbstractEventLoop | None] = [None]


def loop() -> asyncio.AbstractEventLoop:
    if _LOOP[0] is None or _LOOP[0].is_closed():
        _LOOP[0] = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP[0])
    return _LOOP[0]


def run(awaitable, timeout: float | None = None):
    """Run the shared loop until `awaitable` completes (or `timeout` seconds pass: TimeoutError)."""
    if timeout is not None:
        awaitable = asyncio.wait_for(awaitable, timeout)
    return loop().run_until_complete(awaitable)


def pause(seconds: float) -> None:
    """Let the loop run (deliver, answer pings, flush writes) for a while."""
    run(asyncio.sleep(seconds))


def close_loop() -> None:
    lp = _LOOP[0]
    if lp is None or lp.is_closed():
        return
    try:
        pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            lp.run_until_complete(asyncio.wait(pending, timeout=2))
    finally:
        lp.close()
        _LOOP[0] = None


# slixmpp's SCRAM derives the salted password with a pure-Python loop; use hashlib's C PBKDF2 (same result).
def _fast_hi(self, text, salt, iterations):
    name = self.hash_name.replace("-", "").lower()
    return hashlib.pbkdf2_hmac(name, bytes(text), bytes(salt), iterations)


SCRAM.Hi = _fast_hi


# ---------------------------------------------------------------------------------------------------------
# The server under test.


class ServerError(Exception):
    pass


def free_ports(n: int) -> list[int]:
    """n distinct free loopback TCP ports, each held in TIME_WAIT so nobody else gets it meanwhile.

    A port merely bound and closed goes straight back to the pool: until the server binds it, any
    other bind(0) on the machine (another test process, a parallel build's tests) may be handed the
    same port, and the server then fails with "address in use". Here each port is connected to once
    and its side of that connection is closed first, which leaves 127.0.0.1:port in TIME_WAIT for a
    minute: bind(0) and outgoing connections skip it, while a server binding it with SO_REUSEADDR
    (kabar via tokio, nats-server, the tests' own listeners) gets it at once."""
    listeners = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            listeners.append(s)
        ports = [s.getsockname()[1] for s in listeners]
        for s, port in zip(listeners, ports):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                accepted, _ = s.accept()
                accepted.close()  # the port's side closes first: it is the one left in TIME_WAIT
        return ports
    finally:
        for s in listeners:
            s.close()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: dict) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for section, body in cfg.items():
        if isinstance(body, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def deep_merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """One `kabar serve` process with its own config, data folder and ports."""

    def __init__(self, workdir: Path, config: dict | None = None, users: dict | None = None):
        if not KABAR_BIN.exists():
            raise ServerError(
                f"kabar binary not found at {KABAR_BIN}; run `cargo build --release -p kabar` "
                "(or set KABAR_BIN)"
            )
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "kabar.toml"
        self.log_path = self.workdir / "kabar.log"
        self.domain = DOMAIN
        self.c2s_port, self.tls_port, self.component_port, self.http_port = free_ports(4)
        self.config = deep_merge(
            {
                "domain": DOMAIN,
                "c2s": {
                    "listen": [f"127.0.0.1:{self.c2s_port}"],
                    "direct_tls_listen": [f"127.0.0.1:{self.tls_port}"],
                },
                "http": {"listen": [f"127.0.0.1:{self.http_port}"]},
                "components": {
                    "listen": [f"127.0.0.1:{self.component_port}"],
                    "component": [{"domain": COMPONENT_DOMAIN, "secret": COMPONENT_SECRET}],
                },
            },
            config,
        )
        # KABAR_TEST_BACKEND=postgres: every server that does not choose its own [storage] runs on
        # PostgreSQL (a fresh schema in KABAR_TEST_POSTGRES_URL), so the whole suite checks that backend.
        if os.environ.get("KABAR_TEST_BACKEND") == "postgres" and "storage" not in self.config:
            self.config["storage"] = {"backend": "postgres", "url": os.environ["KABAR_TEST_POSTGRES_URL"],
                                      "schema": "it_" + uuid.uuid4().hex[:16]}
        self.config_path.write_text(to_toml(self.config))
        self.passwords: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.clients: list = []
        self.exit_codes: list[int] = []
        for user, password in (DEFAULT_USERS if users is None else users).items():
            self.add_user(user, password)

    # -- addresses
    @property
    def ca(self) -> Path:
        """The private CA kabar generated on first start: trust this."""
        return self.data_dir / "tls" / "ca.pem"

    def jid(self, user: str) -> str:
        return user if "@" in user else f"{user}@{self.domain}"

    # -- the kabar command line
    def _log(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def kabar(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(KABAR_BIN), *args]
        self._log(f"=== $ {' '.join(cmd)}")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self._log(res.stdout + res.stderr + f"=== exit {res.returncode}")
        if check and res.returncode != 0:
            raise ServerError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def add_user(self, user: str, password: str) -> None:
        """`kabar user add` (the contract promises it works while the server is stopped)."""
        # --config too: the accounts go to the store the server will use (e.g. [storage] postgres).
        self.kabar("user", "add", self.jid(user), "--password", password, "--config", str(self.config_path),
                   "--data", str(self.data_dir))
        self.passwords[self.jid(user)] = password

    # -- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Server":
        if self.running:
            return self
        self._log(f"=== kabar serve --config {self.config_path} --data {self.data_dir}")
        env = dict(os.environ, RUST_BACKTRACE="1")
        if os.environ.get("KABAR_TEST_LOG"):
            env["RUST_LOG"] = os.environ["KABAR_TEST_LOG"]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(KABAR_BIN), "serve", "--config", str(self.config_path), "--data", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ports = [self.c2s_port, self.tls_port, self.component_port, self.http_port]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.exit_codes.append(code)
                self.proc = None
                raise ServerError(f"kabar serve exited with {code} during startup:\n{self.log_tail(60)}")
            if all(_port_open(p) for p in ports) and self.ca.exists():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"kabar did not accept on ports {ports} within {STARTUP_TIMEOUT}s "
                    f"(or wrote no {self.ca}):\n{self.log_tail(60)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._log(f"=== kabar did not exit {timeout}s after SIGTERM: SIGKILL")
                proc.kill()
                proc.wait(5)
        self.exit_codes.append(proc.returncode)
        self._log(f"=== kabar serve exited with {proc.returncode}")
        return proc.returncode

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    def died(self) -> int | None:
        """The exit code if the server stopped by itself (crash, panic), else None."""
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def close(self) -> None:
        for c in list(self.clients):
            c.kill()
        self.clients.clear()
        if _LOOP[0] is not None and not _LOOP[0].is_closed():
            pause(0.05)
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- clients
    def client(self, user: str, password: str | None = None, **opts) -> "Client":
        """Log in with slixmpp; raises LoginFailed. `user` may be "alice", "alice@localhost" or
        "alice@localhost/phone". Options: see Client."""
        bare = self.jid(user.split("/", 1)[0])
        if password is None:
            password = self.passwords.get(bare, "no-such-password")
        full = bare + ("/" + user.split("/", 1)[1] if "/" in user else "")
        c = Client(self, full, password, **opts)
        self.clients.append(c)
        return c

    def component(self, domain: str = COMPONENT_DOMAIN, secret: str = COMPONENT_SECRET, **opts) -> "Component":
        c = Component(self, domain, secret, **opts)
        self.clients.append(c)
        return c

    def raw(self, direct_tls: bool = False, port: int | None = None, name: str = "raw") -> "RawStream":
        s = RawStream(self, direct_tls=direct_tls, port=port, name=name)
        self.clients.append(s)
        return s


# ---------------------------------------------------------------------------------------------------------
# What arrives: a thin read-only view over an element.


class Stanza:
    def __init__(self, xml: ET.Element):
        self.xml = xml

    name = property(lambda self: _local(self.xml.tag))
    ns = property(lambda self: _ns(self.xml.tag))
    type = property(lambda self: self.xml.get("type"))
    frm = property(lambda self: self.xml.get("from"))
    to = property(lambda self: self.xml.get("to"))
    id = property(lambda self: self.xml.get("id"))

    def get(self, attr: str, default=None):
        return self.xml.get(attr, default)

    def find(self, path: str) -> ET.Element | None:
        """ElementTree path with the prefixes of NS, e.g. "roster:query/roster:item"."""
        return self.xml.find(path, NS)

    def findall(self, path: str) -> list[ET.Element]:
        return self.xml.findall(path, NS)

    def child(self, ns_key: str) -> ET.Element | None:
        """First child element in namespace NS[ns_key]."""
        for c in self.xml:
            if _ns(c.tag) == NS[ns_key]:
                return c
        return None

    @property
    def body(self) -> str | None:
        for c in self.xml:
            if _local(c.tag) == "body":
                return c.text or ""
        return None

    @property
    def error_condition(self) -> str | None:
        """Stanza error's defined condition (RFC 6120 §8.3.3), or a stream error's (§4.9.3)."""
        if self.name == "error" and self.ns == NS["stream"]:
            for c in self.xml:
                if _ns(c.tag) == NS["streams"]:
                    return _local(c.tag)
            return None
        for c in self.xml:
            if _local(c.tag) == "error":
                for cc in c:
                    if _ns(cc.tag) == NS["stanzas"]:
                        return _local(cc.tag)
        return None

    @property
    def error_element(self) -> ET.Element | None:
        for c in self.xml:
            if _local(c.tag) == "error":
                return c
        return None

    def __str__(self) -> str:
        return xml_str(self.xml)

    __repr__ = __str__


def attrs_xml(**attrs) -> str:
    """to=…, type=…, from_=… → XML attributes (None values dropped)."""
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        out.append(f" {key.rstrip('_')}={quoteattr(str(value))}")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# slixmpp entities, driven synchronously.


class LoginFailed(Exception):
    def __init__(self, kind: str, condition: str | None = None, detail=None):
        self.kind, self.condition, self.detail = kind, condition, detail
        super().__init__(f"{kind}: condition={condition} detail={detail}")


class _Entity:
    """What Client and Component share: an inbox of everything received, raw sends, expectations."""

    xmpp: slixmpp.BaseXMPP
    name: str

    def _setup_capture(self) -> None:
        self.inbox: list[Stanza] = []
        self.received: list[Stanza] = []  # everything, never consumed (for debugging and negative checks)
        self.stream_errors: list[Stanza] = []
        self.sasl_failure: str | None = None
        self.disconnected = False
        self._arrived: asyncio.Event | None = None

        def on_in(stanza):
            st = Stanza(copy.deepcopy(stanza.xml))
            transcript(self.name, "<-", str(st))
            if st.ns == NS["stream"] and st.name == "error":
                self.stream_errors.append(st)
            if st.ns == NS["sasl"] and st.name == "failure":
                self.sasl_failure = next((_local(c.tag) for c in st.xml), None)
            self.inbox.append(st)
            self.received.append(st)
            if self._arrived is not None:
                self._arrived.set()
            return stanza

        def on_out(stanza):
            transcript(self.name, "->", str(stanza))
            return stanza

        def on_disconnected(_reason):
            self.disconnected = True
            transcript(self.name, "--", f"disconnected ({_reason})")
            if self._arrived is not None:
                self._arrived.set()

        self.xmpp.add_filter("in", on_in)
        self.xmpp.add_filter("out", on_out)
        self.xmpp.add_event_handler("disconnected", on_disconnected)

    # -- sending: XML as it goes on the wire
    def send(self, xml: str) -> None:
        transcript(self.name, "->", xml)
        self.xmpp.send_raw(xml)

    def message(self, to: str, body: str, type: str = "chat", id: str | None = None, extra: str = "",
                frm: str | None = None) -> str:
        """Send <message/>; returns its id."""
        id = id or new_id("m")
        self.send(f"<message{attrs_xml(to=to, from_=frm, type=type, id=id)}>"
                  f"<body>{escape(body)}</body>{extra}</message>")
        return id

    def iq(self, type: str, payload: str, to: str | None = None, timeout: float = WAIT,
           frm: str | None = None) -> Stanza:
        """Send an <iq/> and wait for its result or error (RFC 6120 §8.2.3: every get/set is answered)."""
        id = new_id("iq")
        self.send(f"<iq{attrs_xml(type=type, to=to, from_=frm, id=id)}>{payload}</iq>")
        return self.expect(lambda s: s.name == "iq" and s.id == id and s.type in ("result", "error"),
                           f"the answer to iq {id}", timeout)

    def iq_ok(self, type: str, payload: str, to: str | None = None, timeout: float = WAIT, **kw) -> Stanza:
        resp = self.iq(type, payload, to=to, timeout=timeout, **kw)
        assert resp.type == "result", f"{self.name}: expected an iq result, got {resp}"
        return resp

    # -- waiting
    async def _wait(self, pred, timeout: float):
        if self._arrived is None:
            self._arrived = asyncio.Event()
        lp = loop()
        deadline = lp.time() + timeout
        while True:
            for i, st in enumerate(self.inbox):
                if pred(st):
                    del self.inbox[i]
                    return st
            remaining = deadline - lp.time()
            if remaining <= 0:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def expect(self, pred, what: str = "a stanza", timeout: float = WAIT) -> Stanza:
        """Wait for (and consume) the first received stanza matching pred."""
        st = run(self._wait(pred, timeout))
        if st is None:
            recent = "\n    ".join(str(s) for s in self.received[-8:]) or "(nothing)"
            raise AssertionError(
                f"{self.name} did not receive {what} within {timeout}s; last received:\n    {recent}")
        return st

    def expect_none(self, pred, what: str = "a stanza", within: float = QUIET) -> None:
        """Listen for `within` seconds and fail if a matching stanza arrives."""
        st = run(self._wait(pred, within))
        if st is not None:
            raise AssertionError(f"{self.name} received {what} but should not have: {st}")

    def expect_message(self, frm: str | None = None, body: str | None = None, timeout: float = WAIT,
                       type: str | None = None) -> Stanza:
        """The next <message/> (not an error) from `frm` (bare or full match) with `body`."""
        return self.expect(lambda s: s.name == "message" and s.type != "error" and _from_matches(s, frm)
                           and (body is None or s.body == body) and (type is None or s.type == type),
                           f"a message from {frm or 'anyone'} with body {body!r}", timeout)

    def expect_no_message(self, body: str | None = None, frm: str | None = None, within: float = QUIET) -> None:
        self.expect_none(lambda s: s.name == "message" and _from_matches(s, frm)
                         and (body is None or s.body == body), f"a message {body!r}", within)

    def expect_error(self, id: str, timeout: float = WAIT) -> Stanza:
        """The error bounced for the stanza we sent with this id."""
        return self.expect(lambda s: s.id == id and s.type == "error", f"an error for stanza {id}", timeout)

    def expect_presence(self, frm: str | None = None, type: str | None = None, timeout: float = WAIT,
                        pred=None) -> Stanza:
        """type=None means available presence (no type attribute)."""
        return self.expect(lambda s: s.name == "presence" and _from_matches(s, frm) and s.type == type
                           and (pred is None or pred(s)),
                           f"a presence type={type} from {frm or 'anyone'}", timeout)

    def expect_no_presence(self, frm: str | None = None, type: str | None = "any", within: float = QUIET) -> None:
        self.expect_none(lambda s: s.name == "presence" and _from_matches(s, frm)
                         and (type == "any" or s.type == type), f"a presence from {frm}", within)

    def expect_stream_error(self, timeout: float = WAIT) -> str:
        """Wait for a stream error and return its condition."""
        st = self.expect(lambda s: s.ns == NS["stream"] and s.name == "error", "a stream error", timeout)
        return st.error_condition

    def expect_disconnected(self, timeout: float = WAIT) -> None:
        async def wait():
            lp = loop()
            deadline = lp.time() + timeout
            while not self.disconnected and lp.time() < deadline:
                await asyncio.sleep(0.02)
        run(wait())
        assert self.disconnected, f"{self.name} is still connected after {timeout}s"

    def drain(self) -> list[Stanza]:
        """Forget whatever has arrived so far (after letting pending data in)."""
        pause(0.05)
        got, self.inbox[:] = list(self.inbox), []
        return got

    def kill(self) -> None:
        """Drop the TCP connection without closing the stream."""
        try:
            self.xmpp.cancel_connection_attempt()
            self.xmpp.abort()
        except Exception:  # noqa: BLE001 — best effort in teardown
            pass


def _from_matches(st: Stanza, frm: str | None) -> bool:
    if frm is None:
        return True
    got = st.frm or ""
    return got == frm or ("/" not in frm and got.split("/", 1)[0] == frm)


class Client(_Entity):
    """A logged-in user (slixmpp ClientXMPP).

    Options:
      direct_tls   connect to the XEP-0368 direct TLS port instead of the STARTTLS one
      mechanisms   restrict SASL to these mechanisms, e.g. ["PLAIN"]
      presence     send initial presence after login (default True; needed for offline delivery)
      roster       fetch the roster after login (default True; RFC 6121 §2.2 "interested resource")
    """

    def __init__(self, server: Server, jid: str, password: str, *, direct_tls: bool = False,
                 mechanisms: list[str] | None = None, presence: bool = True, roster: bool = True,
                 timeout: float = LOGIN_TIMEOUT, name: str | None = None):
        self.server = server
        self.requested_jid = jid
        self.name = name or jid.split("@", 1)[0] + ("/" + jid.split("/", 1)[1] if "/" in jid else "")
        plugin_config = {}
        if mechanisms:
            plugin_config["feature_mechanisms"] = {"use_mechs": set(mechanisms)}

        async def create():
            return slixmpp.ClientXMPP(jid, password, plugin_config=plugin_config)

        self.xmpp = run(create())
        x = self.xmpp
        x.register_plugin("xep_0030")
        x.register_plugin("xep_0199")  # answer the server's pings
        x.auto_authorize = None  # subscription requests are the tests' business
        x.auto_subscribe = False
        x.whitespace_keepalive = False
        x.ca_certs = server.ca
        x.enable_direct_tls = direct_tls
        x.enable_starttls = not direct_tls
        x.enable_plaintext = False
        self._setup_capture()
        port = server.tls_port if direct_tls else server.c2s_port
        transcript(self.name, "--", f"connecting to 127.0.0.1:{port} ({'direct TLS' if direct_tls else 'STARTTLS'})")
        self._login(port, timeout)
        self.jid = str(x.boundjid.full)
        self.bare = str(x.boundjid.bare)
        self.resource = str(x.boundjid.resource)
        if roster:
            self.iq_ok("get", f"<query xmlns='{NS['roster']}'/>")
        if presence:
            self.send("<presence/>")
        self.sync()

    def _login(self, port: int, timeout: float) -> None:
        x = self.xmpp

        async def login():
            outcome = loop().create_future()

            def done(kind, detail=None):
                if not outcome.done():
                    outcome.set_result((kind, detail))

            x.add_event_handler("session_start", lambda _: done("ok"))
            x.add_event_handler("failed_all_auth", lambda _: done("auth-failed"))
            x.add_event_handler("disconnected", lambda r: done("disconnected", r))
            x.add_event_handler("connection_failed", lambda e: done("connection-failed", e))
            x.add_event_handler("ssl_invalid_chain", lambda e: done("tls-failed", e))
            x.connect("127.0.0.1", port)
            try:
                return await asyncio.wait_for(outcome, timeout)
            except asyncio.TimeoutError:
                return ("timeout", f"no session within {timeout}s")

        kind, detail = run(login())
        if kind != "ok":
            self.kill()
            pause(0.05)
            condition = self.sasl_failure
            if self.stream_errors:
                condition = condition or self.stream_errors[-1].error_condition
            transcript(self.name, "--", f"login failed: {kind} {condition} {detail}")
            raise LoginFailed(kind, condition, detail)
        transcript(self.name, "--", f"session started as {x.boundjid.full}")

    @property
    def features(self) -> set[str]:
        """Stream features slixmpp negotiated (e.g. 'rosterver')."""
        return set(self.xmpp.features)

    @property
    def mechanism(self) -> str | None:
        mech = self.xmpp.plugin["feature_mechanisms"].mech
        return mech.name if mech else None

    def sync(self, timeout: float = WAIT) -> None:
        """Round trip to the server: everything we sent before has been processed once this returns."""
        self.iq("get", f"<ping xmlns='{NS['ping']}'/>", to=self.server.domain, timeout=timeout)

    def presence(self, to: str | None = None, type: str | None = None, show: str | None = None,
                 status: str | None = None, priority: int | None = None) -> None:
        inner = ""
        if show:
            inner += f"<show>{show}</show>"
        if status is not None:
            inner += f"<status>{escape(status)}</status>"
        if priority is not None:
            inner += f"<priority>{priority}</priority>"
        self.send(f"<presence{attrs_xml(to=to, type=type)}>{inner}</presence>"
                  if inner else f"<presence{attrs_xml(to=to, type=type)}/>")

    # -- roster (RFC 6121 §2)
    def roster(self, ver: str | None = None) -> Stanza:
        """The raw roster result (optionally asking with a version)."""
        return self.iq_ok("get", f"<query xmlns='{NS['roster']}'{attrs_xml(ver=ver)}/>")

    def roster_items(self) -> dict[str, dict]:
        """bare JID → attributes (subscription, ask, name) plus 'groups'."""
        result = self.roster()
        items = {}
        for item in result.findall("roster:query/roster:item"):
            attrs = dict(item.attrib)
            attrs["groups"] = sorted(g.text or "" for g in item.findall("roster:group", NS))
            attrs.setdefault("subscription", "none")
            items[attrs["jid"]] = attrs
        return items

    def subscription_to(self, contact: str) -> tuple[str, str | None] | None:
        """(subscription, ask) of `contact` in our roster, or None when absent."""
        item = self.roster_items().get(contact)
        return None if item is None else (item["subscription"], item.get("ask"))

    def roster_set(self, jid: str, name: str | None = None, groups=(), subscription: str | None = None) -> Stanza:
        inner = "".join(f"<group>{escape(g)}</group>" for g in groups)
        return self.iq("set", f"<query xmlns='{NS['roster']}'><item{attrs_xml(jid=jid, name=name, subscription=subscription)}>"
                       f"{inner}</item></query>")

    def expect_roster_push(self, jid: str | None = None, timeout: float = WAIT, pred=None) -> Stanza:
        """A roster push (RFC 6121 §2.1.6) about `jid`; returns the iq (use .find('roster:query/roster:item'))."""
        def match(s):
            if s.name != "iq" or s.type != "set":
                return False
            item = s.find("roster:query/roster:item")
            return item is not None and (jid is None or item.get("jid") == jid) and (pred is None or pred(item))
        return self.expect(match, f"a roster push about {jid}", timeout)

    # -- small conveniences
    def assert_works(self) -> None:
        """Send ourselves a message and get it back: the session is alive and routed."""
        body = "are you there? " + uuid.uuid4().hex[:8]
        self.message(self.jid, body)
        self.expect_message(frm=self.jid, body=body)

    def disco_info(self, to: str | None = None, node: str | None = None) -> Stanza:
        return self.iq_ok("get", f"<query xmlns='{NS['disco_info']}'{attrs_xml(node=node)}/>", to=to)

    def disconnect(self, timeout: float = 3.0) -> None:
        """Close the stream politely (</stream:stream>) and wait for the TCP close."""
        if self.disconnected:
            return
        transcript(self.name, "->", "</stream:stream>")
        fut = self.xmpp.disconnect(wait=timeout)
        try:
            run(fut, timeout + 2)
        except asyncio.TimeoutError:
            self.kill()
        self.expect_disconnected(timeout)


class Component(_Entity):
    """An external component (XEP-0114) connected to the component port."""

    def __init__(self, server: Server, domain: str, secret: str, timeout: float = LOGIN_TIMEOUT):
        self.server = server
        self.name = domain

        async def create():
            return slixmpp.ComponentXMPP(domain, secret, "127.0.0.1", server.component_port)

        self.xmpp = run(create())
        self.xmpp.whitespace_keepalive = False
        self.jid = domain
        # Every iq is the test's to answer: without this slixmpp replies <feature-not-implemented/> itself.
        self.xmpp.register_handler(Callback("tests answer iqs", MatchXPath(f"{{{NS['component']}}}iq"), lambda _: None))
        self._setup_capture()
        x = self.xmpp

        async def connect():
            outcome = loop().create_future()

            def done(kind, detail=None):
                if not outcome.done():
                    outcome.set_result((kind, detail))

            x.add_event_handler("session_start", lambda _: done("ok"))
            x.add_event_handler("disconnected", lambda r: done("disconnected", r))
            x.add_event_handler("connection_failed", lambda e: done("connection-failed", e))
            x.connect()
            try:
                return await asyncio.wait_for(outcome, timeout)
            except asyncio.TimeoutError:
                return ("timeout", None)

        kind, detail = run(connect())
        if kind != "ok":
            self.kill()
            pause(0.05)
            cond = self.stream_errors[-1].error_condition if self.stream_errors else None
            raise LoginFailed(kind, cond, detail)


# ---------------------------------------------------------------------------------------------------------
# Raw streams: bytes exactly as written.


class StreamClosed(Exception):
    pass


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stream_header(to: str = DOMAIN, ns: str = "jabber:client", extra: str = "") -> str:
    return (f"<?xml version='1.0'?><stream:stream to='{to}' version='1.0' xml:lang='en' "
            f"xmlns='{ns}' xmlns:stream='{NS['stream']}'{extra}>")


class ScramResult:
    def __init__(self, ok: bool, condition: str | None = None, server_verified: bool = False,
                 challenge: bytes | None = None, element: ET.Element | None = None):
        self.ok, self.condition, self.server_verified = ok, condition, server_verified
        self.challenge, self.element = challenge, element

    def __repr__(self):
        return f"ScramResult(ok={self.ok}, condition={self.condition}, server_verified={self.server_verified})"


class RawStream:
    """A hand-driven XMPP stream. Blocking API, every read bounded by a timeout."""

    def __init__(self, server: Server, direct_tls: bool = False, port: int | None = None, name: str = "raw"):
        self.server = server
        self.name = name
        if port is None:
            port = server.tls_port if direct_tls else server.c2s_port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.setblocking(False)
        self.tls: SSL.Connection | None = None
        self.eof = False
        self.write_failed = False
        self.features: Stanza | None = None
        self.jid: str | None = None
        self._new_parser()
        transcript(self.name, "--", f"TCP connected to 127.0.0.1:{port}")
        if direct_tls:
            self._handshake()

    # -- transport
    def _new_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.stream_attrs: dict | None = None
        self.stream_closed = False
        self.pending: list[ET.Element] = []

    def _wait_io(self, write: bool, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.name}: nothing received in time") from None
        if write:
            select.select([], [self.sock], [], remaining)
        else:
            select.select([self.sock], [], [], remaining)

    def _handshake(self, timeout: float = WAIT) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.load_verify_locations(str(self.server.ca))
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errnum, depth, ok: bool(ok))
        conn = SSL.Connection(ctx, self.sock)
        conn.set_tlsext_host_name(self.server.domain.encode())
        conn.set_connect_state()
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                self._wait_io(False, deadline)
            except SSL.WantWriteError:
                self._wait_io(True, deadline)
        self.tls = conn
        cert = conn.get_peer_certificate(as_cryptography=True)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        assert self.server.domain in dns, f"server certificate names {dns}, not {self.server.domain}"
        transcript(self.name, "--", f"TLS established: {conn.get_protocol_version_name()} {conn.get_cipher_name()}")

    def _read_some(self, deadline: float) -> bytes:
        while True:
            try:
                if self.tls is not None:
                    return self.tls.recv(65536)
                return self.sock.recv(65536)
            except (SSL.WantReadError, BlockingIOError, InterruptedError):
                self._wait_io(False, deadline)
            except SSL.WantWriteError:
                self._wait_io(True, deadline)
            except SSL.ZeroReturnError:
                return b""
            except (SSL.SysCallError, SSL.Error, ConnectionResetError, BrokenPipeError):
                return b""

    def send(self, data: str | bytes, timeout: float = WAIT) -> None:
        """Write bytes. A write the server refuses (it closed on us) is recorded, not raised: the test
        then reads the stream error the server sent before closing."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        transcript(self.name, "->", data)
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                if self.tls is not None:
                    n = self.tls.send(bytes(view[:16384]))
                else:
                    n = self.sock.send(view)
                view = view[n:]
            except (SSL.WantWriteError, BlockingIOError, InterruptedError):
                self._wait_io(True, deadline)
            except SSL.WantReadError:
                self._wait_io(False, deadline)
            except (SSL.SysCallError, SSL.Error, ConnectionResetError, BrokenPipeError) as e:
                self.write_failed = True
                transcript(self.name, "--", f"write failed: {e!r}")
                return

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
            events = list(self.parser.read_events())
        except ET.ParseError as e:
            raise AssertionError(f"{self.name}: server sent XML we cannot parse ({e}): {data[:500]!r}") from e
        for event, el in events:
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    if _local(el.tag) != "stream":
                        raise AssertionError(
                            f"{self.name}: server sent <{_local(el.tag)}> without opening a stream first "
                            "(RFC 6120 §4.9.1.2: it must send its stream header before a stream error)")
                    self.root = el
                    self.stream_attrs = dict(el.attrib)
                    transcript(self.name, "<-", "<stream:stream " + " ".join(f"{k}={v!r}" for k, v in el.attrib.items()) + ">")
            else:
                self.depth -= 1
                if self.depth == 1:
                    transcript(self.name, "<-", xml_str(el))
                    self.pending.append(el)
                    if self.root is not None:
                        self.root.remove(el)
                elif self.depth == 0:
                    transcript(self.name, "<-", "</stream:stream>")
                    self.stream_closed = True

    def recv(self, timeout: float = WAIT) -> Stanza:
        """Next top-level element. StreamClosed when the stream ended first, TimeoutError after timeout."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            if self.stream_closed or self.eof:
                raise StreamClosed(f"{self.name}: stream closed")
            data = self._read_some(deadline)
            if not data:
                self.eof = True
                transcript(self.name, "--", "connection closed by server")
                continue
            self._feed(data)
        return Stanza(self.pending.pop(0))

    def expect(self, name: str, ns: str | None = None, timeout: float = WAIT) -> Stanza:
        st = self.recv(timeout)
        assert st.name == name and (ns is None or st.ns == NS.get(ns, ns)), \
            f"{self.name}: expected <{name}/> ({ns}), got {st}"
        return st

    def expect_stream_error(self, timeout: float = WAIT) -> str:
        """Read until a stream error arrives; return its condition. Fails if the stream closes without one."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                st = self.recv(max(0.01, deadline - time.monotonic()))
            except StreamClosed:
                raise AssertionError(f"{self.name}: stream closed without a stream error; before that: {seen}")
            except TimeoutError:
                raise AssertionError(f"{self.name}: no stream error within {timeout}s; got: {seen}")
            if st.ns == NS["stream"] and st.name == "error":
                return st.error_condition
            seen.append(str(st))

    def wait_closed(self, timeout: float = WAIT) -> bool:
        """True once the server closed the stream or the connection within timeout."""
        deadline = time.monotonic() + timeout
        while not (self.stream_closed or self.eof):
            try:
                self.recv(max(0.01, deadline - time.monotonic()))
            except StreamClosed:
                break
            except TimeoutError:
                return False
        return True

    def read_until_eof(self, timeout: float = WAIT) -> bytes | None:
        """Read raw bytes (no XML parsing) until the server closes; None if it is still open at timeout."""
        deadline = time.monotonic() + timeout
        got = b""
        try:
            while True:
                data = self._read_some(deadline)
                if not data:
                    self.eof = True
                    transcript(self.name, "<-", f"{got[:200]!r} then EOF")
                    return got
                got += data
        except TimeoutError:
            return None

    def close(self) -> None:
        self.kill()

    def kill(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the XMPP dance
    def open(self, to: str | None = None, header: str | None = None, timeout: float = WAIT) -> Stanza:
        """Send a stream header, read the server's and its <stream:features/>."""
        self.send(header or stream_header(to or self.server.domain))
        self.features = self.expect("features", "stream", timeout)
        return self.features

    def starttls(self) -> Stanza:
        """RFC 6120 §5: <starttls/> → <proceed/>, TLS handshake, new stream. Returns the new features."""
        self.send(f"<starttls xmlns='{NS['tls']}'/>")
        self.expect("proceed", "tls")
        self._handshake()
        self._new_parser()
        return self.open()

    def restart(self) -> Stanza:
        """Stream restart after SASL success (RFC 6120 §6.4.6): new parser, new header, new features."""
        self._new_parser()
        return self.open()

    @property
    def mechanisms(self) -> list[str]:
        assert self.features is not None
        return [m.text for m in self.features.findall("sasl:mechanisms/sasl:mechanism")]

    @property
    def channel_binding_types(self) -> list[str]:
        """XEP-0440 <sasl-channel-binding/> types advertised in the features."""
        assert self.features is not None
        return [c.get("type") for c in self.features.findall("sasl_cb:sasl-channel-binding/sasl_cb:channel-binding")]

    def channel_binding(self, cb_type: str) -> bytes:
        """RFC 9266 tls-exporter / RFC 5929 tls-server-end-point data for this connection."""
        assert self.tls is not None, "channel binding needs TLS"
        if cb_type == "tls-exporter":
            return self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        if cb_type == "tls-server-end-point":
            cert = self.tls.get_peer_certificate(as_cryptography=True)
            algo = cert.signature_hash_algorithm
            if algo is None or algo.name in ("md5", "sha1"):
                algo = hashes.SHA256()
            h = hashes.Hash(algo)
            h.update(cert.public_bytes(Encoding.DER))
            return h.finalize()
        raise ValueError(cb_type)

    def auth_plain(self, user: str, password: str) -> ScramResult:
        creds = b64(b"\0" + user.encode() + b"\0" + password.encode())
        self.send(f"<auth xmlns='{NS['sasl']}' mechanism='PLAIN'>{creds}</auth>")
        st = self.recv()
        if st.name == "success":
            return ScramResult(True, element=st.xml)
        return ScramResult(False, _first_child(st), element=st.xml)

    def best_scram(self) -> str:
        """The strongest plain SCRAM the server offers (kabar: SCRAM-SHA-256)."""
        offered = self.mechanisms
        return next((m for m in ("SCRAM-SHA-256", "SCRAM-SHA-1") if m in offered), "SCRAM-SHA-256")

    def auth_scram(self, user: str, password: str, mechanism: str | None = None,
                   cb_type: str | None = None, cb_data: bytes | None = None, flag: str | None = None) -> ScramResult:
        """Run SCRAM (RFC 5802/7677) by hand. For a -PLUS mechanism the gs2 flag is p=<cb_type> and the
        channel binding data is computed from this connection unless `cb_data` is given. `flag` overrides
        the gs2 flag (e.g. "y" to claim the client supports binding but thinks the server does not)."""
        mechanism = mechanism or self.best_scram()
        base = mechanism[:-5] if mechanism.endswith("-PLUS") else mechanism
        hname = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[base]
        if mechanism.endswith("-PLUS"):
            cb_type = cb_type or "tls-exporter"
            gs2 = f"p={cb_type},,"
            if cb_data is None:
                cb_data = self.channel_binding(cb_type)
        else:
            gs2 = f"{flag or 'n'},,"
            cb_data = b""
        cnonce = b64(os.urandom(18))
        first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={cnonce}"
        self.send(f"<auth xmlns='{NS['sasl']}' mechanism='{mechanism}'>{b64((gs2 + first_bare).encode())}</auth>")
        st = self.recv()
        if st.name != "challenge":
            return ScramResult(False, _first_child(st), element=st.xml)
        server_first = base64.b64decode(st.xml.text or "")
        fields = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        assert fields["r"].startswith(cnonce), f"server nonce {fields['r']!r} does not extend ours {cnonce!r}"
        salt, iters = base64.b64decode(fields["s"]), int(fields["i"])
        final_bare = f"c={b64(gs2.encode() + cb_data)},r={fields['r']}"
        auth_message = f"{first_bare},{server_first.decode()},{final_bare}".encode()
        salted = hashlib.pbkdf2_hmac(hname, password.encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", hname).digest()
        stored_key = hashlib.new(hname, client_key).digest()
        signature = hmac.new(stored_key, auth_message, hname).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", hname).digest()
        expected_v = b64(hmac.new(server_key, auth_message, hname).digest())
        self.send(f"<response xmlns='{NS['sasl']}'>{b64((final_bare + ',p=' + b64(proof)).encode())}</response>")
        st = self.recv()
        if st.name == "challenge":  # server-final as a challenge (RFC 6120 §6.3.10 allows it)
            data = base64.b64decode(st.xml.text or "")
            self.send(f"<response xmlns='{NS['sasl']}'/>")
            st2 = self.recv()
            ok = st2.name == "success"
            return ScramResult(ok, None if ok else _first_child(st2), data == f"v={expected_v}".encode(),
                               challenge=server_first, element=st2.xml)
        if st.name != "success":
            return ScramResult(False, _first_child(st), challenge=server_first, element=st.xml)
        data = base64.b64decode(st.xml.text or "")
        return ScramResult(True, None, data == f"v={expected_v}".encode(), challenge=server_first, element=st.xml)

    def bind(self, resource: str | None = None) -> Stanza:
        """RFC 6120 §7: returns the iq answer (result with <jid/>, or error)."""
        inner = f"<resource>{escape(resource)}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind-1'><bind xmlns='{NS['bind']}'>{inner}</bind></iq>")
        st = self.expect("iq")
        if st.type == "result":
            self.jid = st.find("bind:bind/bind:jid").text
            session = self.features.find("session:session") if self.features is not None else None
            if session is not None and session.find("session:optional", NS) is None:
                self.send(f"<iq type='set' id='sess-1'><session xmlns='{NS['session']}'/></iq>")
                self.expect("iq")
        return st

    def login(self, user: str, password: str | None = None, mechanism: str | None = None,
              resource: str | None = "raw", tls: bool = True, **scram) -> str:
        """STARTTLS (unless already TLS or tls=False), SASL, stream restart, bind. Returns the full JID."""
        user = user.split("@", 1)[0]
        if password is None:
            password = self.server.passwords[self.server.jid(user)]
        if self.features is None:
            self.open()
        if tls and self.tls is None:
            self.starttls()
        res = self.auth_plain(user, password) if mechanism == "PLAIN" else \
            self.auth_scram(user, password, mechanism, **scram)
        assert res.ok, f"{self.name}: {mechanism} login as {user} failed: {res}"
        self.restart()
        st = self.bind(resource)
        assert st.type == "result", f"{self.name}: bind failed: {st}"
        return self.jid

    def message_self_roundtrip(self) -> None:
        """Send a message to our own full JID and receive it back (skipping anything else)."""
        body = "raw ping " + uuid.uuid4().hex[:8]
        self.send(f"<message to={quoteattr(self.jid)} type='chat' id='{new_id()}'><body>{body}</body></message>")
        deadline = time.monotonic() + WAIT
        while True:
            st = self.recv(max(0.01, deadline - time.monotonic()))
            if st.name == "message" and Stanza(st.xml).body == body:
                return

    def iq(self, type: str, payload: str, to: str | None = None, timeout: float = WAIT) -> Stanza:
        """Send an iq and read until its answer (other elements are skipped)."""
        id = new_id("iq")
        self.send(f"<iq{attrs_xml(type=type, to=to, id=id)}>{payload}</iq>")
        deadline = time.monotonic() + timeout
        while True:
            st = self.recv(max(0.01, deadline - time.monotonic()))
            if st.name == "iq" and st.id == id:
                return st


def make_mutual(a: Client, b: Client) -> None:
    """Subscribe a and b to each other's presence (RFC 6121 §3.1), then forget the stanzas that caused."""
    for x, y in ((a, b), (b, a)):
        x.presence(to=y.bare, type="subscribe")
        y.expect_presence(frm=x.bare, type="subscribe")
        y.presence(to=x.bare, type="subscribed")
        x.expect_presence(frm=y.bare, type="subscribed")
    a.sync()
    b.sync()
    pause(0.2)
    a.drain()
    b.drain()


def _first_child(st: Stanza) -> str | None:
    for c in st.xml:
        return _local(c.tag)
    return st.name


_counter = itertools.count(1)


def unique(prefix: str = "x") -> str:
    return f"{prefix}{next(_counter)}{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------------------------
# Clients with extra slixmpp plugins (stream management, carbons, MAM …), and killing the server hard.


class PluginClient(Client):
    """A Client that registers extra slixmpp plugins before logging in, e.g. stream management
    (`{"xep_0198": {}}`: enabled with resumption during login) or carbons (`{"xep_0280": {}}`).
    Values are plugin configs (None or {} for the defaults). Made by `plugin_client()`."""

    def __init__(self, server: Server, jid: str, password: str, *, plugins: dict | None = None, **opts):
        self._extra_plugins = dict(plugins or {})
        super().__init__(server, jid, password, **opts)

    def _login(self, port: int, timeout: float) -> None:
        for name, cfg in self._extra_plugins.items():
            if name not in self.xmpp.plugin:
                self.xmpp.register_plugin(name, pconfig=cfg or None)
        super()._login(port, timeout)


def plugin_client(server: Server, user: str, plugins: dict, password: str | None = None, **opts) -> PluginClient:
    """Like `server.client(user)`, with extra slixmpp plugins (see PluginClient)."""
    bare = server.jid(user.split("/", 1)[0])
    if password is None:
        password = server.passwords.get(bare, "no-such-password")
    full = bare + ("/" + user.split("/", 1)[1] if "/" in user else "")
    c = PluginClient(server, full, password, plugins=plugins, **opts)
    server.clients.append(c)
    return c


def _server_kill9(self: Server) -> int | None:
    """SIGKILL the server (no shutdown, no flush: a power cut or an OOM kill). Returns the exit code;
    `start()` brings it back on the same ports and data folder."""
    if self.proc is None:
        return None
    proc, self.proc = self.proc, None
    proc.kill()
    proc.wait(10)
    self.exit_codes.append(proc.returncode)
    self._log(f"=== kabar serve killed with SIGKILL (exit {proc.returncode})")
    return proc.returncode


Server.kill9 = _server_kill9


NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"


class MamItem:
    """One XEP-0313 result: archive `id`, `stamp` (the <delay/> stamp string) and the archived `message`."""

    def __init__(self, wrapper: Stanza):
        self.wrapper = wrapper
        result = wrapper.xml.find(f"{{{NS_MAM}}}result")
        assert result is not None, f"not a MAM result: {wrapper}"
        self.id = result.get("id")
        self.queryid = result.get("queryid")
        forwarded = result.find(f"{{{NS_FORWARD}}}forwarded")
        assert forwarded is not None, f"MAM result without <forwarded/>: {wrapper}"
        delay = forwarded.find(f"{{{NS['delay']}}}delay")
        self.stamp = delay.get("stamp") if delay is not None else None
        inner = next((c for c in forwarded if _local(c.tag) == "message"), None)
        assert inner is not None, f"MAM result without a forwarded <message/>: {wrapper}"
        self.message = Stanza(inner)
        self.body = self.message.body

    def __repr__(self):
        return f"MamItem(id={self.id!r}, stamp={self.stamp!r}, body={self.body!r})"


def mam_query(client: "_Entity", fields: dict | None = None, rsm: str = "", extra: str = "",
              to: str | None = None, timeout: float = WAIT) -> tuple[list[MamItem], Stanza]:
    """XEP-0313 §4: query `client`'s archive (or `to`'s) with form `fields` ({var: value}) and an RSM
    `<set/>` body (e.g. "<max>10</max><after>ID</after>"), collect the result messages of this query
    and return (items in arrival order, the iq answer: result with <fin/>, or error)."""
    qid = new_id("q")
    form = ""
    if fields:
        form = (f"<x xmlns='{NS['data']}' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{NS_MAM}</value></field>"
                + "".join(f"<field var={quoteattr(k)}><value>{escape(v)}</value></field>" for k, v in fields.items())
                + "</x>")
    rsm_xml = f"<set xmlns='{NS_RSM}'>{rsm}</set>" if rsm else ""
    answer = client.iq("set", f"<query xmlns='{NS_MAM}' queryid='{qid}'>{form}{rsm_xml}{extra}</query>",
                       to=to, timeout=timeout)
    mine = [s for s in client.inbox if s.name == "message"
            and (r := s.xml.find(f"{{{NS_MAM}}}result")) is not None and r.get("queryid") == qid]
    for s in mine:
        client.inbox.remove(s)
    return [MamItem(s) for s in mine], answer


def mam_fin(answer: Stanza) -> dict:
    """The <fin/> of a MAM answer as {complete, first, last, count} (strings, None when absent)."""
    fin = answer.xml.find(f"{{{NS_MAM}}}fin")
    assert fin is not None, f"MAM answer without <fin/>: {answer}"
    s = fin.find(f"{{{NS_RSM}}}set")
    get = (lambda n: (s.find(f"{{{NS_RSM}}}{n}").text if s is not None and s.find(f"{{{NS_RSM}}}{n}") is not None else None))
    return {"complete": fin.get("complete"), "first": get("first"), "last": get("last"), "count": get("count")}


def mam_all(client: "_Entity", fields: dict | None = None, page: int = 100, limit: int = 100) -> list[MamItem]:
    """Every item matching `fields`, oldest first, paging forward with RSM <after/>."""
    items: list[MamItem] = []
    after = None
    for _ in range(limit):
        rsm = f"<max>{page}</max>" + (f"<after>{after}</after>" if after else "")
        got, answer = mam_query(client, fields, rsm)
        assert answer.type == "result", f"MAM query failed: {answer}"
        items += got
        fin = mam_fin(answer)
        if fin["complete"] == "true" or not got:
            return items
        after = fin["last"]
    raise AssertionError(f"archive paging did not end after {limit} pages")
