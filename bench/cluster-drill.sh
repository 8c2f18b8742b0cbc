#!/usr/bin/env bash
# Failure drill for a kabar cluster (docs/CLUSTER.md, "Failure drill"): PostgreSQL + nats-server + three
# kabar nodes on loopback, slixmpp clients chatting across nodes; kill -9 of each node in turn (failover
# p50/p99), restart, a NATS outage, a `kabar drain`; then checks in PostgreSQL that every message the
# cluster acknowledged was delivered, archived or stored offline. Prints a JSON summary; exit 1 on loss.
#
#   bench/cluster-drill.sh [--clients 30] [--interval 0.2] [--rounds 3] [--nats-down 6] [--keep]
#
# Needs: the release binary (built if missing), nats-server and PostgreSQL (as root both are installed
# from Debian's packages by scripts/nats and scripts/pg), and the test virtualenv for slixmpp
# (tests/.venv, made by scripts/test on first use). Uses $KABAR_TEST_POSTGRES_URL when set (a fresh
# schema, dropped afterwards), otherwise starts and stops a private PostgreSQL of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/kabar ] || cargo build --release -p kabar
command -v nats-server >/dev/null || { eval "$(scripts/nats start)"; scripts/nats stop; }
if [ ! -x tests/.venv/bin/python ]; then
  python3 -m venv tests/.venv && tests/.venv/bin/pip install -q -r tests/requirements.txt
fi
exec tests/.venv/bin/python bench/cluster_drill.py "$@"
