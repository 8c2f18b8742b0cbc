#!/bin/bash
# One run of the report-intake benchmark (docs/BENCHMARKS.md "Outage-monitor report intake"):
# kabar pinned to CPU 0, the chat generator and the report generator on CPU 1; chat for 20 s, reports
# from 3 s to 18 s. Prints one JSON line (chat latency, reports/s, CPU of server, generators, others).
#
#   bench/report-intake.sh DIR LABEL CONFIG [kabar-report-load args, e.g. --rate 50000]
#
# DIR holds the kabar, kabar-load and kabar-report-load binaries, CONFIG and the data folder
# `data` with accounts u1..u100 (password benchpass); no report arguments: chat alone.
# Run a series from one shell after `echo -10 > /proc/self/autogroup` (root) so that other jobs on
# the machine, which sit in their own autogroups, take less of our cores; reset it to 0 afterwards.
# REPORT_GEN_SCHED=idle runs the report generator under SCHED_IDLE (`chrt -i 0`): it shares CPU 1
# with the chat generator, whose receive timestamps are the measurement, and in a deployment the
# reporters are other machines (docs/BENCHMARKS.md "Report intake (session 5)").
set -u
DIR=$1 LABEL=$2 CONF=$3
shift 3
cd "$DIR" || exit 1
if (echo > /dev/tcp/127.0.0.1/17222) 2>/dev/null || (echo > /dev/tcp/127.0.0.1/17443) 2>/dev/null; then
  echo "ports 17222/17443 are in use: a server from an earlier run is still up" >&2
  exit 1
fi
taskset -c 0 ./kabar serve --config "$CONF" --data data > "server-$LABEL.log" 2>&1 &
SPID=$!
for _ in $(seq 300); do
  (echo > /dev/tcp/127.0.0.1/17443) 2>/dev/null && (echo > /dev/tcp/127.0.0.1/17222) 2>/dev/null && break
  sleep 0.1
done
LOAD1=$(cut -d' ' -f1 /proc/loadavg)
# The chat generator is the instrument: nicer than nothing else in our group, so the report
# generator on the same core does not delay its receive timestamps.
nice -n -5 taskset -c 1 ./kabar-load chat --pairs 50 --duration 20 --rate 10 --no-store --port 17222 \
  --domain bench.local --prefix u --password benchpass --server-pid $SPID --scram-cache "" > "chat-$LABEL.json" &
CPID=$!
if [ $# -gt 0 ]; then
  sleep 3
  GEN_SCHED=()
  [ "${REPORT_GEN_SCHED:-}" = idle ] && GEN_SCHED=(chrt -i 0)
  "${GEN_SCHED[@]}" taskset -c 1 ./kabar-report-load --port 17443 --domain bench.local --ca data/tls/ca.pem --service chat \
    --connections 64 --sources 64 --pipeline 16 --duration 15 --threads 1 --server-pid $SPID "$@" > "rep-$LABEL.json"
fi
wait $CPID
kill $SPID
wait $SPID 2>/dev/null
python3 - "$LABEL" "$LOAD1" <<'PY'
import json, sys
label, load1 = sys.argv[1], sys.argv[2]
chat = json.load(open(f"chat-{label}.json"))
try:
    rep = json.load(open(f"rep-{label}.json"))
except (OSError, ValueError):
    rep = {}
print(json.dumps({
    "label": label, "load1": load1,
    "reports_per_s": rep.get("reports_per_s"), "report_p99_ms": rep.get("latency_ms_p99"),
    "report_errors": rep.get("errors"), "server_cores_during_reports": rep.get("server_cores_busy"),
    "report_gen_cores": rep.get("gen_cores_busy"),
    "chat_p50_ms": chat.get("p50_ms"), "chat_p99_ms": chat.get("p99_ms"), "chat_p999_ms": chat.get("p999_ms"),
    "lost": chat.get("lost"), "delivered_per_s": chat.get("delivered_per_s"),
    "server_cpu_pct": chat.get("server_cpu_pct"), "other_cpu_pct": chat.get("other_cpu_pct"),
}))
PY
