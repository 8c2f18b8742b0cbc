#!/usr/bin/env python3
"""Registration modes under a flood (docs/REGISTRATION.md): what proof-of-work mode costs the server.

Starts its own kabar (target/release/kabar, loopback only) in proof-of-work mode and measures, each
phase bounded in time:
  junk     plain XEP-0077 submissions without a solution (<not-allowed/>): refused attempts/s
  wrong    form submissions with a real challenge and a wrong nonce (<not-acceptable/>)
  forms    registration forms (fresh challenges) handed out/s
  pow      registrations with solved challenges (difficulty --server-difficulty, solved beforehand)
  open     the same registrations in open mode (switched through the admin API), for comparison
plus the server's CPU seconds per 1,000 requests (from /proc/<pid>/stat), the machine's other load,
and what solving costs a client here (hashlib, one core) at a few difficulties.

Usage: tests/.venv/bin/python bench/registration_modes.py [--seconds 5] [--streams 4] [--pipeline 50]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import harness  # noqa: E402

harness.transcript = lambda *a, **k: None  # the bench sends far more than a test transcript holds
from harness import NS, Server  # noqa: E402

REGISTER = NS["register"]
DATA = NS["data"]
CHALLENGE, DIFFICULTY, NONCE = "urn:kabar:pow:0#challenge", "urn:kabar:pow:0#difficulty", "urn:kabar:pow:0#nonce"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return (sum(v) - idle) / TICK, sum(v) / TICK


def zero_bits(digest: bytes) -> int:
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


def solve(challenge: str, difficulty: int) -> str:
    for i in itertools.count():
        if zero_bits(hashlib.sha256(f"{challenge}:{i}".encode()).digest()) >= difficulty:
            return str(i)
    raise AssertionError


def stream(srv):
    raw = srv.raw()
    raw.open()
    raw.starttls()
    return raw


def form_xml(fields: dict) -> str:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return f"<query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>{body}</x></query>"


def fetch_challenge(raw) -> tuple[str, int]:
    answer = raw.iq("get", f"<query xmlns='{REGISTER}'/>")
    vals = {f.get("var"): (f.find("data:value", NS).text if f.find("data:value", NS) is not None else None)
            for f in answer.findall("register:query/data:x/data:field")}
    return vals[CHALLENGE], int(vals[DIFFICULTY])


def flood(srv, seconds: float, streams: int, pipeline: int, make_payload, expect: str | None, kind="set"):
    """Each of `streams` threads pipelines `pipeline` IQs at a time for `seconds`; returns answers/s
    and the conditions seen."""
    counts, conditions, lock = [0] * streams, {}, threading.Lock()
    raws = [stream(srv) for _ in range(streams)]
    prepared = [fetch_challenge(r) if make_payload.__code__.co_argcount == 2 else None for r in raws]
    server_cpu0, (busy0, total0), self0 = cpu_of(srv.proc.pid), machine_busy(), sum(os.times()[:2])
    t0 = time.monotonic()
    deadline = t0 + seconds

    def worker(i):
        raw, n = raws[i], itertools.count()
        while time.monotonic() < deadline:
            ids = []
            for _ in range(pipeline):
                k = next(n)
                payload = make_payload(k, prepared[i]) if prepared[i] else make_payload(k)
                iq_id = f"b{i}-{k}"
                ids.append(iq_id)
                raw.send(f"<iq type='{kind}' id='{iq_id}'>{payload}</iq>")
            got = 0
            while got < len(ids):
                st = raw.recv(30)
                if st.name != "iq":
                    continue
                got += 1
                cond = st.error_condition or st.type
                with lock:
                    conditions[cond] = conditions.get(cond, 0) + 1
            counts[i] += got

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    server_cpu = cpu_of(srv.proc.pid) - server_cpu0
    busy1, total1 = machine_busy()
    own = sum(os.times()[:2]) - self0
    for r in raws:
        r.close()
    total = sum(counts)
    cores = os.cpu_count() or 1
    other = max(0.0, (busy1 - busy0) - server_cpu - own) / max(elapsed * cores, 1e-9) * 100
    if expect:
        assert set(conditions) == {expect}, conditions
    return {
        "per_s": round(total / elapsed), "requests": total, "conditions": conditions,
        "server_cpu_ms_per_1000": round(server_cpu / max(total, 1) * 1e6, 1),
        "server_cpu_pct": round(server_cpu / elapsed * 100), "other_cpu_pct": round(other),
    }


def registrations(srv, h, n: int, streams: int, difficulty: int | None):
    """n registrations over `streams` streams; with `difficulty`, challenges fetched and solved first
    (solving is not timed)."""
    raws = [stream(srv) for _ in range(streams)]
    per = n // streams
    batches = []
    for i, raw in enumerate(raws):
        items = []
        for k in range(per):
            user = f"bench{difficulty or 0}x{i}x{k}"
            if difficulty:
                c, d = fetch_challenge(raw)
                items.append(form_xml({"FORM_TYPE": REGISTER, "username": user, "password": "bench-password",
                                       CHALLENGE: c, NONCE: solve(c, d)}))
            else:
                items.append(f"<query xmlns='{REGISTER}'><username>{user}</username>"
                             f"<password>bench-password</password></query>")
        batches.append(items)
    conditions, lock = {}, threading.Lock()
    server_cpu0, t0 = cpu_of(srv.proc.pid), time.monotonic()

    def worker(i):
        raw = raws[i]
        for k, payload in enumerate(batches[i]):
            raw.send(f"<iq type='set' id='r{i}-{k}'>{payload}</iq>")
        got = 0
        while got < len(batches[i]):
            st = raw.recv(60)
            if st.name == "iq":
                got += 1
                with lock:
                    cond = st.error_condition or st.type
                    conditions[cond] = conditions.get(cond, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    server_cpu = cpu_of(srv.proc.pid) - server_cpu0
    for r in raws:
        r.close()
    return {"per_s": round(per * streams / elapsed, 1), "conditions": conditions,
            "server_cpu_ms_per_registration": round(server_cpu / max(per * streams, 1) * 1e3, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--pipeline", type=int, default=50)
    ap.add_argument("--registrations", type=int, default=200)
    ap.add_argument("--server-difficulty", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp), config={"registration": {
            "mode": "proof-of-work", "pow_difficulty": args.server_difficulty, "per_ip_per_hour": 1_000_000_000}})
        srv.start()
        try:
            out = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
            out["junk"] = flood(srv, args.seconds, args.streams, args.pipeline,
                                lambda k: f"<query xmlns='{REGISTER}'><username>junk{k}</username><password>junk-password</password></query>",
                                "not-allowed")
            out["wrong"] = flood(srv, args.seconds, args.streams, args.pipeline,
                                 lambda k, cd: form_xml({"FORM_TYPE": REGISTER, "username": f"w{k}", "password": "wrong-password",
                                                         CHALLENGE: cd[0], NONCE: f"x{k}"}),
                                 None)
            out["forms"] = flood(srv, args.seconds, args.streams, args.pipeline,
                                 lambda k: f"<query xmlns='{REGISTER}'/>", "result", kind="get")
            out["pow"] = registrations(srv, None, args.registrations, args.streams, args.server_difficulty)
            import ssl, http.client  # noqa: E401
            token = (srv.data_dir / "admin-token").read_text().strip()
            conn = http.client.HTTPSConnection("localhost", srv.http_port, context=ssl.create_default_context(cafile=str(srv.ca)))
            conn.request("PUT", "/admin/api/v1/registration/mode", body=json.dumps({"mode": "open"}),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            out["open"] = registrations(srv, None, args.registrations, args.streams, None)
            solve_cost = {}
            for d in (12, 16, 20):
                t0, n = time.monotonic(), 3
                for i in range(n):
                    solve(f"bench-challenge-{d}-{i}", d)
                solve_cost[d] = round((time.monotonic() - t0) / n, 3)
            out["client_solve_seconds_hashlib"] = solve_cost
            out["loadavg_after"] = os.getloadavg()[0]
            print(json.dumps(out, indent=2))
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
