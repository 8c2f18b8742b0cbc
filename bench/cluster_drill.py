#!/usr/bin/env python3
"""Failure drill for a kabar cluster (docs/CLUSTER.md, "Failure drill"); run it with bench/cluster-drill.sh.

Starts PostgreSQL (scripts/pg) and nats-server (scripts/nats) unless given, three kabar nodes on
loopback, and N slixmpp clients (XEP-0198 on, acks requested after every stanza) spread over the nodes,
each sending a numbered message to a partner on another node every --interval seconds. Then, in turn:

  1. kill -9 of each node (--rounds of them): its clients reconnect to the next node (as a client falls
     back to the next SRV target); failover = kill → the client's new session is bound; the node is
     restarted under its name and must rejoin;
  2. nats-server stopped for --nats-down seconds and started again on the same port: the cluster must
     heal without restarts (recovery = NATS back → first cross-node message delivered live);
  3. `kabar drain` of one node: its clients follow `<see-other-host/>`; moved = drain → new session.

At the end every message the cluster acknowledged (XEP-0198 <a/>) must have been delivered, or be in the
recipient's archive (XEP-0313) or offline store — checked in PostgreSQL. Prints a JSON summary and exits 1
if anything acknowledged was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import hashlib

import slixmpp
from slixmpp.util.sasl.mechanisms import SCRAM

REPO = Path(__file__).resolve().parent.parent
KABAR = Path(os.environ.get("KABAR_BIN", REPO / "target" / "release" / "kabar"))
DOMAIN = "localhost"
PASSWORD = "drill-password-1"


# slixmpp derives SCRAM keys in a pure-Python loop: tens of ms of *client* CPU per login, serialised on
# one event loop, which would show up as failover time. hashlib's PBKDF2 gives the same result.
def _fast_hi(self, text, salt, iterations):
    return hashlib.pbkdf2_hmac(self.hash_name.replace("-", "").lower(), bytes(text), bytes(salt), iterations)


SCRAM.Hi = _fast_hi


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def toml(cfg: dict) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(str(v))
    top = [f"{k} = {val(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    sections = [f"\n[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items())
                for k, v in cfg.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))  # nearest rank
    return round(v[k], 3)


class Node:
    def __init__(self, root: Path, name: str, storage: dict, nats_url: str):
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.c2s, self.tls, self.http = free_ports(3)
        self.address = f"localhost:{self.c2s}"
        self.config = self.dir / "kabar.toml"
        self.config.write_text(toml({
            "domain": DOMAIN,
            "data_dir": str(self.dir / "data"),
            "c2s": {"listen": [f"127.0.0.1:{self.c2s}"], "direct_tls_listen": [f"127.0.0.1:{self.tls}"]},
            "http": {"listen": [f"127.0.0.1:{self.http}"]},
            "limits": {"auth_failures_per_ip_per_minute": 100000},
            "storage": storage,
            "cluster": {"enabled": True, "nats_url": nats_url, "node": name, "heartbeat_secs": 1,
                        "lease_secs": 4, "delivery_timeout_ms": 1500, "public_address": self.address},
        }))
        self.log_path = self.dir / "kabar.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as f:
            self.proc = subprocess.Popen([str(KABAR), "serve", "--config", str(self.config)], stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.c2s), 0.2).close()
                if (self.dir / "data" / "tls" / "ca.pem").exists():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within 30 s: see {self.log_path}")

    def kill9(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, since: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text()[since:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {needle!r} not logged within {timeout} s")
            time.sleep(0.05)
        return time.monotonic()


class Stats:
    def __init__(self):
        self.sent: dict[str, str] = {}        # id -> recipient bare JID
        self.acked: set[str] = set()
        self.received: dict[str, int] = {}    # id -> times received
        self.failover: list[float] = []
        self.moved: list[float] = []
        self.errors: list[str] = []


class Client:
    def __init__(self, drill: "Drill", idx: int, user: str, partner: str, node: int):
        self.drill, self.idx, self.user, self.partner, self.node = drill, idx, user, partner, node
        self.seq = 0
        self.down_since: float | None = None
        self.reason = ""
        self.bound = asyncio.Event()
        x = slixmpp.ClientXMPP(f"{user}@{DOMAIN}/drill", PASSWORD)
        x.register_plugin("xep_0198", {"window": 1})
        x.register_plugin("xep_0199")
        x.whitespace_keepalive = False
        x.ca_certs = str(drill.ca_bundle)
        x.enable_plaintext = False
        x.enable_direct_tls = False
        x.max_redirects = -1  # slixmpp 1.17 would redial its first address; we follow see-other-host below
        x.add_event_handler("session_start", self.on_session)
        x.add_event_handler("session_resumed", self.on_session)
        x.add_event_handler("disconnected", self.on_disconnected)
        x.add_event_handler("stream_error", self.on_stream_error)
        x.add_event_handler("message", self.on_message)
        x.add_event_handler("stanza_acked", self.on_acked)
        self.x = x

    def connect(self) -> None:
        self.x.connect("127.0.0.1", self.drill.nodes[self.node].c2s)

    def on_session(self, _ev) -> None:
        self.x.send_presence()
        if self.down_since is not None:
            took = time.monotonic() - self.down_since
            (self.drill.stats.moved if self.reason == "drain" else self.drill.stats.failover).append(took)
            self.down_since = None
        self.reason = ""
        self.bound.set()

    def on_stream_error(self, error) -> None:
        if error["condition"] == "see-other-host":
            host = error["see_other_host"] or ""
            port = int(host.rsplit(":", 1)[-1]) if ":" in host else 5222
            for i, n in enumerate(self.drill.nodes):
                if n.c2s == port:
                    self.node = i
            self.reason = "drain"

    def on_disconnected(self, ev) -> None:
        if self.drill.stopping:
            return
        if os.environ.get("DRILL_DEBUG"):
            log(f"{self.user} disconnected from n{self.node + 1}: {ev}")
        self.bound.clear()
        if self.down_since is None:
            self.down_since = time.monotonic()
        if self.reason != "drain":
            # Another node, as a client falls back to another SRV target.
            self.node = self.drill.next_alive(self.node)
            self.reason = "failure"
        asyncio.get_event_loop().call_later(0.05, self.connect)

    def on_message(self, msg) -> None:
        body = msg["body"]
        if msg["type"] in ("chat", "normal") and body.startswith("d"):
            r = self.drill.stats.received
            r[body] = r.get(body, 0) + 1

    def on_acked(self, stanza) -> None:
        if stanza.name == "message" and stanza["body"]:
            self.drill.stats.acked.add(stanza["body"])

    def send_one(self) -> None:
        if not self.bound.is_set():
            return
        self.seq += 1
        mid = f"d{self.idx}-{self.seq}"
        self.drill.stats.sent[mid] = f"{self.partner}@{DOMAIN}"
        # Our id travels in the body (slixmpp makes the id attribute): the archive keeps bodies.
        self.x.send_message(mto=f"{self.partner}@{DOMAIN}", mbody=mid, mtype="chat")


class Drill:
    def __init__(self, args):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="kabar-drill."))
        self.stats = Stats()
        self.stopping = False
        self.nodes: list[Node] = []
        self.alive: set[int] = set()
        self.pg_env: dict | None = None
        self.nats_port = 0
        self.nats_proc: subprocess.Popen | None = None
        self.own_nats_dir: str | None = None
        self.events: dict = {}
        self.rng = random.Random(args.seed)

    # -- infrastructure
    def start_pg(self) -> str:
        url = os.environ.get("KABAR_TEST_POSTGRES_URL")
        if url:
            return url
        out = subprocess.run([str(REPO / "scripts" / "pg"), "start"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, KABAR_PG_DIR=str(self.root / "pg")))
        env = {}
        for line in out.stdout.splitlines():
            if line.startswith("export "):
                k, _, v = line[7:].partition("=")
                env[k] = v.strip("'\"")
        self.pg_env = env
        return env["KABAR_TEST_POSTGRES_URL"]

    def start_nats(self) -> None:
        if not self.nats_port:
            self.nats_port = free_ports(1)[0]
        self.nats_proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.nats_port), "-l", str(self.root / "nats.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.nats_port), 0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop_nats(self) -> None:
        if self.nats_proc and self.nats_proc.poll() is None:
            self.nats_proc.terminate()
            self.nats_proc.wait(10)

    def next_alive(self, i: int) -> int:
        """Another live node, picked at random: SRV targets of equal priority and weight."""
        others = sorted(self.alive - {i})
        return self.rng.choice(others) if others else i

    def sql(self, query: str) -> list[str]:
        out = subprocess.run(["psql", "-X", "-At", self.pg_url, "-c", f"SET search_path TO {self.schema}; {query}"],
                             capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
        return [line for line in out.stdout.splitlines() if line and line != "SET"]

    # -- phases
    async def run(self) -> dict:
        a = self.args
        if not KABAR.exists():
            raise SystemExit(f"{KABAR} not found: cargo build --release -p kabar")
        if not shutil.which("nats-server"):
            raise SystemExit("nats-server is not installed (apt-get install nats-server)")
        self.pg_url = self.start_pg()
        self.schema = "drill_" + uuid.uuid4().hex[:12]
        self.start_nats()
        storage = {"backend": "postgres", "url": self.pg_url, "schema": self.schema, "pool_size": 8}
        nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.nodes = [Node(self.root, f"n{i + 1}", storage, nats_url) for i in range(3)]
        users = [f"d{i}" for i in range(a.clients)]
        log(f"creating {len(users)} accounts in schema {self.schema}")
        for u in users:
            subprocess.run([str(KABAR), "user", "add", f"{u}@{DOMAIN}", "--password", PASSWORD,
                            "--config", str(self.nodes[0].config)], check=True, capture_output=True)
        for i, n in enumerate(self.nodes):
            if i > 0:
                # One certificate for the domain on every node (as in production): clients moving between
                # nodes trust one CA. kabar reuses what it finds in <data_dir>/tls/.
                shutil.copytree(self.nodes[0].dir / "data" / "tls", n.dir / "data" / "tls")
            n.start()
            self.alive.add(i)
        for n in self.nodes:
            for o in self.nodes:
                if o is not n:
                    n.wait_log(f'cluster node joined node="{o.name}"', 0, 30)
        self.ca_bundle = self.root / "ca-bundle.pem"
        self.ca_bundle.write_text((self.nodes[0].dir / "data" / "tls" / "ca.pem").read_text())
        log(f"3 nodes up ({', '.join(n.address for n in self.nodes)}), NATS on {self.nats_port}")

        # Partners are on another node: client i on node i % 3, talking to client i + 1.
        self.clients = [Client(self, i, users[i], users[(i + 1) % len(users)], i % 3) for i in range(len(users))]
        for c in self.clients:
            c.connect()
        await asyncio.wait_for(asyncio.gather(*(c.bound.wait() for c in self.clients)), 60)
        log(f"{len(self.clients)} clients bound; chatting every {a.interval} s each")
        sender = asyncio.ensure_future(self.chat())
        await asyncio.sleep(a.phase)

        for r in range(a.rounds):
            victim = r % 3
            node = self.nodes[victim]
            mine = [c for c in self.clients if c.node == victim]
            log(f"round {r + 1}: kill -9 {node.name} ({len(mine)} clients on it)")
            self.alive.discard(victim)
            t0 = time.monotonic()
            for c in mine:
                c.down_since = t0
                c.reason = "failure"
                c.bound.clear()
            node.kill9()
            await self.wait_bound(mine, 60)
            log(f"  its clients are served again after {time.monotonic() - t0:.2f} s (slowest)")
            await asyncio.sleep(a.phase)
            offsets = [len(n.log_text()) for n in self.nodes]
            node.start()
            await asyncio.to_thread(self.nodes[(victim + 1) % 3].wait_log, f'cluster node joined node="{node.name}"',
                                    offsets[(victim + 1) % 3], 30)
            self.alive.add(victim)
            log(f"  {node.name} restarted and rejoined")
            await asyncio.sleep(a.phase)

        log(f"NATS outage: stopping nats-server for {a.nats_down} s")
        offsets = [len(n.log_text()) for n in self.nodes]
        self.stop_nats()
        t_stop = time.monotonic()
        await asyncio.sleep(a.nats_down)
        self.start_nats()
        t_back = time.monotonic()
        for i, n in enumerate(self.nodes):
            for o in self.nodes:
                if o is not n:
                    await asyncio.to_thread(n.wait_log, f'cluster node joined node="{o.name}"', offsets[i], 60)
        healed = time.monotonic() - t_back
        probe_from, probe_to = self.clients[0], self.clients[1]
        t_probe = time.monotonic()
        probe = await self.live_probe(probe_from, probe_to, 30)
        self.events["nats_outage"] = {"down_s": round(t_back - t_stop, 2), "all_nodes_rejoined_s": round(healed, 2),
                                      "first_cross_node_live_delivery_s": probe and round(probe - t_back, 2),
                                      "probe_wait_s": probe and round(probe - t_probe, 2)}
        log(f"  NATS back; nodes rejoined after {healed:.2f} s")
        await asyncio.sleep(a.phase)

        busiest = max(range(3), key=lambda i: sum(c.node == i for c in self.clients))
        drained = self.nodes[busiest]
        mine = [c for c in self.clients if c.node == busiest]
        log(f"rolling restart: kabar drain {drained.name} ({len(mine)} clients)")
        t0 = time.monotonic()
        for c in mine:
            c.down_since = t0
            c.bound.clear()
        self.alive.discard(busiest)
        out = await asyncio.to_thread(subprocess.run, [str(KABAR), "drain", "--config", str(drained.config)],
                                      capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            self.stats.errors.append(f"kabar drain failed: {out.stdout}{out.stderr}")
        await self.wait_bound(mine, 60)
        self.events["drain"] = {"clients": len(mine), "node_exited_s": round(time.monotonic() - t0, 2)}
        drained.start()
        self.alive.add(busiest)
        await asyncio.sleep(a.phase)

        sender.cancel()
        await asyncio.sleep(2)  # let the last acks and deliveries arrive
        return self.verify()

    async def chat(self) -> None:
        while True:
            for c in self.clients:
                c.send_one()
            await asyncio.sleep(self.args.interval)

    async def wait_bound(self, clients, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.bound.wait() for c in clients)), timeout)
        except asyncio.TimeoutError:
            self.stats.errors.append(f"{sum(not c.bound.is_set() for c in clients)} clients not served again "
                                     f"within {timeout} s")

    async def live_probe(self, a: Client, b: Client, timeout: float) -> float | None:
        """Sends numbered probes a → b until one is delivered live; returns when."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n += 1
            a.seq += 1
            mid = f"d{a.idx}-{a.seq}"
            self.stats.sent[mid] = f"{b.user}@{DOMAIN}"
            a.x.send_message(mto=f"{b.user}@{DOMAIN}", mbody=mid, mtype="chat")
            for _ in range(10):
                await asyncio.sleep(0.05)
                if mid in self.stats.received:
                    return time.monotonic()
        return None

    def verify(self) -> dict:
        s = self.stats
        # slixmpp puts our id in the body; the server archives it with the body.
        archived = set(self.sql("SELECT body FROM archive WHERE direction = 'in'"))
        offline = " ".join(self.sql("SELECT convert_from(stanza, 'UTF8') FROM offline"))
        delivered = {m for m in s.received}
        acked_ids = {m for m in s.acked}
        lost = sorted(m for m in acked_ids if m not in delivered and m not in archived and f">{m}<" not in offline)
        undelivered_but_kept = sum(1 for m in acked_ids if m not in delivered and m not in lost)
        dup = sum(1 for m, k in s.received.items() if k > 1)
        return {
            "clients": len(self.clients),
            "nodes": 3,
            "sent": len(s.sent),
            "acked": len(acked_ids),
            "delivered_live_or_offline": len(delivered & acked_ids),
            "kept_in_archive_or_offline_only": undelivered_but_kept,
            "lost": len(lost),
            "lost_ids": lost[:20],
            "duplicates": dup,
            "failover_samples": len(s.failover),
            "failover_p50_s": percentile(s.failover, 50),
            "failover_p99_s": percentile(s.failover, 99),
            "failover_max_s": round(max(s.failover), 3) if s.failover else None,
            "drain_moved_samples": len(s.moved),
            "drain_moved_p50_s": percentile(s.moved, 50),
            "drain_moved_p99_s": percentile(s.moved, 99),
            **self.events,
            "errors": s.errors,
            "workdir": str(self.root),
        }

    def cleanup(self) -> None:
        self.stopping = True
        for c in getattr(self, "clients", []):
            try:
                c.x.abort()
            except Exception:  # noqa: BLE001 — best effort at exit
                pass
        for n in self.nodes:
            n.stop()
        self.stop_nats()
        if self.pg_env:
            subprocess.run([str(REPO / "scripts" / "pg"), "stop"], env=dict(os.environ, **self.pg_env),
                           capture_output=True)
        elif hasattr(self, "schema"):
            subprocess.run(["psql", "-X", "-q", self.pg_url, "-c", f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"],
                           capture_output=True, stdin=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=30, help="chatting clients, spread over the 3 nodes")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between two messages of one client")
    p.add_argument("--rounds", type=int, default=3, help="kill -9 rounds (node 1, 2, 3, 1, …)")
    p.add_argument("--phase", type=float, default=3.0, help="seconds of chat between steps")
    p.add_argument("--nats-down", type=float, default=6.0, help="seconds nats-server stays stopped")
    p.add_argument("--seed", type=int, default=8, help="seed of the failover node choice")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) even on success")
    a = p.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    d = Drill(a)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        summary = loop.run_until_complete(d.run())
    finally:
        d.cleanup()
    print(json.dumps(summary, indent=2))
    ok = summary["lost"] == 0 and not summary["errors"]
    if ok and not a.keep:
        shutil.rmtree(d.root, ignore_errors=True)
    log("PASS: every acknowledged message was delivered or kept" if ok else f"FAIL (logs in {d.root})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
