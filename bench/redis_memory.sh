#!/usr/bin/env bash
# Redis memory per pending event (see bench/README.md).
#
# A private redis-server on a free port (so nothing else's keys count),
# Nudge (release) on it with bench/policies and a throw-away SQLite log,
# then N decides of bench_linucb (LinUCB, d = 32, K = 10, a fresh random
# 31-number context each, no reward: every event stays pending for the
# policy's 1 h window). Prints INFO memory's used_memory before and after,
# the pending count the service reports, and their ratio: bytes of Redis
# memory per pending event, and keys per pending event.
#
# Settings (environment): EVENTS=30000 (at least 20000 for the figure the
# README quotes), CONNECTIONS=32, SHARDS=1 (NUDGE_REDIS_SHARDS).
# Exit status: 0 iff the run completed and every decide was answered 200.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
EVENTS=${EVENTS:-30000}
CONNECTIONS=${CONNECTIONS:-32}
SHARDS=${SHARDS:-1}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get install -y redis-server >/dev/null; }

echo "+ cargo build --release --bin nudge" >&2
cargo build --release --bin nudge >&2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nudge-redis-mem.XXXXXX")
REDIS_PORT=$(free_port)
PORT=$(free_port)
REDIS_PID=""
NUDGE_PID=""
cleanup() {
  set +e
  [ -n "$NUDGE_PID" ] && kill -TERM "$NUDGE_PID" 2>/dev/null && wait "$NUDGE_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
for _ in $(seq 50); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done

NUDGE_BIND=127.0.0.1:$PORT NUDGE_POLICIES=$ROOT/bench/policies \
  NUDGE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT NUDGE_REDIS_SHARDS=$SHARDS \
  NUDGE_DATABASE_URL="sqlite://$WORK/log.db" NUDGE_DATA_DIR=$WORK/data \
  RUST_LOG=warn "$ROOT/target/release/nudge" serve 2>"$WORK/nudge.log" &
NUDGE_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# One decide first, so every per-policy key (snapshot, counters) exists
# before the baseline and the delta is the events' alone.
body=$(python3 -c 'import json; print(json.dumps({"policy": "bench_linucb", "context": {"f%02d" % i: 0.5 for i in range(1, 32)}}))')
curl -fsS -X POST "http://127.0.0.1:$PORT/v1/decide" -H 'Content-Type: application/json' -d "$body" >/dev/null
sleep 1
before=$(rcli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
keys_before=$(rcli dbsize)
pending_before=$(curl -fs "http://127.0.0.1:$PORT/v1/policies/bench_linucb" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending_events"])')

# wrk stops on time, not count: run in short bursts until EVENTS decides.
sent=0
while :; do
  pending=$(curl -fs "http://127.0.0.1:$PORT/v1/policies/bench_linucb" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending_events"])')
  [ $((pending - pending_before)) -ge "$EVENTS" ] && break
  BENCH_MODE=decide BENCH_POLICY=bench_linucb BENCH_RUN="m$sent-$RANDOM" BENCH_LABEL=mem \
    wrk -t2 -c"$CONNECTIONS" -d2s -s "$ROOT/bench/nudge.lua" "http://127.0.0.1:$PORT/v1/decide" \
    >"$WORK/wrk.out" 2>&1
  grep -q 'non2xx=0' "$WORK/wrk.out" || { cat "$WORK/wrk.out" >&2; echo "non-2xx answers" >&2; exit 1; }
  sent=$((sent + 1))
done
sleep 1
after=$(rcli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
keys_after=$(rcli dbsize)
pending=$(curl -fs "http://127.0.0.1:$PORT/v1/policies/bench_linucb" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending_events"])')
n=$((pending - pending_before))
python3 - "$before" "$after" "$n" "$keys_before" "$keys_after" "$SHARDS" <<'EOF'
import sys
before, after, n, kb, ka, shards = map(int, sys.argv[1:])
print(f"shards={shards} pending_events={n} used_memory_before={before} used_memory_after={after}")
print(f"RESULT bytes_per_pending_event={(after - before) / n:.1f} keys_per_pending_event={(ka - kb) / n:.3f}")
EOF
