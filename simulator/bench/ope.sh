#!/usr/bin/env bash
# OPE benchmark: 1 000 000 logged events, 10 actions, IPW + SNIPW + DM + DR
# with a supplied reward model, end to end from files (an OBD-layout log
# CSV, a target-probabilities CSV and a reward-model CSV, then the same as
# Parquet), nudge-sim's
# release binary against the Open Bandit Pipeline on the same files, in the
# same minute, RUNS times each, interleaved. Prints one side-by-side table:
# each estimate from both tools, and the times — nudge-sim as a process,
# OBP as a process (interpreter start and imports included) and inside
# Python (pandas reading + estimating) — with the ratios of the medians.
#
#   simulator/bench/ope.sh            # from the repository root
#   N=100000 simulator/bench/ope.sh   # smaller
#   NUDGE_SIM=target/release/nudge-sim simulator/bench/ope.sh   # no build
#
# The OBP virtualenv (obp 0.5.7 needs Python 3.10; this machine has it
# under pyenv):
#   /root/.pyenv/versions/3.10.13/bin/python -m venv /work/venv-obp
#   /work/venv-obp/bin/pip install "obp==0.5.7" "matplotlib<3.9" pyarrow
# (pyarrow writes the Parquet copies of the files and lets pandas read them)
#
# Environment: BENCH_DIR (files, default /tmp/nudge-ope-bench), RUNS
# (default 3), NUDGE_SIM (a nudge-sim binary: then nothing is built),
# PYTHON (a Python with numpy + pandas to generate the files, default the
# obp venv's), OBP_VENV (default /work/venv-obp), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
K=${K:-10}
RUNS=${RUNS:-3}
DIR=${BENCH_DIR:-/tmp/nudge-ope-bench}/n$N-k$K
OBP_VENV=${OBP_VENV:-/work/venv-obp}
PYTHON=${PYTHON:-$OBP_VENV/bin/python}
TARGET=${CARGO_TARGET_DIR:-target}

if [ -z "${NUDGE_SIM:-}" ]; then
  cargo build --release -p nudge-sim >&2
  NUDGE_SIM=$TARGET/release/nudge-sim
fi
if [ ! -f "$DIR/q.csv" ]; then
  "$PYTHON" simulator/bench/gen_ope_bench.py "$DIR" "$N" "$K" >&2
fi
# The same files as Parquet (pyarrow's defaults: Snappy, 1M-row groups).
if [ ! -f "$DIR/q.parquet" ]; then
  "$PYTHON" - "$DIR" >&2 <<'PY'
import sys
import pandas as pd
for name in ["log", "target", "q"]:
    pd.read_csv(f"{sys.argv[1]}/{name}.csv").to_parquet(f"{sys.argv[1]}/{name}.parquet", index=False)
PY
fi
ls -la "$DIR" >&2
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# One timed process: its stdout to $OUT/$1.$2.json, its wall seconds to
# $OUT/$1.$2.wall.
timed() {
  local name=$1 i=$2
  shift 2
  /usr/bin/time -f "%e" -o "$OUT/$name.$i.wall" "$@" >"$OUT/$name.$i.json"
}
# The page cache is warmed by one unrecorded run of each.
for fmt in csv parquet; do
  "$NUDGE_SIM" evaluate --log "$DIR/log.$fmt" --target-probs "$DIR/target.$fmt" \
    --reward-model "$DIR/q.$fmt" --estimators ipw,snipw,dm,dr --bootstrap 0 --format json >/dev/null
done
HAVE_OBP=0
[ -x "$OBP_VENV/bin/python" ] && HAVE_OBP=1
for ((i = 1; i <= RUNS; i++)); do
  echo "run $i of $RUNS" >&2
  for fmt in csv parquet; do
    timed "nudge-$fmt" "$i" "$NUDGE_SIM" evaluate \
      --log "$DIR/log.$fmt" --target-probs "$DIR/target.$fmt" --reward-model "$DIR/q.$fmt" \
      --estimators ipw,snipw,dm,dr --bootstrap 0 --format json
    if [ "$HAVE_OBP" = 1 ]; then
      timed "obp-$fmt" "$i" "$OBP_VENV/bin/python" simulator/bench/obp_reference.py "$DIR" "$fmt"
    fi
  done
done
[ "$HAVE_OBP" = 1 ] || echo "$OBP_VENV not found: OBP skipped (see the header for how to make it)" >&2

python3 - "$OUT" "$RUNS" "$HAVE_OBP" "$N" "$K" <<'PY'
import json, statistics, sys
out, runs, have_obp, n, k = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
def load(name, i):
    with open(f"{out}/{name}.{i}.json") as f:
        text = f.read().strip().splitlines()[-1]
    with open(f"{out}/{name}.{i}.wall") as f:
        wall = float(f.read().strip().splitlines()[-1])
    return json.loads(text), wall
runs_of = lambda name: [load(name, i) for i in range(1, runs + 1)]
ours = runs_of("nudge-csv")
ours_pq = runs_of("nudge-parquet")
obp = runs_of("obp-csv") if have_obp else []
obp_pq = runs_of("obp-parquet") if have_obp else []
print(f"OPE benchmark: {n} events, {k} actions, IPW + SNIPW + DM + DR, {runs} interleaved runs each\n")
print("| estimator | nudge-sim | OBP 0.5.7 | abs. difference | nudge-sim from Parquet - from CSV |")
print("| --- | ---: | ---: | ---: | ---: |")
for name in ["ipw", "snipw", "dm", "dr"]:
    a = ours[0][0]["estimates"][name]["value"]
    a_pq = ours_pq[0][0]["estimates"][name]["value"]
    b = obp[0][0]["values"][name] if obp else float("nan")
    print(f"| {name} | {a:.15f} | {b:.15f} | {abs(a - b):.1e} | {abs(a - a_pq):.1e} |")
med = lambda xs: statistics.median(xs)
print("\n| time (s): min / median / max | nudge-sim | OBP process | OBP inside Python | ratio of medians (process / inside) |")
print("| --- | ---: | ---: | ---: | ---: |")
fmt = lambda xs: f"{min(xs):.2f} / {med(xs):.2f} / {max(xs):.2f}"
for label, mine, theirs in [("from CSV", ours, obp), ("from Parquet", ours_pq, obp_pq)]:
    mine_wall = [w for _, w in mine]
    if theirs:
        wall = [w for _, w in theirs]
        inside = [j["total_s"] for j, _ in theirs]
        print(f"| {label} | {fmt(mine_wall)} | {fmt(wall)} | {fmt(inside)} | "
              f"{med(wall) / med(mine_wall):.1f}x / {med(inside) / med(mine_wall):.1f}x |")
    else:
        print(f"| {label} | {fmt(mine_wall)} | - | - | - |")
PY
