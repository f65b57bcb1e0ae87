#!/usr/bin/env bash
# HTTP load test of Nudge (see bench/README.md). One run:
#   build release -> fresh PostgreSQL database + unique Redis prefix ->
#   bare actix-web ceiling (bench/bare) -> for each backend (Redis +
#   PostgreSQL, then embedded: in-process store + SQLite): Nudge with
#   bench/policies -> wrk runs (LinUCB and lin_ts; decide, decide+reward;
#   16 and 64 connections) -> SIGTERM (drains the log) -> decisions/rewards
#   rows vs wrk's 2xx counts -> one markdown table -> cleanup (drop the
#   database unless a check failed, delete the Redis keys of the prefix).
#
# Settings (environment):
#   DURATION=15        seconds per measured wrk run
#   CONNECTIONS="16 64"
#   THREADS=2          wrk threads
#   WORKERS=2          HTTP workers of Nudge and of the bare server
#   PIN=shared         shared: no affinity, server and wrk share both cores
#                      split:  server on CPU 0, wrk on CPU 1
#   WARMUP=3           seconds of unrecorded-in-the-table warm-up per server
#   PORT=18080 BARE_PORT=18081
#   KEEP_DB=1          keep the database even when every check passes
#   CARGO_TIMEOUT=1800 bound on the release build (seconds)
#   QUIET_WAIT=60      before each run, wait up to this many seconds for other
#                      processes (builds, tests) to use < 20% of a core
#   POLICY_LIST="bench_linucb bench_lin_ts"   policies to load (bench_guarded:
#                      LinUCB with a user and two caps on every decide)
#   MODES="decide decide_reward"
#   BENCH_USERS=100000 distinct users the bench_guarded decides name
#   BACKENDS="redis embedded"  one Nudge run per backend, same policies/modes:
#                      redis:    NUDGE_REDIS_URL + PostgreSQL decision log
#                      embedded: no Redis (in-process store) + SQLite log
#                                (sqlite://<tmp>/embedded/nudge.db), the
#                                defaults a new user starts with
#                      cluster:  a private Redis Cluster (bench/cluster.sh,
#                                CLUSTER_MASTERS=3, no replicas) + PostgreSQL
#                                (a database of its own); not in the default
# Everything targets 127.0.0.1 only. Exit status: 0 iff every check passed.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

DURATION=${DURATION:-15}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-"16 64"}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
PIN=${PIN:-shared}
WARMUP=${WARMUP:-3}
PORT=${PORT:-18080}
BARE_PORT=${BARE_PORT:-18081}
CARGO_TIMEOUT=${CARGO_TIMEOUT:-1800}
QUIET_WAIT=${QUIET_WAIT:-60}
POLICY_LIST=${POLICY_LIST:-"bench_linucb bench_lin_ts"}
MODES=${MODES:-"decide decide_reward"}
BENCH_USERS=${BENCH_USERS:-100000}
BACKENDS=${BACKENDS:-"redis embedded"}
for b in $BACKENDS; do
  case $b in
    redis | embedded | cluster) ;;
    *) echo "BACKENDS: unknown backend $b (redis, embedded, cluster)" >&2; exit 2 ;;
  esac
done
has_backend() { [[ " $BACKENDS " == *" $1 "* ]]; }
PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
REDIS_HOST=127.0.0.1
REDIS_PORT=6379

STAMP=$(date +%Y%m%d_%H%M%S)
DB=nudge_load_${STAMP}_$$
PREFIX=nudge_load_${STAMP}_$$
RUN_ID=r${STAMP//_/}p$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nudge-load.XXXXXX")
RESULTS=$WORK/results.txt      # RESULT lines of every run
INFLIGHT=$WORK/inflight.tsv    # ids sent but never answered 2xx
BARE_LOG=$WORK/bare.stderr
: >"$RESULTS"
: >"$INFLIGHT"

NUDGE_PID=""
BARE_PID=""
DB_CREATED=0
FAILED=0
INTERRUPTED=0

log() { printf '\n==> %s\n' "$*" >&2; }
# Prints the command line, then runs it.
run() {
  printf '+' >&2
  printf ' %q' "$@" >&2
  printf '\n' >&2
  "$@"
}

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"; }
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "${CUR_DB:-$DB}" "$@"; }
rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }

# Stops a process we started (SIGTERM, then SIGKILL after $2 seconds).
stop_pid() {
  local pid=$1 grace=${2:-30} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  echo "+ kill -TERM $pid" >&2
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "!! pid $pid still running after ${grace}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    return 1
  fi
  return 0
}

cleanup() {
  local status=$?
  set +e
  # An error keeps the evidence (database, temp dir); an interrupt does not.
  [ "$status" -eq 0 ] || [ "$INTERRUPTED" = 1 ] || FAILED=1
  log "cleanup"
  stop_pid "$BARE_PID" 10
  stop_pid "$NUDGE_PID" 60
  wait 2>/dev/null
  if [ "$DB_CREATED" = 1 ]; then
    if [ "$FAILED" = 1 ] || [ "${KEEP_DB:-0}" = 1 ]; then
      echo "keeping database $DB (postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB)" >&2
    else
      run psql_admin -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)"
    fi
  fi
  if [ -n "${CLUSTER_DIR:-}" ]; then
    run bash bench/cluster.sh stop "$CLUSTER_DIR"
    [ "$FAILED" = 1 ] || run psql_admin -c "DROP DATABASE IF EXISTS \"${DB}_cluster\" WITH (FORCE)"
  fi
  echo "+ redis-cli --scan --pattern '$PREFIX:*' | xargs -r redis-cli del" >&2
  rcli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" del >/dev/null
  echo "redis keys left under $PREFIX: $(rcli --scan --pattern "$PREFIX:*" | wc -l)" >&2
  if [ "$FAILED" = 1 ]; then
    echo "keeping $WORK (service stderr: $WORK/nudge.<backend>.stderr)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "!! failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'INTERRUPTED=1; exit 130' INT
trap 'INTERRUPTED=1; exit 143' TERM

# --- 0. tools ------------------------------------------------------------
log "tools"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v psql >/dev/null || need+=(postgresql-client)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if ((${#need[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  run "${sudo_cmd[@]}" apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}"
fi
# System packages only (OpenBLAS...): the bench needs no cargo-deny.
"$ROOT/scripts/deps.sh" --system
wrk --version 2>&1 | head -1 || true
run pg_isready -h "$PG_HOST" -p "$PG_PORT" -t 5
[ "$(rcli ping)" = PONG ] || { echo "redis at $REDIS_HOST:$REDIS_PORT does not answer" >&2; exit 1; }
for p in "$PORT" "$BARE_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is already in use" >&2
    exit 1
  fi
done

case "$PIN" in
  shared) SERVER_PIN=() WRK_PIN=() ;;
  split) SERVER_PIN=(taskset -c 0) WRK_PIN=(taskset -c 1) ;;
  *) echo "PIN must be shared or split" >&2; exit 2 ;;
esac

# --- 1. build -------------------------------------------------------------
log "build"
# Only the two servers: the bare ceiling is a crate of its own (bench/bare),
# so no dev-dependency (criterion, reqwest, proptest...) is compiled.
run timeout "$CARGO_TIMEOUT" cargo build --release -p nudge --bin nudge -p nudge-bare --bin bare
NUDGE_BIN=$ROOT/target/release/nudge
BARE_BIN=$ROOT/target/release/bare
run "$NUDGE_BIN" check bench/policies

# --- 2. database, Redis prefix ------------------------------------------------
if has_backend redis; then
  log "database $DB, redis prefix $PREFIX"
  run psql_admin -c "CREATE DATABASE \"$DB\""
  DB_CREATED=1
  if [ "$(rcli --scan --pattern "$PREFIX:*" | wc -l)" != 0 ]; then
    echo "redis already has keys under $PREFIX" >&2
    exit 1
  fi
fi
DATABASE_URL=postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB
# The cluster backend: a private Redis Cluster (bench/cluster.sh, as the
# tests make theirs: CLUSTER_MASTERS masters, no replicas) and a database
# of its own, so its log check counts its rows only.
CLUSTER_MASTERS=${CLUSTER_MASTERS:-3}
if has_backend cluster; then
  log "redis cluster ($CLUSTER_MASTERS masters) and its database"
  CLUSTER_DIR=$WORK/cluster
  CLUSTER_URLS=$(MASTERS=$CLUSTER_MASTERS REPLICAS=0 bash bench/cluster.sh start "$CLUSTER_DIR")
  echo "cluster seeds: $CLUSTER_URLS" >&2
  run psql_admin -c "CREATE DATABASE \"${DB}_cluster\""
  DATABASE_URL_CLUSTER=postgres://$PG_USER@$PG_HOST:$PG_PORT/${DB}_cluster
fi
# The embedded backend's SQLite file (in the temp dir: kept on failure).
SQLITE_FILE=$WORK/embedded/nudge.db

# Waits until GET $1/readyz says ready (bounded).
wait_ready() {
  local url=$1 pid=$2 i body
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "server (pid $pid) exited during start" >&2; return 1; }
    body=$(curl -s --max-time 2 "$url/readyz" || true)
    if [[ $body == *'"status":"ready"'* ]]; then
      echo "ready: $body" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "not ready after 60 s: ${body:-no answer}" >&2
  return 1
}

# CPU used by processes that are not part of the benchmark (other people's
# builds and tests on this 2-core box skew every number): snapshot the
# cumulative CPU ticks (own + reaped children) of every user process.
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
cpu_snapshot() {
  # getline, not awk's own file loop: a process that exits between the glob
  # and the read must be skipped, not end the snapshot.
  awk -v self=$$ 'BEGIN {
    for (a = 1; a < ARGC; a++) {
      file = ARGV[a]
      if ((getline line < file) <= 0) { close(file); continue }
      close(file)
      pid = substr(line, 1, index(line, " ") - 1) + 0
      open = index(line, "("); close_ = 0
      for (i = length(line); i > 0; i--) if (substr(line, i, 1) == ")") { close_ = i; break }
      if (open == 0 || close_ == 0) continue
      comm = substr(line, open + 1, close_ - open - 1)
      split(substr(line, close_ + 2), f, " ")
      if (pid == 2 || f[2] + 0 == 2 || pid == self) continue   # kernel threads, this script
      gsub(/ /, "_", comm)
      printf "%d %s %d\n", pid, comm, f[12] + f[13] + f[14] + f[15]
    }
    exit
  }' /proc/[0-9]*/stat 2>/dev/null || true
}
# cpu_usage BEFORE AFTER SECONDS -> "OTHER SERVER REDIS POSTGRES", each in %
# of one core (top's unit; 2 cores = 200). OTHER is every process that is
# not the server (nudge/bare), wrk, Redis, PostgreSQL or this script's tools.
cpu_usage() {
  awk -v secs="$3" -v tck="$CLK_TCK" '
    BEGIN { split("nudge bare wrk redis-server postgres timeout tee grep curl psql sleep awk sed", o, " ")
            for (i in o) ours[o[i]] = 1 }
    FNR == NR { before[$1 " " $2] = $3; next }
    { k = $1 " " $2; d = $3 - (k in before ? before[k] : 0); seen[k] = 1
      if (!($2 in ours)) other += d
      else if ($2 == "nudge" || $2 == "bare") server += d
      else if ($2 == "redis-server") redis += d
      else if ($2 == "postgres") pg += d }
    # a process that exited was reaped by its parent, whose cumulative
    # children time now includes its whole life: take its earlier part out
    END { for (k in before) if (!(k in seen)) { split(k, kk, " "); if (!(kk[2] in ours)) other -= before[k] }
          f = secs > 0 ? 100 / tck / secs : 0
          if (other < 0) other = 0
          printf "%.0f %.0f %.0f %.0f\n", other * f, server * f, redis * f, pg * f }' "$1" "$2"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# Before a measured run, wait (at most QUIET_WAIT seconds) for a second in
# which other processes use < 20% of a core (10% of the machine).
wait_quiet() {
  local i other rest
  for ((i = 0; i < QUIET_WAIT; i++)); do
    cpu_snapshot >"$WORK/cpu.q0"
    local t0
    t0=$(now)
    sleep 1
    cpu_snapshot >"$WORK/cpu.q1"
    read -r other rest < <(cpu_usage "$WORK/cpu.q0" "$WORK/cpu.q1" "$(elapsed "$t0")")
    [ "$other" -lt 20 ] && return 0
    ((i % 10)) || echo "waiting for a quiet machine: other processes use ${other}% of a core" >&2
  done
  echo "!! machine still busy after ${QUIET_WAIT}s (others ${other}% of a core): measuring anyway" >&2
}

# wrk_run LABEL URL MODE POLICY CONNECTIONS DURATION [record-ids]
wrk_run() {
  local label=$1 url=$2 mode=$3 policy=$4 conns=$5 dur=$6 track=${7:-}
  local out=$WORK/wrk.$label.txt
  local envs=(BENCH_LABEL="$label" BENCH_MODE="$mode" BENCH_POLICY="$policy"
    BENCH_RUN="$RUN_ID-$label")
  [ "$policy" != bench_guarded ] || envs+=(BENCH_USERS="$BENCH_USERS")
  [ -z "$track" ] || envs+=(BENCH_INFLIGHT_FILE="$INFLIGHT")
  log "wrk: $label"
  wait_quiet
  cpu_snapshot >"$WORK/cpu.before"
  local t0
  t0=$(now)
  run env "${envs[@]}" timeout $((dur + 60)) "${WRK_PIN[@]}" \
    wrk -t"$THREADS" -c"$conns" -d"${dur}s" --timeout 10s --latency \
    -s "$ROOT/bench/nudge.lua" "$url" | tee "$out" | { grep -E '^(RESULT|ERRORS)|Requests/sec|Latency ' >&2 || true; }
  cpu_snapshot >"$WORK/cpu.after"
  local other server redis pg
  read -r other server redis pg < <(cpu_usage "$WORK/cpu.before" "$WORK/cpu.after" "$(elapsed "$t0")")
  echo "CPU during $label (% of one core): server $server, redis $redis, postgres $pg, other processes $other" >&2
  [ "$other" -lt 20 ] || echo "!! WARNING: other processes used ${other}% of a core during $label; its numbers are skewed" >&2
  grep '^RESULT ' "$out" |
    sed "s/\$/ server_cpu_pct=$server redis_cpu_pct=$redis pg_cpu_pct=$pg other_cpu_pct=$other/" >>"$RESULTS" ||
    { echo "wrk printed no RESULT line" >&2; return 1; }
  grep '^ERRORS ' "$out" >&2 || true
}

# After a Nudge run: the log backlog it left, then wait (bounded) for it to
# drain so the next run starts clean.
drain_log() {
  local label=$1 i body depth
  body=$(curl -s --max-time 5 "http://127.0.0.1:$PORT/readyz" || true)
  echo "after $label: $body" >&2
  depth=$(sed -n 's/.*"log_queue":\([0-9]*\).*/\1/p' <<<"$body")
  echo "DRAIN label=$label log_queue_at_end=${depth:-?}" >>"$RESULTS"
  for ((i = 0; i < 600; i++)); do
    body=$(curl -s --max-time 5 "http://127.0.0.1:$PORT/readyz" || true)
    [[ $body == *'"log_queue":0,'* ]] && break
    sleep 0.1
  done
  sleep 1
}

# --- 3. the ceiling: bare actix-web ----------------------------------------------
log "bare actix-web ceiling (workers $WORKERS)"
echo "+ BARE_BIND=127.0.0.1:$BARE_PORT NUDGE_WORKERS=$WORKERS ${SERVER_PIN[*]} $BARE_BIN 2>$BARE_LOG &" >&2
BARE_BIND=127.0.0.1:$BARE_PORT NUDGE_WORKERS=$WORKERS "${SERVER_PIN[@]}" "$BARE_BIN" 2>"$BARE_LOG" &
BARE_PID=$!
wait_ready "http://127.0.0.1:$BARE_PORT" "$BARE_PID"
BARE_URL=http://127.0.0.1:$BARE_PORT/v1/decide
wrk_run warmup_bare "$BARE_URL" decide bench_linucb 16 "$WARMUP"
for c in $CONNECTIONS; do
  wrk_run "bare_c$c" "$BARE_URL" decide bench_linucb "$c" "$DURATION"
  sleep 1
done
stop_pid "$BARE_PID" 10
BARE_PID=""

# --- 4. Nudge, once per backend ---------------------------------------------------
# Field of a RESULT line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
sum_field() { # sum of field $2 over RESULT lines whose label starts with $1
  local total=0 line v
  while IFS= read -r line; do
    v=$(field "$line" "$2")
    total=$((total + ${v:-0}))
  done < <(grep "^RESULT label=$1" "$RESULTS" || true)
  echo "$total"
}
sqlite_db() { sqlite3 -batch -bail -noheader -separator ' ' "$SQLITE_FILE" "$@"; }
# log_query BACKEND SQL: one row, fields separated by spaces.
log_query() {
  case $1 in
    redis | cluster) psql_db -tA -F ' ' -c "$2" ;;
    embedded) sqlite_db "$2" ;;
  esac
}

USER_MEMORY_LINE=""
CHECK_LINES=()

# run_backend BACKEND: start Nudge on it, run every policy and mode, stop it
# (SIGTERM drains the log), then check the log against wrk's counts.
run_backend() {
  local backend=$1 store_env data_dir
  CUR_DB=$DB
  case $backend in
    redis)
      store_env=(NUDGE_REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT NUDGE_REDIS_PREFIX="$PREFIX"
        NUDGE_DATABASE_URL="$DATABASE_URL")
      ;;
    cluster)
      CUR_DB=${DB}_cluster
      store_env=(NUDGE_REDIS_URL="$CLUSTER_URLS" NUDGE_REDIS_CLUSTER=true NUDGE_REDIS_PREFIX="$PREFIX"
        NUDGE_DATABASE_URL="$DATABASE_URL_CLUSTER")
      ;;
    embedded)
      # No NUDGE_REDIS_URL: the in-process store. No NUDGE_STATE_PATH either
      # (the default: the state lives in memory only).
      store_env=(NUDGE_DATABASE_URL="sqlite://$SQLITE_FILE")
      ;;
  esac
  data_dir=$WORK/data-$backend
  log "nudge serve on $backend (workers $WORKERS)"
  # Only our settings: drop any NUDGE_* inherited from the caller, and point
  # NUDGE_CONFIG at a file that does not exist so no nudge.toml is read.
  local nudge_env=(
    NUDGE_CONFIG="$WORK/none.toml"
    NUDGE_BIND=127.0.0.1:$PORT
    NUDGE_POLICIES=bench/policies
    NUDGE_DATA_DIR="$data_dir"
    "${store_env[@]}"
    NUDGE_WORKERS="$WORKERS"
    RUST_LOG="${RUST_LOG:-info}"
    NO_COLOR=1
  )
  local unset_env=() v
  while IFS= read -r v; do unset_env+=(-u "$v"); done < <(compgen -e | grep '^NUDGE_' || true)
  NUDGE_LOG=$WORK/nudge.$backend.stderr
  echo "+ env ${unset_env[*]} ${nudge_env[*]} ${SERVER_PIN[*]} $NUDGE_BIN serve 2>$NUDGE_LOG &" >&2
  env "${unset_env[@]}" "${nudge_env[@]}" "${SERVER_PIN[@]}" "$NUDGE_BIN" serve 2>"$NUDGE_LOG" &
  NUDGE_PID=$!
  wait_ready "http://127.0.0.1:$PORT" "$NUDGE_PID"
  local url=http://127.0.0.1:$PORT/v1/decide policy short mode c label
  for policy in $POLICY_LIST; do
    short=${policy#bench_}
    wrk_run "warmup_${backend}_$short" "$url" decide "$policy" 16 "$WARMUP" track
    drain_log "warmup_${backend}_$short"
    for mode in $MODES; do
      for c in $CONNECTIONS; do
        label=${backend}_${short}_${mode}_c$c
        wrk_run "$label" "$url" "$mode" "$policy" "$c" "$DURATION" track
        drain_log "$label"
      done
    done
  done

  # Guardrails: what one user's history costs in Redis (MEMORY USAGE of a
  # sample of user hashes, key and value included) and what the caps did.
  if [ "$backend" = redis ] && [[ " $POLICY_LIST " == *" bench_guarded "* ]]; then
    log "guardrails: Redis memory per user history"
    rcli --scan --pattern "$PREFIX:{u:*" >"$WORK/user_keys.txt" || true
    local users bytes=0 sends=0 sampled=0 key b n
    users=$(wc -l <"$WORK/user_keys.txt")
    while IFS= read -r key && ((sampled < 500)); do
      b=$(rcli MEMORY USAGE "$key")
      n=$(rcli HLEN "$key")
      bytes=$((bytes + b)) sends=$((sends + n - 1)) sampled=$((sampled + 1))
    done <"$WORK/user_keys.txt"
    if ((sampled > 0)); then
      USER_MEMORY_LINE="Redis per user history: $((bytes / sampled)) bytes on average (MEMORY USAGE of $sampled of $users user hashes, $(awk -v s="$sends" -v n="$sampled" 'BEGIN { printf "%.2f", s / n }') sends each on average)"
      echo "$USER_MEMORY_LINE" >&2
    fi
    curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" | grep -E '^nudge_guardrail' | head -20 >&2 || true
  fi

  log "metrics (store errors, log) before shutdown ($backend)"
  curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" | grep -E '^nudge_(store_errors|log_|decisions_total|rewards_total)' | grep -v '^#' | head -40 >&2 || true
  echo "server RSS before shutdown ($backend): $(awk '/^VmRSS/ { print $2, $3 }' "/proc/$NUDGE_PID/status" 2>/dev/null || echo '?')" >&2

  log "stop nudge on $backend (SIGTERM, drains the log queue)"
  if ! stop_pid "$NUDGE_PID" 60; then
    echo "FAIL: nudge ($backend) did not stop within 60 s of SIGTERM" >&2
    FAILED=1
  fi
  local nudge_rc
  wait "$NUDGE_PID" && nudge_rc=0 || nudge_rc=$?
  NUDGE_PID=""
  echo "nudge ($backend) exit status: $nudge_rc" >&2
  [ "$nudge_rc" -eq 0 ] || FAILED=1

  # --- the service's own warnings/errors
  log "service stderr ($backend): WARN/ERROR lines ($(grep -cE ' (WARN|ERROR) ' "$NUDGE_LOG" || true) total; first 20, then counts by message)"
  grep -E ' (WARN|ERROR) ' "$NUDGE_LOG" | head -20 >&2 || true
  grep -E ' (WARN|ERROR) ' "$NUDGE_LOG" | sed -E 's/^[^ ]+ +//; s/[0-9a-f-]{36}//g; s/[0-9]+/N/g' |
    sort | uniq -c | sort -rn | head -15 >&2 || true
  echo "service stderr, last 10 lines:" >&2
  tail -n 10 "$NUDGE_LOG" >&2
  if [ -d "$data_dir/spool" ]; then
    echo "spool dir after shutdown:" >&2
    find "$data_dir/spool" -type f -printf '  %p %s bytes\n' >&2
  fi

  # --- decision log vs wrk
  log "decision log check ($backend)"
  case $backend in
    redis | cluster)
      run psql_db -c "CREATE TABLE bench_inflight (kind text NOT NULL, event_id text NOT NULL)"
      run psql_db -c "\\copy bench_inflight FROM '$INFLIGHT'"
      ;;
    embedded)
      run sqlite_db "CREATE TABLE bench_inflight (kind TEXT NOT NULL, event_id TEXT NOT NULL)"
      run sqlite_db -cmd ".mode tabs" ".import '$INFLIGHT' bench_inflight"
      ;;
  esac
  echo "ids wrk sent without seeing a 2xx (in flight when wrk stopped, or failed), every backend so far:" \
    "$(wc -l <"$INFLIGHT") ($(log_query "$backend" "SELECT count(*) FROM bench_inflight") loaded)" >&2

  local ok200 ok202 rows distinct inflight_rows degraded answered verdict rrows rdefault rinflight ranswered
  for policy in $POLICY_LIST; do
    short=${policy#bench_}
    ok200=$(sum_field "warmup_${backend}_$short" decide_ok)
    ok200=$((ok200 + $(sum_field "${backend}_${short}_" decide_ok)))
    ok202=$(sum_field "${backend}_${short}_" reward_ok)
    read -r rows distinct inflight_rows degraded < <(log_query "$backend" "
      SELECT count(*), count(DISTINCT event_id),
             count(*) FILTER (WHERE event_id IN (SELECT event_id FROM bench_inflight WHERE kind = 'decide')),
             count(*) FILTER (WHERE degraded)
      FROM decisions WHERE policy = '$policy'")
    answered=$((rows - inflight_rows))
    verdict=PASS
    if [ "$answered" -ne "$ok200" ] || [ "$distinct" -ne "$rows" ]; then verdict=FAIL; FAILED=1; fi
    CHECK_LINES+=("$verdict $backend decisions $policy: rows=$rows (for ids answered 200: $answered, for ids in flight at wrk stop: $inflight_rows, distinct event ids: $distinct, degraded: $degraded), wrk 200 decides=$ok200")
    read -r rrows rdefault rinflight < <(log_query "$backend" "
      SELECT count(*), count(*) FILTER (WHERE is_default),
             count(*) FILTER (WHERE event_id IN (SELECT event_id FROM bench_inflight WHERE kind = 'reward'))
      FROM rewards WHERE policy = '$policy'")
    ranswered=$((rrows - rdefault - rinflight))
    verdict=PASS
    if [ "$ranswered" -ne "$ok202" ]; then verdict=FAIL; FAILED=1; fi
    CHECK_LINES+=("$verdict $backend rewards   $policy: rows=$rrows (explicit for ids answered 202: $ranswered, in flight at wrk stop: $rinflight, window defaults: $rdefault), wrk 202 rewards=$ok202")
  done
  printf '%s\n' "${CHECK_LINES[@]}" >&2
}

for backend in $BACKENDS; do
  run_backend "$backend"
done

# --- 5. report ----------------------------------------------------------------------------
log "report"
fmt_rate() { printf '%.0f' "$1"; }
ceiling_of() { field "$(grep "^RESULT label=bare_c$1 " "$RESULTS")" decide_rps; }
backend_name() { case $1 in redis) echo "redis+pg" ;; embedded) echo "embedded" ;; cluster) echo "cluster+pg" ;; esac; }
{
  echo
  echo "Nudge HTTP load test: ${DURATION}s per run, wrk -t$THREADS, workers=$WORKERS, pin=$PIN, $(nproc) CPUs, policies d=32 K=10 disjoint, backends: $BACKENDS"
  echo
  echo "| scenario | conns | req/s | decides/s | p50 ms | p99 ms | non-2xx | decides/s ÷ ceiling | log queue at end | CPU % server / redis / pg / other |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for label in $(for c in $CONNECTIONS; do echo "bare_c$c"; done) \
    $(for p in $POLICY_LIST; do for m in $MODES; do for c in $CONNECTIONS; do for b in $BACKENDS; do
      echo "${b}_${p#bench_}_${m}_c$c"; done; done; done; done); do
    line=$(grep "^RESULT label=$label " "$RESULTS" || true)
    [ -n "$line" ] || continue
    c=${label##*_c}
    case $label in
      bare_*) name="bare actix-web (ceiling)" ;;
      *)
        b=${label%%_*} rest=${label#*_}
        case $rest in
          *_decide_reward_*) name="$(backend_name "$b") ${rest%%_decide*} decide+reward" ;;
          *) name="$(backend_name "$b") ${rest%%_decide*} decide" ;;
        esac
        ;;
    esac
    ceil=$(ceiling_of "$c")
    ratio=$(awk -v a="$(field "$line" decide_rps)" -v b="${ceil:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }')
    q=$(sed -n "s/^DRAIN label=$label log_queue_at_end=\(.*\)/\1/p" "$RESULTS")
    non2xx=$(field "$line" non2xx)
    errs=$(($(field "$line" err_connect) + $(field "$line" err_read) + $(field "$line" err_write) + $(field "$line" err_timeout)))
    [ "$errs" -eq 0 ] || non2xx="$non2xx (+$errs socket errors)"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$c" \
      "$(fmt_rate "$(field "$line" rps)")" "$(fmt_rate "$(field "$line" decide_rps)")" \
      "$(field "$line" p50_ms)" "$(field "$line" p99_ms)" "$non2xx" "$ratio" "${q:--}" \
      "$(field "$line" server_cpu_pct) / $(field "$line" redis_cpu_pct) / $(field "$line" pg_cpu_pct) / $(field "$line" other_cpu_pct)"
  done
  echo
  for l in "${CHECK_LINES[@]}"; do echo "$l"; done
  [ -z "$USER_MEMORY_LINE" ] || { echo; echo "$USER_MEMORY_LINE"; }
  echo
  if [ "$FAILED" = 1 ]; then
    kept=()
    [ "$DB_CREATED" = 0 ] || kept+=("database $DB")
    has_backend embedded && kept+=("$SQLITE_FILE")
    echo "RESULT: FAIL (kept: ${kept[*]})"
  else
    echo "RESULT: PASS"
  fi
} | tee "$WORK/report.md"
[ "$FAILED" = 0 ]
