#!/usr/bin/env bash
# OPE benchmark: 1 000 000 logged events, 10 actions, IPW + SNIPW + DM + DR
# with a supplied reward model, end to end from files (an OBD-layout log
# CSV, a target-probabilities CSV and a reward-model CSV), with the release
# binary; then the Open Bandit Pipeline reference on the same files, in the
# same run, when its virtualenv exists.
#
#   simulator/bench/ope.sh            # from the repository root
#   N=100000 simulator/bench/ope.sh   # smaller
#
# Environment: BENCH_DIR (files, default /tmp/nudge-ope-bench), PYTHON
# (a Python with numpy + pandas to generate the files, default the obp venv),
# OBP_VENV (default /work/venv-obp), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
K=${K:-10}
DIR=${BENCH_DIR:-/tmp/nudge-ope-bench}/n$N-k$K
OBP_VENV=${OBP_VENV:-/work/venv-obp}
PYTHON=${PYTHON:-$OBP_VENV/bin/python}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p nudge-sim >&2
if [ ! -f "$DIR/q.csv" ]; then
  "$PYTHON" simulator/bench/gen_ope_bench.py "$DIR" "$N" "$K" >&2
fi
ls -la "$DIR" >&2

run_ours() {
  /usr/bin/time -f "nudge-sim: %e s wall, %U s user, %M KB max RSS" \
    "$TARGET/release/nudge-sim" evaluate \
    --log "obd:$DIR/log.csv" --target-probs "$DIR/target.csv" --reward-model "$DIR/q.csv" \
    --estimators ipw,snipw,dm,dr --bootstrap 0 --format json
}
echo "== nudge-sim evaluate (3 runs; the first warms the page cache)"
for _ in 1 2 3; do run_ours; done

if [ -x "$OBP_VENV/bin/python" ]; then
  echo "== Open Bandit Pipeline reference (read with pandas + estimate)"
  "$OBP_VENV/bin/python" simulator/bench/obp_reference.py "$DIR"
else
  echo "== $OBP_VENV not found: OBP reference skipped"
fi
