#!/usr/bin/env bash
# A/B of in-band registration throughput (XEP-0077) between kabar binaries, server pinned to CPU 0
# and kabar-load to CPU 1, like bench/run.sh. Each run starts a fresh server (empty data dir) with
# bench/run.sh's kabar config and registers USERS accounts with `kabar-load register`; binaries
# alternate within each round. One JSON line per run on stdout, with the server's CPU seconds, the
# CPU used by other processes on the machine (other_cpu_pct: the machine is shared) and
# registrations per server CPU-second (the figure comparable across busy and quiet runs).
#
# SCENARIO=signup instead runs bench/run.sh's QUICK sign-up surge (`kabar-load signup`: chatting pairs,
# then registrations flat out while they chat) after registering the pairs' accounts unmeasured.
#
#   bench/register_ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Env: USERS=5000 CONC=8 LOAD=target/release/kabar-load PORT=5422 RUN_DIR=$TMPDIR/kabar-register-ab
#      SCENARIO=register|signup (signup: SIGNUP_P=20 SIGNUP_RATE=5 SIGNUP_BASE=5 SIGNUP_T=10 REG_WORKERS=20)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USERS=${USERS:-5000}; CONC=${CONC:-8}; PORT=${PORT:-5422}; ROUNDS=${3:-3}
SCENARIO=${SCENARIO:-register}; SIGNUP_P=${SIGNUP_P:-20}; SIGNUP_RATE=${SIGNUP_RATE:-5}
SIGNUP_BASE=${SIGNUP_BASE:-5}; SIGNUP_T=${SIGNUP_T:-10}; REG_WORKERS=${REG_WORKERS:-20}
LOAD=${LOAD:-$ROOT/target/release/kabar-load}
RUN_DIR=${RUN_DIR:-${TMPDIR:-/tmp}/kabar-register-ab}
TCK=$(getconf CLK_TCK)
[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }

# The server config is bench/run.sh's own (its kabar_config function), so both measure the same setup.
eval "$(sed -n '/^kabar_config() {/,/^}/p' "$ROOT/bench/run.sh")"
machine_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }

one_run() { # label binary
  local label=$1 bin=$2 dir="$RUN_DIR/$1" pid i=0
  rm -rf "$dir"
  KD=$dir DOMAIN=bench.local KABAR_PORT=$PORT kabar_config
  taskset -c 0 "$bin" serve --config "$dir/kabar.toml" >"$dir/kabar.log" 2>&1 &
  pid=$!
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    sleep 0.2; i=$((i+1)); [ $i -ge 150 ] && { echo "server did not start" >&2; kill "$pid"; return 1; }
  done
  local common=(--port "$PORT" --domain bench.local --prefix u --password benchpass --server-name kabar
                --server-pid "$pid" --max-seconds 600)
  local args=(register --users "$USERS" --concurrency "$CONC")
  if [ "$SCENARIO" = signup ]; then
    taskset -c 1 "$LOAD" register --users $((2 * SIGNUP_P)) --concurrency 8 "${common[@]}" >/dev/null 2>&1
    args=(signup --pairs "$SIGNUP_P" --rate "$SIGNUP_RATE" --baseline "$SIGNUP_BASE" --duration "$SIGNUP_T"
          --concurrency "$REG_WORKERS")
  fi
  sleep 1
  local s0 m0 t0 s1 m1 t1 gen
  s0=$(proc_ticks "$pid"); m0=$(machine_busy); t0=$(date +%s.%N)
  TIMEFORMAT='%U %S'
  { time timeout 600 taskset -c 1 "$LOAD" "${args[@]}" "${common[@]}" >"$dir/load.json" 2>"$dir/load.err"; } 2>"$dir/gen.time"
  s1=$(proc_ticks "$pid"); m1=$(machine_busy); t1=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null
  gen=$(awk '{print $1+$2}' "$dir/gen.time")
  jq -c --arg lbl "$label" --arg bin "$bin" --argjson srv "$(( s1 - s0 ))" --argjson mach "$(( m1 - m0 ))" \
    --argjson tck "$TCK" --argjson gen "$gen" --argjson dt "$(echo "$t1 - $t0" | bc)" '
    (.created // .registrations_ok) as $n |
    {"label": $lbl, "binary": $bin, scenario, created: $n, errors: (.errors // .registration_failures),
     seconds, registrations_per_s} + with_entries(select(.key | test("p99"))) + {
     server_cpu_s: ($srv / $tck), server_cpu_pct: ((1000 * $srv / $tck / $dt | round) / 10),
     other_cpu_pct: ((1000 * ([($mach / $tck) - ($srv / $tck) - $gen, 0] | max) / $dt | round) / 10),
     registrations_per_server_cpu_s: (($n / ([$srv / $tck, 0.01] | max)) | round)}' "$dir/load.json"
}

for r in $(seq 1 "$ROUNDS"); do
  one_run "old-$r" "$1"
  one_run "new-$r" "$2"
done
