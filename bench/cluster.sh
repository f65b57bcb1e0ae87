#!/usr/bin/env bash
# A private Redis Cluster for benchmarks, made the way tests/cluster.rs
# makes its own: MASTERS masters with REPLICAS replicas each, every node a
# `redis-server --cluster-enabled yes` on a free port below 55535 (a node
# also listens on port + 10000), joined by `redis-cli --cluster create`.
#
#   bench/cluster.sh start DIR   starts it, files in DIR; prints the seed
#                                URLs (comma-separated) on stdout
#   bench/cluster.sh stop DIR    stops every node started in DIR
#
# Settings: MASTERS=3 REPLICAS=0.
set -Eeuo pipefail

MASTERS=${MASTERS:-3}
REPLICAS=${REPLICAS:-0}
cmd=${1:?start or stop}
dir=${2:?a directory}

free_port() {
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p >= 55535:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000)); b.close(); print(p); break
    except OSError:
        b.close()
EOF
}

case "$cmd" in
start)
  mkdir -p "$dir"
  nodes=()
  for ((i = 0; i < MASTERS * (1 + REPLICAS); i++)); do
    port=$(free_port)
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --save "" --appendonly no --dir "$dir/$port" --logfile "$dir/$port/redis.log" \
      --daemonize yes --pidfile "$dir/$port/redis.pid" >&2
    nodes+=("127.0.0.1:$port")
  done
  for n in "${nodes[@]}"; do
    for _ in $(seq 100); do redis-cli -p "${n#*:}" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REPLICAS" --cluster-yes >&2
  for n in "${nodes[@]}"; do
    for _ in $(seq 200); do
      redis-cli -p "${n#*:}" cluster info | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
  done
  printf 'redis://%s\n' "${nodes[@]}" | paste -sd, -
  ;;
stop)
  for pid in "$dir"/*/redis.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
