#!/usr/bin/env bash
# Side-by-side XMPP load benchmark: kabar against ejabberd and Prosody on this machine, same load
# from kabar-load (crates/kabar-bench). Prints one table of kabar ÷ best peer at the end.
#
#   bench/run.sh                   # full default sizes (several minutes per server)
#   QUICK=1 bench/run.sh           # small N, ~10-20 s per scenario
#   SERVERS=kabar bench/run.sh     # kabar only (no apt, no peers)
#
# Env (defaults): SERVERS="kabar ejabberd prosody"
#   SCENARIOS="login idle chat chat-nostore chatrate chatrate-nostore signup reconnect reconnect-fast" (reconnect-fast: kabar only,
#   the peer versions have no SASL2/FAST)
#   K=2000 (login storm)  C=10000 (idle conns)  P=100 (chat pairs)  T=20 (chat seconds)  W=10 (window)
#   CHAT_RATE=10 (msg/s per sender, chatrate)  SIGNUP_P=50 SIGNUP_RATE=5 SIGNUP_BASE=10 SIGNUP_T=20
#   REG_WORKERS=20  LOGIN_CONC=200  RN=2000 (reconnect sessions)  IDLE_T=10
#   SERVER_CPU=0 GEN_CPU=1 (taskset; empty = no pinning)  KABAR_PORT=5422
#   QUIET_WAIT=60 (before each scenario wait up to this many seconds for the machine to be idle: other
#   processes below QUIET_PCT=15 % of one core over 2 s; the rows' other_cpu_pct shows what happened)
#   PEERS=/work/shared/bench/peers  BENCH_RUN=$TMPDIR/kabar-bench/run-<time>  STEP_TIMEOUT=900
#   MUC_N=5000 (room readers; QUICK 500) MUC_W=20 (burst of MUC_W × 10 posts) for `muc` (kabar's channel
#   preset; peers ignore or refuse the field and run a plain room) and `muc-room` (a plain open room on all)
#   chatsweep (not in the default list): P pairs chat at a fixed total rate in steps of SWEEP_T=10 s
#   (QUICK 5) + 1 s warm-up, from SWEEP_START=250 msg/s doubling while a step holds (p99 < SWEEP_P99=50
#   ms, nothing lost, ≥ 95 % of the target delivered), then bisecting to within SWEEP_PREC=0.1; the
#   row's max_rate_held is the answer (kabar-load chatsweep, crates/kabar-bench/src/sweep.rs)
#   PEER_MAM=1: the peers archive every 1:1 message too, like kabar (ejabberd mod_mam `default: always`,
#   Prosody mod_mam with `default_archive_policy = true`), for a like-for-like `chat` comparison
#   SKIP_BUILD=1: no cargo build, run the binaries already in target/release (a quiet window is short)
# Every step runs under `timeout`; kabar-load also has its own hard cap (--max-seconds).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS=${PEERS:-/work/shared/bench/peers}
SERVERS=${SERVERS:-kabar ejabberd prosody}
SCENARIOS=${SCENARIOS:-login idle chat chat-nostore chatrate chatrate-nostore signup reconnect reconnect-fast}
if [ -n "${QUICK:-}" ]; then
  K=${K:-500}; C=${C:-2000}; P=${P:-50}; T=${T:-10}; SIGNUP_P=${SIGNUP_P:-20}; SIGNUP_BASE=${SIGNUP_BASE:-5}
  SIGNUP_T=${SIGNUP_T:-10}; RN=${RN:-500}; IDLE_T=${IDLE_T:-5}; MUC_N=${MUC_N:-500}
fi
MUC_N=${MUC_N:-5000}; MUC_W=${MUC_W:-20}
[ -n "${QUICK:-}" ] && SWEEP_T=${SWEEP_T:-5}
SWEEP_T=${SWEEP_T:-10}; SWEEP_START=${SWEEP_START:-250}; SWEEP_P99=${SWEEP_P99:-50}; SWEEP_PREC=${SWEEP_PREC:-0.1}
K=${K:-2000}; C=${C:-10000}; P=${P:-100}; T=${T:-20}; W=${W:-10}; CHAT_RATE=${CHAT_RATE:-10}
SIGNUP_P=${SIGNUP_P:-50}; SIGNUP_RATE=${SIGNUP_RATE:-5}; SIGNUP_BASE=${SIGNUP_BASE:-10}; SIGNUP_T=${SIGNUP_T:-20}
REG_WORKERS=${REG_WORKERS:-20}; LOGIN_CONC=${LOGIN_CONC:-200}; RN=${RN:-2000}; IDLE_T=${IDLE_T:-10}
SERVER_CPU=${SERVER_CPU-0}; GEN_CPU=${GEN_CPU-1}; KABAR_PORT=${KABAR_PORT:-5422}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
DOMAIN=bench.local; PREFIX=u; PASSWORD=benchpass
export BENCH_RUN=${BENCH_RUN:-${TMPDIR:-/tmp}/kabar-bench/run-$(date +%Y%m%d-%H%M%S)}
export BENCH_DOMAIN=$DOMAIN BENCH_SERVER_CPU=$SERVER_CPU
RESULTS=$BENCH_RUN/results; mkdir -p "$RESULTS"
CMDS=$RESULTS/commands.txt
LOAD=$ROOT/target/release/kabar-load; KABAR=$ROOT/target/release/kabar
GEN_PIN=(); [ -n "$GEN_CPU" ] && GEN_PIN=(taskset -c "$GEN_CPU")
SRV_PIN=(); [ -n "$SERVER_CPU" ] && SRV_PIN=(taskset -c "$SERVER_CPU")
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
QUIET_WAIT=${QUIET_WAIT:-60}; QUIET_PCT=${QUIET_PCT:-15}
busy_ticks() { # machine busy ticks minus those of process $1 (the server under test)
  local m p=0
  m=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat)
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && p=$(sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}')
  echo $((m - p))
}
wait_quiet() { # SERVER_PID; bounded: at most QUIET_WAIT seconds
  local t=0 a b pct
  while [ "$t" -lt "$QUIET_WAIT" ]; do
    a=$(busy_ticks "${1:-}"); sleep 2; b=$(busy_ticks "${1:-}"); t=$((t+2))
    pct=$(( (b - a) * 100 / (2 * $(getconf CLK_TCK)) ))
    [ "$pct" -lt "$QUIET_PCT" ] && return 0
  done
  log "machine still busy (${pct:-?}% of a core used by others); running anyway"
}

need=$K; for v in $C $((2*P)) $((2*SIGNUP_P)) $RN $((MUC_N + 1)); do [ "$v" -gt "$need" ] && need=$v; done

# ---------------------------------------------------------------- build
if [ -n "${SKIP_BUILD:-}" ]; then # SKIP_BUILD=1: use the binaries already in target/release
  log "build skipped: $(ls -l --time-style=+%H:%M "$KABAR" "$LOAD" | awk '{print $6, $7}' | tr '\n' ' ')"
else
  log "building kabar and kabar-load (release)"
  (cd "$ROOT" && timeout 3600 cargo build --release -p kabar -p kabar-bench) || { log "build failed"; exit 1; }
fi

# ---------------------------------------------------------------- kabar control
KD=$BENCH_RUN/kabar; KPID=""
kabar_config() {
  mkdir -p "$KD/data"
  cat > "$KD/kabar.toml" <<TOML
# Generated by bench/run.sh: plaintext loopback benchmarking only.
domain = "$DOMAIN"
data_dir = "$KD/data"
[c2s]
listen = ["127.0.0.1:$KABAR_PORT"]
direct_tls_listen = []
require_encryption = false
[http]
listen = []
[limits]
stanzas_per_second = 1000000
stanza_burst = 1000000
session_queue = 100000
auth_failures_per_ip_per_minute = 1000000
auth_failures_per_account_per_minute = 1000000
[registration]
enabled = true
per_ip_per_hour = 100000000
[log]
level = "warn"
TOML
}
wait_port() { # port seconds
  local i=0
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    sleep 0.2; i=$((i+1)); [ $i -ge $(( $2 * 5 )) ] && return 1
  done
  return 0
}
kabar_stop() {
  if [ -n "$KPID" ] && kill -0 "$KPID" 2>/dev/null; then
    kill "$KPID"; for _ in $(seq 1 50); do kill -0 "$KPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$KPID" 2>/dev/null && kill -9 "$KPID"
  fi
  KPID=""
}
kabar_start() {
  kabar_stop
  [ -f "$KD/kabar.toml" ] || kabar_config
  "${SRV_PIN[@]}" "$KABAR" serve --config "$KD/kabar.toml" >>"$KD/kabar.log" 2>&1 &
  KPID=$!
  wait_port "$KABAR_PORT" 30 || { log "kabar did not open $KABAR_PORT"; tail -20 "$KD/kabar.log" >&2; return 1; }
}
cleanup() {
  kabar_stop
  for s in $SERVERS; do
    case $s in ejabberd|prosody) timeout 60 bash "$PEERS/$s.sh" stop >/dev/null 2>&1 || true ;; esac
  done
}
trap cleanup EXIT

# ---------------------------------------------------------------- per-server hooks
# srv_start NAME [--ibr]; srv_pid NAME; srv_port NAME; srv_provision NAME COUNT
srv_port() { case $1 in kabar) echo "$KABAR_PORT" ;; ejabberd) echo "${EJ_PORT:-5222}" ;; prosody) echo "${PR_PORT:-5322}" ;; esac; }
srv_start() {
  case $1 in
    kabar) kabar_start ;;
    *) if [ -n "${PEER_MAM:-}" ]; then
         # write the peer's config, add archiving, then start without --ibr (which would rewrite it)
         timeout 60 bash "$PEERS/$1.sh" stop >/dev/null 2>&1 || true
         timeout 300 bash "$PEERS/$1.sh" install >/dev/null
         timeout 60 bash "$PEERS/$1.sh" config ${2:-} >/dev/null && peer_mam "$1" &&
           timeout 300 bash "$PEERS/$1.sh" start >/dev/null
       else
         timeout 300 bash "$PEERS/$1.sh" restart ${2:-} >/dev/null
       fi ;;
  esac
}
peer_mam() { # turn on XEP-0313 archiving of every 1:1 message in the peer's generated config
  case $1 in
    ejabberd) sed -i 's/^modules:$/modules:\n  mod_mam:\n    default: always/' "$BENCH_RUN/ejabberd/etc/ejabberd.yml" ;;
    prosody) sed -i -e 's/"posix";/"posix"; "mam";/' \
               -e 's/^VirtualHost /default_archive_policy = true\narchive_expires_after = "1w"\nVirtualHost /' \
               "$BENCH_RUN/prosody/prosody.cfg.lua" ;;
  esac
}
srv_pid() { case $1 in kabar) echo "$KPID" ;; *) bash "$PEERS/$1.sh" pid 2>/dev/null ;; esac; }
srv_provision() {
  case $1 in
    # kabar: in-band registration from kabar-load (same SCRAM derivation as `kabar user add`, one
    # PBKDF2 per account on the server, no process per account)
    kabar) timeout "$STEP_TIMEOUT" "$LOAD" register --port "$KABAR_PORT" --domain "$DOMAIN" --prefix "$PREFIX" \
             --password "$PASSWORD" --users "$2" --concurrency 8 --server-name kabar ;;
    *) timeout "$STEP_TIMEOUT" bash "$PEERS/$1.sh" provision "$PREFIX" 1 "$2" "$PASSWORD" ;;
  esac
}

run_load() { # server label args...
  local srv=$1 label=$2; shift 2
  local pid; pid=$(srv_pid "$srv")
  local cmd=("${GEN_PIN[@]}" "$LOAD" "$@" --port "$(srv_port "$srv")" --domain "$DOMAIN" --prefix "$PREFIX"
             --password "$PASSWORD" --server-name "$srv" ${pid:+--server-pid "$pid"} --max-seconds "$STEP_TIMEOUT")
  echo "# [$srv $label] ${cmd[*]}" | tee -a "$CMDS" >&2
  local line
  line=$(timeout $((STEP_TIMEOUT + 30)) "${cmd[@]}") || true
  [ -n "$line" ] || line="{\"scenario\": \"$label\", \"server\": \"$srv\", \"error\": \"generator produced no result\"}"
  # tag the row with the suite's scenario label (chat and chatrate are both scenario=chat)
  echo "$line" | jq -c --arg l "$label" '. + {label: $l}' >> "$RESULTS/$srv.jsonl"
  echo "$line" | jq -c '{scenario, server, error, logins_per_s, delivered_per_s, p99_ms, deliveries_per_s, max_rate_held, rss_kb_per_conn, registrations_per_s, all_back_s, gen_cpu_pct, server_cpu_pct} | with_entries(select(.value != null))' >&2
}

for srv in $SERVERS; do
  log "=== $srv ==="
  if ! srv_start "$srv" --ibr; then log "$srv failed to start; skipped"; continue; fi
  log "provisioning $need accounts on $srv"
  srv_provision "$srv" "$need" | tail -1 >&2 || log "provisioning $srv failed"
  # Fill the generator's SCRAM key cache (unmeasured), so login scenarios measure the server.
  log "warming the SCRAM cache"
  timeout "$STEP_TIMEOUT" "${GEN_PIN[@]}" "$LOAD" login --users "$need" --concurrency "$LOGIN_CONC" --port "$(srv_port "$srv")" \
    --domain "$DOMAIN" --prefix "$PREFIX" --password "$PASSWORD" --server-name "$srv" --max-seconds "$STEP_TIMEOUT" \
    | jq -c '{warmup_logins_ok: .ok, errors}' >&2
  for s in $SCENARIOS; do
    [ "$s" = reconnect-fast ] && [ "$srv" != kabar ] && continue
    ibr=""; [ "$s" = signup ] && ibr=--ibr
    srv_start "$srv" $ibr || { log "$srv restart failed"; continue; }
    sleep 1
    wait_quiet "$(srv_pid "$srv")"
    case $s in
      login)    run_load "$srv" login login --users "$K" --concurrency "$LOGIN_CONC" ;;
      idle)     run_load "$srv" idle idle --users "$C" --concurrency "$LOGIN_CONC" --duration "$IDLE_T" ;;
      chat)     run_load "$srv" chat chat --pairs "$P" --duration "$T" --rate 0 --window "$W" ;;
      chat-nostore) run_load "$srv" chat-nostore chat --pairs "$P" --duration "$T" --rate 0 --window "$W" --no-store ;;
      chatrate) run_load "$srv" chatrate chat --pairs "$P" --duration "$T" --rate "$CHAT_RATE" ;;
      chatrate-nostore) run_load "$srv" chatrate-nostore chat --pairs "$P" --duration "$T" --rate "$CHAT_RATE" --no-store ;;
      signup)   run_load "$srv" signup signup --pairs "$SIGNUP_P" --rate "$SIGNUP_RATE" --baseline "$SIGNUP_BASE" \
                  --duration "$SIGNUP_T" --concurrency "$REG_WORKERS" ;;
      reconnect) run_load "$srv" reconnect reconnect --users "$RN" --concurrency "$LOGIN_CONC" ;;
      reconnect-fast) run_load "$srv" reconnect-fast reconnect --users "$RN" --concurrency "$LOGIN_CONC" --tls --fast ;;
      muc)      run_load "$srv" muc muc --users "$MUC_N" --concurrency "$LOGIN_CONC" --rate 0 --window "$MUC_W" ;;
      muc-room) run_load "$srv" muc-room muc --users "$MUC_N" --concurrency "$LOGIN_CONC" --rate 0 --window "$MUC_W" \
                  --muc-preset room ;;
      chatsweep) run_load "$srv" chatsweep chatsweep --pairs "$P" --duration "$SWEEP_T" --warmup 1 --drain 3 \
                  --sweep-start "$SWEEP_START" --sweep-precision "$SWEEP_PREC" --p99-limit-ms "$SWEEP_P99" ;;
      *) log "unknown scenario $s" ;;
    esac
  done
  case $srv in kabar) kabar_stop ;; *) timeout 60 bash "$PEERS/$srv.sh" stop >/dev/null 2>&1 || true ;; esac
done

log "results in $RESULTS"
files=(); for s in $SERVERS; do [ -s "$RESULTS/$s.jsonl" ] && files+=("$RESULTS/$s.jsonl"); done
python3 "$ROOT/bench/ratios.py" "${files[@]}" | tee "$RESULTS/table.md"
