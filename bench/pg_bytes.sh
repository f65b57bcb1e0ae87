#!/usr/bin/env bash
# PostgreSQL bytes per decision row and per reward row (see bench/README.md).
#
# A fresh database on the local PostgreSQL (PGHOST/PGPORT/PGUSER, default
# 127.0.0.1:5432 postgres), Nudge (release) on the embedded store with its
# log in that database and bench/policies, then decide+reward load of
# POLICY (default bench_linucb: LinUCB, d = 32, K = 10, a fresh random
# 31-number context each, every decision rewarded 0 or 1) until
# at least ROWS decisions are logged. After a graceful stop (the log is
# flushed) and VACUUM ANALYZE it prints, per table, the rows, the bytes of
# table + TOAST + indexes (pg_total_relation_size over its partitions) and
# their ratio, and the average stored size of each column
# (pg_column_size), so the figure can be traced to what fills it.
#
# Settings (environment): ROWS=20000, POLICY=bench_linucb, CONNECTIONS=32,
# KEEP_DB=1 keeps the database, NUDGE_BIN=path measures another build (no
# cargo build then; e.g. an older commit's, for a before/after). Exit status: 0 iff the run completed and
# every request was answered 2xx.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
ROWS=${ROWS:-20000}
POLICY=${POLICY:-bench_linucb}
CONNECTIONS=${CONNECTIONS:-32}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null; }

if [ -z "${NUDGE_BIN:-}" ]; then
  echo "+ cargo build --release --bin nudge" >&2
  cargo build --release --bin nudge >&2
  NUDGE_BIN=$ROOT/target/release/nudge
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nudge-pg-bytes.XXXXXX")
DB=nudge_pg_bytes_$(date +%Y%m%d_%H%M%S)_$$
PORT=$(free_port)
NUDGE_PID=""
cleanup() {
  set +e
  [ -n "$NUDGE_PID" ] && kill -TERM "$NUDGE_PID" 2>/dev/null && wait "$NUDGE_PID" 2>/dev/null
  [ -z "${KEEP_DB:-}" ] && psql -d postgres -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)"
  rm -rf "$WORK"
}
trap cleanup EXIT
psql -d postgres -qc "CREATE DATABASE \"$DB\""
DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"

NUDGE_CONFIG=$WORK/none.toml NUDGE_BIND=127.0.0.1:$PORT NUDGE_POLICIES=$ROOT/bench/policies \
  NUDGE_DATABASE_URL="$DATABASE_URL" NUDGE_DATA_DIR=$WORK/data \
  RUST_LOG=warn "$NUDGE_BIN" serve 2>"$WORK/nudge.log" &
NUDGE_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

count() { psql -d "$DB" -tAc "SELECT count(*) FROM $1"; }
burst=0
while [ "$(count decisions)" -lt "$ROWS" ]; do
  BENCH_MODE=decide_reward BENCH_POLICY=$POLICY BENCH_RUN="b$burst-$RANDOM" BENCH_LABEL=bytes \
    wrk -t2 -c"$CONNECTIONS" -d2s -s "$ROOT/bench/nudge.lua" "http://127.0.0.1:$PORT/v1/decide" \
    >"$WORK/wrk.out" 2>&1
  grep -q 'non2xx=0' "$WORK/wrk.out" || { cat "$WORK/wrk.out" >&2; echo "non-2xx answers" >&2; exit 1; }
  burst=$((burst + 1))
  sleep 0.5
done
kill -TERM "$NUDGE_PID"; wait "$NUDGE_PID" || true; NUDGE_PID=""
psql -d "$DB" -qc "VACUUM ANALYZE"

report() {
  local table=$1 columns=$2
  # Every partition of the table (the rows sit in the month's partition).
  psql -d "$DB" -tA -F' ' -c "SELECT (SELECT count(*) FROM $table),
      sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)),
      sum(pg_total_relation_size(relid) - pg_relation_size(relid) - pg_indexes_size(relid)),
      sum(pg_indexes_size(relid))
    FROM pg_partition_tree('$table') WHERE isleaf" | {
    read -r n total heap toast idx
    python3 -c "import sys; n,t,h,x,i=map(int,sys.argv[1:]); print(f'$table: rows={n} total_bytes={t} heap={h} toast={x} indexes={i}'); print(f'RESULT ${table}_bytes_per_row={t/n:.1f} heap={h/n:.1f} toast={x/n:.1f} indexes={i/n:.1f}')" "$n" "$total" "$heap" "$toast" "$idx"
  }
  local sel
  sel=$(for c in $columns; do printf "round(avg(pg_column_size(%s)), 1) AS %s, " "$c" "$c"; done)
  psql -d "$DB" -c "SELECT ${sel%, } FROM $table"
}
report decisions "event_id policy context candidates actions slate guardrails action probability decided_at"
report rewards "reward_id event_id policy action reward signals received_at"
