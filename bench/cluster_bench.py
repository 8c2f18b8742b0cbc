#!/usr/bin/env python3
"""Cluster throughput with 1, 2 and 3 kabar nodes on this machine (docs/BENCHMARKS.md, "Cluster").

Starts PostgreSQL (scripts/pg, unless $KABAR_TEST_POSTGRES_URL is set) and nats-server, provisions the
accounts once (XEP-0077 through kabar-load), then for each node count starts that many nodes on the same
schema and runs `kabar-load chat --ports …` (users spread over the nodes: with k nodes about (k-1)/k of
the pairs talk across nodes), flat out and at a fixed rate. CPU of the nodes, PostgreSQL, nats-server
and of everything else on the machine is read from /proc around each run. One JSON line per run.

  tests/.venv/bin/python bench/cluster_bench.py [--nodes 1,2,3] [--pairs 100] [--duration 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_drill import KABAR, REPO, Node, free_ports, log  # noqa: E402

LOAD = Path(os.environ.get("KABAR_LOAD_BIN", REPO / "target" / "release" / "kabar-load"))
DOMAIN = "localhost"
CLK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        return 0


def pids_named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def machine_ticks() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def bench_config(node: Node) -> None:
    """Plaintext loopback like bench/run.sh (limits lifted, registration open)."""
    text = node.config.read_text()
    text = text.replace('[c2s]\n', '[c2s]\nrequire_encryption = false\n')
    text = text.replace('[limits]\n', '[limits]\nstanzas_per_second = 1000000\nstanza_burst = 1000000\n'
                        'session_queue = 100000\nauth_failures_per_account_per_minute = 1000000\n')
    text += '\n[registration]\nenabled = true\nper_ip_per_hour = 100000000\n'
    # Throughput, not overload behaviour: a backlog from the flat-out run must not refuse the next logins.
    text += '\n[admission]\nenabled = false\n'
    node.config.write_text(text)


def provision(node: Node, users: int) -> None:
    """Accounts cb1… through the admin API (one SCRAM derivation each on the server, no process each)."""
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=str(node.dir / "data" / "tls" / "ca.pem"))
    token = (node.dir / "data" / "admin-token").read_text().strip()
    conn = http.client.HTTPSConnection("localhost", node.http, context=ctx, timeout=30)
    for i in range(1, users + 1):
        body = json.dumps({"jid": f"cb{i}@{DOMAIN}", "password": "cb-bench-pass"})
        conn.request("POST", "/admin/api/v1/users", body=body,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status not in (201, 409):
            raise RuntimeError(f"creating cb{i}: HTTP {r.status}")
    conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--rate", type=float, default=2000, help="total msg/s of the fixed-rate run (0: skip it)")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--no-store", action="store_true", help="XEP-0334 <no-store/> on every message: routing without archive writes")
    p.add_argument("--out", default="")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kabar-cbench."))
    pg_env = None
    url = os.environ.get("KABAR_TEST_POSTGRES_URL")
    if not url:
        out = subprocess.run([str(REPO / "scripts" / "pg"), "start"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, KABAR_PG_DIR=str(root / "pg")))
        pg_env = dict(line[7:].split("=", 1) for line in out.stdout.splitlines() if line.startswith("export "))
        pg_env = {k: v.strip("'\"") for k, v in pg_env.items()}
        url = pg_env["KABAR_TEST_POSTGRES_URL"]
    schema = "cbench_" + uuid.uuid4().hex[:10]
    nats_port = free_ports(1)[0]
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    storage = {"backend": "postgres", "url": url, "schema": schema, "pool_size": 8}
    users = 2 * a.pairs
    provisioned = False
    results = []
    started: list[Node] = []
    try:
        for k in [int(x) for x in a.nodes.split(",")]:
            nodes = [Node(root / f"k{k}", f"n{i + 1}", storage, f"nats://127.0.0.1:{nats_port}") for i in range(k)]
            for n in nodes:
                bench_config(n)
                n.start()
                started.append(n)
            for n in nodes:
                for o in nodes:
                    if o is not n:
                        n.wait_log(f'cluster node joined node="{o.name}"', 0, 30)
            common = ["--host", "127.0.0.1", "--domain", DOMAIN, "--prefix", "cb", "--password", "cb-bench-pass",
                      "--max-seconds", "300"]
            if not provisioned:
                provision(nodes[0], users)
                provisioned = True
            ports = ",".join(str(n.c2s) for n in nodes)
            hint = ["--no-store"] if a.no_store else []
            runs = [("flat-out", ["--rate", "0", "--window", str(a.window), *hint])]
            if a.rate > 0:
                runs.append((f"rate {a.rate:g}/s", ["--total-rate", str(a.rate), *hint]))
            for label, extra in runs:
                time.sleep(5)  # let the previous run's archive backlog settle
                node_pids = [n.proc.pid for n in nodes]
                pg_pids = pids_named("postgres")  # the backends that exist before and after
                nats_pids = [nats.pid]
                before = {pid: cpu_ticks(pid) for pid in node_pids + pg_pids + nats_pids}
                busy0, total0 = machine_ticks()
                t0 = time.monotonic()
                out = subprocess.run([str(LOAD), "chat", "--ports", ports, "--pairs", str(a.pairs), "--duration",
                                      str(a.duration), "--concurrency", "50", *extra, *common],
                                     capture_output=True, text=True)
                wall = time.monotonic() - t0
                busy1, total1 = machine_ticks()
                pct = {pid: max(0.0, 100 * (cpu_ticks(pid) - before[pid]) / CLK / wall) for pid in before}
                try:
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    res = {"error": out.stdout[-500:] + out.stderr[-500:]}
                machine_pct = 100 * (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count()
                row = {
                    "nodes": k, "run": label, "pairs": a.pairs,
                    "delivered_per_s": res.get("delivered_per_s"), "p50_ms": res.get("p50_ms"),
                    "p99_ms": res.get("p99_ms"), "sent": res.get("sent"), "lost": res.get("lost"),
                    "error": res.get("error"), "errors": res.get("errors") or res.get("session_errors"),
                    "nodes_cpu_pct": round(sum(pct[x] for x in node_pids), 1),
                    "postgres_cpu_pct": round(sum(pct[x] for x in pg_pids), 1),
                    "nats_cpu_pct": round(sum(pct[x] for x in nats_pids), 1),
                    "machine_cpu_pct": round(machine_pct, 1),
                    "cpus": os.cpu_count(),
                    "command": f"kabar-load chat --ports {ports} --pairs {a.pairs} --duration {a.duration} "
                               f"--concurrency 50 {' '.join(extra)}",
                }
                # What the nodes, PostgreSQL, nats-server and the generator do not explain: other jobs.
                row["generator_and_other_cpu_pct"] = round(machine_pct - row["nodes_cpu_pct"]
                                                           - row["postgres_cpu_pct"] - row["nats_cpu_pct"], 1)
                results.append(row)
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
            for n in nodes:
                n.stop()
    finally:
        for n in started:
            n.kill9()
        nats.terminate()
        if pg_env:
            subprocess.run([str(REPO / "scripts" / "pg"), "stop"], env=dict(os.environ, **pg_env), capture_output=True)
        else:
            subprocess.run(["psql", "-X", "-q", url, "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                           capture_output=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["error"] is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
