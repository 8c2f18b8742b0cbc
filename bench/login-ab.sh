#!/usr/bin/env bash
# A/B of two kabar binaries on the login storm, alternating runs on the same machine, each storm on a
# freshly started server (as bench/run.sh does), with bench/run.sh's kabar config.
#
#   bench/login-ab.sh BEFORE_BINARY AFTER_BINARY [PAIRS]      # e.g. a copy of the old target/release/kabar
#
# Env (defaults): K=500 (logins per storm) ACCOUNTS=2000 LOGIN_CONC=200 SERVER_CPU=0 GEN_CPU=1
#   LOAD=target/release/kabar-load  OUT=$TMPDIR/kabar-bench/login-ab-<time>
# One JSON line per storm: logins/s, p99, CPU % (server / generator / others) and the server's CPU per
# login in ms, from /proc/PID/stat: `login_ms_cpu` inside the storm (kabar-load's own window),
# `cycle_ms_cpu` from just before the storm to after kabar-load closed every session (includes the close).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BEFORE=${1:?before binary}; AFTER=${2:?after binary}; PAIRS=${3:-4}
K=${K:-500}; ACCOUNTS=${ACCOUNTS:-2000}; CONC=${LOGIN_CONC:-200}
SERVER_CPU=${SERVER_CPU-0}; GEN_CPU=${GEN_CPU-1}
LOAD=${LOAD:-$ROOT/target/release/kabar-load}
OUT=${OUT:-${TMPDIR:-/tmp}/kabar-bench/login-ab-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# The server config is bench/run.sh's own (its kabar_config function), so both measure the same setup.
eval "$(sed -n '/^kabar_config() {/,/^}/p' "$ROOT/bench/run.sh")"
PID=""
start() { # binary dir port
  taskset -c "$SERVER_CPU" "$1" serve --config "$2/kabar.toml" >>"$2/kabar.log" 2>&1 & PID=$!
  for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return 0; sleep 0.2; done
  log "kabar did not open $3"; return 1
}
stop() {
  [ -n "$PID" ] || return 0
  kill "$PID" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && kill -9 "$PID"
  wait "$PID" 2>/dev/null; PID=""
}
trap stop EXIT
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
gen() { taskset -c "$GEN_CPU" "$LOAD" "$@" --domain bench.local --prefix u --password benchpass --server-name kabar --max-seconds 900; }

# each side gets its own data directory, provisioned once (and its own generator SCRAM key cache)
i=0
for side in before after; do
  bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
  port=$((5441 + i)); i=$((i + 1)); dir=$OUT/$side
  KD=$dir DOMAIN=bench.local KABAR_PORT=$port kabar_config
  export BENCH_RUN=$dir
  start "$bin" "$dir" "$port" || exit 1
  log "$side: provisioning $ACCOUNTS accounts, warming the SCRAM cache"
  gen register --port "$port" --users "$ACCOUNTS" --concurrency 8 | jq -c '{registrations_per_s, errors}' >&2
  gen login --port "$port" --users "$ACCOUNTS" --concurrency "$CONC" | jq -c '{warmup_ok: .ok, errors}' >&2
  stop
done

for p in $(seq 1 "$PAIRS"); do
  i=0
  for side in before after; do
    bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
    port=$((5441 + i)); i=$((i + 1)); dir=$OUT/$side
    export BENCH_RUN=$dir
    start "$bin" "$dir" "$port" || exit 1
    sleep 1
    t0=$(ticks "$PID")
    line=$(gen login --port "$port" --users "$K" --concurrency "$CONC" --server-pid "$PID")
    t1=$(ticks "$PID")
    echo "$line" | jq -c --arg side "$side" --argjson pair "$p" --argjson tk $((t1 - t0)) --argjson hz "$(getconf CLK_TCK)" \
      '{side: $side, pair: $pair, ok, errors, logins_per_s, login_p99_ms, server_cpu_pct, gen_cpu_pct, other_cpu_pct, seconds,
        login_ms_cpu: ((.server_cpu_pct / 100 * .seconds * 1000 / .ok * 1000 | round) / 1000),
        cycle_ms_cpu: (($tk / $hz * 1000 / .ok * 1000 | round) / 1000)}' | tee -a "$OUT/ab.jsonl"
    stop
  done
done
log "results: $OUT/ab.jsonl"
jq -s -c 'group_by(.side)[] | {side: .[0].side, storms: length, logins_per_s: (map(.logins_per_s) | add / length | round),
  login_ms_cpu: (map(.login_ms_cpu) | add / length * 1000 | round / 1000), cycle_ms_cpu: (map(.cycle_ms_cpu) | add / length * 1000 | round / 1000),
  other_cpu_pct: (map(.other_cpu_pct) | add / length | round)}' "$OUT/ab.jsonl"
