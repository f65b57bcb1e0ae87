#!/usr/bin/env bash
# Soak test of Nudge (see bench/README.md): decide + reward at a steady rate
# for DURATION seconds against the release binary with Redis and
# PostgreSQL, then checks that the log holds every acknowledged decision and
# reward. Prints requests, errors, p50/p99 per window, the server's RSS over
# time.
#
#   bash bench/soak.sh                  # 300 s at 1000 decides/s
#   DURATION=30 bash bench/soak.sh      # a quick run
#
# Settings (environment):
#   DURATION=300       seconds of load
#   RATE=1000          decides per second (steady, open loop)
#   REWARD_FRACTION=0.5
#   WINDOW=10          seconds per latency window
#   WORKERS=2          HTTP workers of Nudge
#   PORT=18090
#   REDIS_URL=redis://127.0.0.1:6379   (its own key prefix; keys deleted after)
#   PG=postgres://postgres@127.0.0.1:5432   (a fresh database, dropped after
#                      unless a check failed or KEEP_DB=1)
#   RSS_GROWTH_MAX=50  percent the server's RSS may grow from the end of the
#                      first minute to the end (beyond: the run fails)
#   CARGO_TIMEOUT=1800
# Exit status 0 iff no request failed, the log is complete, RSS stayed
# bounded and the service stopped cleanly.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

DURATION=${DURATION:-300}
RATE=${RATE:-1000}
REWARD_FRACTION=${REWARD_FRACTION:-0.5}
WINDOW=${WINDOW:-10}
WORKERS=${WORKERS:-2}
PORT=${PORT:-18090}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
RSS_GROWTH_MAX=${RSS_GROWTH_MAX:-50}
CARGO_TIMEOUT=${CARGO_TIMEOUT:-1800}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

STAMP=$(date +%Y%m%d_%H%M%S)
DB=nudge_soak_${STAMP}_$$
PREFIX=nudge_soak_${STAMP}_$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nudge-soak.XXXXXX")
NUDGE_LOG=$WORK/nudge.stderr
NUDGE_PID=""
DB_CREATED=0
FAILED=0

log() { printf '\n==> %s\n' "$*" >&2; }
run() {
  printf '+' >&2
  printf ' %q' "$@" >&2
  printf '\n' >&2
  "$@"
}
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$PG/postgres" "$@"; }
psql_db() { psql -X -q -At -v ON_ERROR_STOP=1 "$PG/$DB" "$@"; }
rcli() { redis-cli -u "$REDIS_URL" "$@"; }

cleanup() {
  local status=$?
  set +e
  [ "$status" -eq 0 ] || FAILED=1
  log "cleanup"
  if [ -n "$NUDGE_PID" ] && kill -0 "$NUDGE_PID" 2>/dev/null; then
    kill -TERM "$NUDGE_PID"
    timeout 60 tail --pid="$NUDGE_PID" -f /dev/null || kill -KILL "$NUDGE_PID"
  fi
  if [ "$DB_CREATED" = 1 ]; then
    if [ "$FAILED" = 1 ] || [ "${KEEP_DB:-0}" = 1 ]; then
      echo "keeping database $DB ($PG/$DB)" >&2
    else
      psql_admin -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)"
    fi
  fi
  rcli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
  if [ "$FAILED" = 1 ]; then
    echo "keeping $WORK (service stderr: $NUDGE_LOG)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "!! failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

log "services"
run pg_isready -d "$PG/postgres" -t 5
[ "$(rcli ping)" = PONG ] || { echo "redis at $REDIS_URL does not answer" >&2; exit 1; }
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "port $PORT on 127.0.0.1 is already in use" >&2
  exit 1
fi

log "build (release)"
run timeout "$CARGO_TIMEOUT" cargo build --release --bin nudge --example soak
NUDGE_BIN=$TARGET_DIR/release/nudge
SOAK_BIN=$TARGET_DIR/release/examples/soak
run "$NUDGE_BIN" check bench/policies

log "database $DB, redis prefix $PREFIX"
run psql_admin -c "CREATE DATABASE \"$DB\""
DB_CREATED=1

log "start nudge"
# Only the settings below: nothing inherited, no config file.
for v in $(env | awk -F= '/^NUDGE_/ {print $1}'); do unset "$v"; done
NUDGE_CONFIG=$WORK/none.toml \
  NUDGE_BIND=127.0.0.1:$PORT \
  NUDGE_POLICIES=bench/policies \
  NUDGE_DATA_DIR=$WORK/data \
  NUDGE_REDIS_URL=$REDIS_URL \
  NUDGE_REDIS_PREFIX=$PREFIX \
  NUDGE_DATABASE_URL=$PG/$DB \
  NUDGE_WORKERS=$WORKERS \
  "$NUDGE_BIN" serve 2>"$NUDGE_LOG" &
NUDGE_PID=$!
for ((i = 0; i < 600; i++)); do
  kill -0 "$NUDGE_PID" 2>/dev/null || { echo "nudge exited during start" >&2; cat "$NUDGE_LOG" >&2; exit 1; }
  body=$(curl -s --max-time 2 "http://127.0.0.1:$PORT/readyz" || true)
  [[ $body == *'"status":"ready"'* ]] && break
  sleep 0.1
done
[[ $body == *'"status":"ready"'* ]] || { echo "not ready: ${body:-no answer}" >&2; exit 1; }
echo "ready: $body" >&2

log "soak: $RATE decides/s, reward fraction $REWARD_FRACTION, ${DURATION}s"
load_status=0
run "$SOAK_BIN" --url "http://127.0.0.1:$PORT" --rate "$RATE" \
  --reward-fraction "$REWARD_FRACTION" --duration "$DURATION" --window "$WINDOW" \
  --pid "$NUDGE_PID" --prefix "$PREFIX" \
  --decided-out "$WORK/decided.txt" --rewarded-out "$WORK/rewarded.txt" \
  | tee "$WORK/soak.txt" || load_status=$?

log "stop nudge (SIGTERM: drains and flushes the log)"
kill -TERM "$NUDGE_PID"
stop_status=0
wait "$NUDGE_PID" || stop_status=$?
NUDGE_PID=""
echo "nudge exit status: $stop_status" >&2

log "check the log"
psql_db <<SQL
CREATE TABLE soak_decided (event_id text PRIMARY KEY);
CREATE TABLE soak_rewarded (event_id text PRIMARY KEY);
\copy soak_decided FROM '$WORK/decided.txt'
\copy soak_rewarded FROM '$WORK/rewarded.txt'
SQL
read -r acked_d logged_d distinct_d missing_d <<<"$(psql_db -F ' ' -c "
  SELECT (SELECT count(*) FROM soak_decided),
         (SELECT count(*) FROM decisions),
         (SELECT count(DISTINCT event_id) FROM decisions),
         (SELECT count(*) FROM soak_decided s
            WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.event_id = s.event_id))")"
read -r acked_r logged_r distinct_r missing_r <<<"$(psql_db -F ' ' -c "
  SELECT (SELECT count(*) FROM soak_rewarded),
         (SELECT count(*) FROM rewards WHERE NOT is_default),
         (SELECT count(DISTINCT event_id) FROM rewards WHERE NOT is_default),
         (SELECT count(*) FROM soak_rewarded s
            WHERE NOT EXISTS (SELECT 1 FROM rewards r WHERE r.event_id = s.event_id))")"
echo "decisions: $acked_d acknowledged, $logged_d rows ($distinct_d distinct), $missing_d missing"
echo "rewards:   $acked_r acknowledged, $logged_r rows ($distinct_r distinct), $missing_r missing"

# RSS: from the end of the first minute (allocator and caches warm) to the end.
rss_line=$(grep '^  server RSS:' "$WORK/soak.txt" || true)
echo "$rss_line"
rss_growth_ok=1
read -r rss_first rss_last <<<"$(echo "$rss_line" | grep -o '[0-9]*KiB' | tr -d 'KiB' |
  awk 'NR == 2 {first = $1} {last = $1} END {print (first ? first : last), last}')"
if [ -n "${rss_first:-}" ] && [ -n "${rss_last:-}" ] && [ "$rss_first" -gt 0 ]; then
  growth=$(( (rss_last - rss_first) * 100 / rss_first ))
  echo "server RSS growth after the first minute: ${growth}% (limit ${RSS_GROWTH_MAX}%)"
  [ "$growth" -le "$RSS_GROWTH_MAX" ] || rss_growth_ok=0
fi

# The service colours its level names; strip the escapes before matching.
plain_log() { sed 's/\x1b\[[0-9;]*m//g' "$NUDGE_LOG"; }
warnings=$(plain_log | grep -cE ' (WARN|ERROR) ' || true)
echo "service WARN/ERROR lines: $warnings"
plain_log | grep -E ' (WARN|ERROR) ' | cut -c1-240 | head -20 || true

ok=1
[ "$load_status" = 0 ] || { echo "FAIL: requests failed (soak exit $load_status)"; ok=0; }
[ "$stop_status" = 0 ] || { echo "FAIL: nudge exited $stop_status on SIGTERM"; ok=0; }
[ "$acked_d" = "$logged_d" ] && [ "$logged_d" = "$distinct_d" ] && [ "$missing_d" = 0 ] ||
  { echo "FAIL: the decisions log does not match the acknowledged decisions"; ok=0; }
[ "$acked_r" = "$logged_r" ] && [ "$logged_r" = "$distinct_r" ] && [ "$missing_r" = 0 ] ||
  { echo "FAIL: the rewards log does not match the acknowledged rewards"; ok=0; }
[ "$rss_growth_ok" = 1 ] || { echo "FAIL: server RSS grew more than ${RSS_GROWTH_MAX}%"; ok=0; }
if [ "$ok" = 1 ]; then
  echo "SOAK PASSED"
else
  echo "SOAK FAILED"
  exit 1
fi
