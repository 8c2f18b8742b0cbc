#!/usr/bin/env python3
"""Idle authenticated connections held across a kabar cluster, and how long they take to come back after a
full restart (docs/BENCHMARKS.md, "Cluster: idle connections").

K nodes (plaintext loopback, one PostgreSQL schema, one nats-server), A accounts, G generator processes
(`kabar-load idle --ports …`, each logging in every account once with its own resource, so A × G
sessions, A × G / K per node; each process needs A file descriptors, each node A × G / K: keep both under
the 20,000 open-file limit). Memory per connection = the growth of the nodes' summed RSS while held,
divided by the sessions (it includes every node's copy of the cluster-wide session directory). Then all
nodes are killed (-9) and started again, and the generators log everything in again at once: the
"reconnect" time is the slowest generator's login phase, measured from the moment every node listens.

  tests/.venv/bin/python bench/cluster_idle.py [--nodes 3] [--accounts 10000] [--generators 3] [--hold 15]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_bench import LOAD, bench_config, provision  # noqa: E402
from cluster_drill import REPO, Node, free_ports, log  # noqa: E402


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def log_counts(nodes, offsets: list[int]) -> dict:
    """What the nodes logged since `offsets`: failed logins and why, store pool timeouts, directory resyncs."""
    patterns = {"authentication_failed": "authentication failed",
                "credential_lookup_failed": "credential lookup failed",
                "store_pool_timeouts": "Timeout occurred while waiting",
                "snapshot_requests": "asking for its snapshot"}
    counts = {k: 0 for k in patterns}
    for n, off in zip(nodes, offsets):
        try:
            with open(n.log_path, "rb") as f:
                f.seek(off)
                for raw in f:
                    line = raw.decode("utf-8", "replace")
                    for k, pat in patterns.items():
                        if pat in line:
                            counts[k] += 1
        except OSError:
            continue
    return counts


def log_offsets(nodes) -> list[int]:
    return [n.log_path.stat().st_size if n.log_path.exists() else 0 for n in nodes]


def generators(nodes, a, label: str) -> tuple[list[dict], int]:
    ports = ",".join(str(n.c2s) for n in nodes)
    procs = [subprocess.Popen([str(LOAD), "idle", "--ports", ports, "--users", str(a.accounts), "--resource", f"g{g}",
                               "--prefix", "cb", "--password", "cb-bench-pass", "--domain", "localhost",
                               "--concurrency", "200", "--duration", str(a.hold), "--max-seconds", "900",
                               "--op-timeout", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for g in range(a.generators)]
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], sum(rss_kb(n.proc.pid) for n in nodes))
            time.sleep(0.5)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1200)
        try:
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            out.append({"error": (stdout + stderr)[-400:]})
    stop.set()
    t.join()
    for r in out:
        r["phase"] = label
    return out, peak[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--accounts", type=int, default=10000)
    p.add_argument("--generators", type=int, default=3)
    p.add_argument("--hold", type=float, default=15)
    p.add_argument("--heartbeat", type=int, default=1, help="[cluster] heartbeat_secs (lease_secs = 4 x this)")
    p.add_argument("--pool", type=int, default=8, help="[storage] pool_size per node")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kabar-cidle."))
    url = os.environ.get("KABAR_TEST_POSTGRES_URL")
    if not url:
        raise SystemExit("set KABAR_TEST_POSTGRES_URL (eval \"$(scripts/pg start)\")")
    schema = "cidle_" + uuid.uuid4().hex[:10]
    nats_port = free_ports(1)[0]
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    storage = {"backend": "postgres", "url": url, "schema": schema, "pool_size": a.pool}
    nodes = [Node(root, f"n{i + 1}", storage, f"nats://127.0.0.1:{nats_port}") for i in range(a.nodes)]
    summary: dict = {"nodes": a.nodes, "accounts": a.accounts, "generators": a.generators,
                     "sessions": a.accounts * a.generators, "heartbeat_secs": a.heartbeat, "pool_size": a.pool,
                     "loadavg_start": os.getloadavg()}
    try:
        for n in nodes:
            bench_config(n)
            text = re.sub(r"heartbeat_secs = 1\b", f"heartbeat_secs = {a.heartbeat}", n.config.read_text())
            text = re.sub(r"lease_secs = 4\b", f"lease_secs = {4 * a.heartbeat}", text)
            n.config.write_text(text + "\n[drain]\non_sigterm = false\n")
            n.start()
        t = time.monotonic()
        provision(nodes[0], a.accounts)
        summary["provision_s"] = round(time.monotonic() - t, 1)
        log(f"provisioned {a.accounts} accounts in {summary['provision_s']} s")
        base = sum(rss_kb(n.proc.pid) for n in nodes)
        offsets = log_offsets(nodes)
        held, peak = generators(nodes, a, "first login")
        connected = sum(r.get("connected", 0) for r in held)
        summary["first"] = {
            "connected": connected, "alive_after_hold": sum(r.get("alive_after_hold", 0) for r in held),
            "login_s_slowest": max((r.get("connect_s", 0) for r in held), default=None),
            "errors": [r.get("errors") or r.get("error") for r in held if r.get("errors") or r.get("error")],
            "nodes_rss_mb_before": round(base / 1024, 1), "nodes_rss_mb_peak": round(peak / 1024, 1),
            "rss_kb_per_session": round((peak - base) / max(1, connected), 2),
            "nodes_rss_mb_each_after": [round(rss_kb(n.proc.pid) / 1024, 1) for n in nodes],
            "node_logs": log_counts(nodes, offsets),
            "loadavg_after": os.getloadavg(),
        }
        log(json.dumps(summary["first"]))
        for n in nodes:
            n.kill9()
        t0 = time.monotonic()
        for n in nodes:
            n.start()
        summary["restart_listen_s"] = round(time.monotonic() - t0, 2)
        offsets = log_offsets(nodes)
        again, _ = generators(nodes, a, "after full restart")
        summary["after_restart"] = {
            "connected": sum(r.get("connected", 0) for r in again),
            "login_s_slowest": max((r.get("connect_s", 0) for r in again), default=None),
            "errors": [r.get("errors") or r.get("error") for r in again if r.get("errors") or r.get("error")],
            "node_logs": log_counts(nodes, offsets),
            "loadavg_after": os.getloadavg(),
        }
        summary["commands"] = f"kabar-load idle --ports <{a.nodes} ports> --users {a.accounts} --resource gN " \
                              f"--concurrency 200 --duration {a.hold} (x{a.generators})"
    finally:
        for n in nodes:
            n.kill9()
        nats.terminate()
        subprocess.run(["psql", "-X", "-q", url, "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                       capture_output=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
