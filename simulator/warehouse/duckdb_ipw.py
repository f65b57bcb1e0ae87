"""IPW and SNIPW of a target policy on a `nudge-sim export` dataset, in
DuckDB SQL, checked against `nudge-sim evaluate` on the same export.

What a warehouse query must get right, and this one does: an event counts
only once its outcome is final (the window rule of `nudge-sim evaluate`):

- the log says it is final (`reward_final`): its reward, or the default;
- its window has closed (`window_closes_at <= as_of`): a missing reward is
  `default_reward` ("not opened" is information, not silence);
- its window is still open: left out, rewarded or not (keeping only the
  rewarded ones is selection on the reward);
- no window known (`window_closes_at` null): its reward if it has one.

The target is a long table `event_id, action, probability` (a model scored
elsewhere). Without `--target`, the script writes one with DuckDB: uniform
over each event's eligible candidates (logged probability > 0).

    python3 -m venv /work/venv-duckdb && /work/venv-duckdb/bin/pip install duckdb
    nudge-sim export --to /tmp/export --database sqlite://nudge.db
    /work/venv-duckdb/bin/python simulator/warehouse/duckdb_ipw.py /tmp/export \\
        --nudge-sim target/release/nudge-sim

Prints both tools' figures side by side and exits 1 when they differ by
more than 1e-12 (or in the number of events). On a log with no final
outcome yet, both must evaluate nothing (nudge-sim says until when).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

import duckdb

# The window rule, as SQL over the export's columns (see the module doc).
OUTCOME = """
    CASE
        WHEN reward_final AND coalesce(reward, default_reward) IS NOT NULL
            THEN coalesce(reward, default_reward)
        WHEN window_closes_at IS NULL THEN reward
        WHEN window_closes_at <= $as_of THEN coalesce(reward, default_reward)
        ELSE NULL
    END
"""

IPW = f"""
WITH log AS (
    SELECT event_id, policy, action, probability, {OUTCOME} AS outcome,
           outcome IS NULL AND window_closes_at > $as_of AS open
    FROM read_parquet($files, hive_partitioning = true)
    WHERE $policy IS NULL OR policy = $policy
),
final AS (SELECT * FROM log WHERE outcome IS NOT NULL),
weighted AS (
    SELECT f.outcome, coalesce(t.probability, 0) / f.probability AS w
    FROM final f
    LEFT JOIN target t ON t.event_id = f.event_id AND t.action = f.action
)
SELECT (SELECT count(*) FROM weighted) AS n,
       (SELECT count(*) FILTER (WHERE open) FROM log) AS open,
       (SELECT avg(w * outcome) FROM weighted) AS ipw,
       (SELECT sum(w * outcome) / sum(w) FROM weighted) AS snipw
"""

# Uniform over the eligible candidates (the `candidates` JSON column).
UNIFORM = """
WITH c AS (
    SELECT filename, file_row_number AS row, event_id,
           unnest(from_json(candidates, '[{"id": "VARCHAR", "probability": "DOUBLE"}]'),
                  recursive := true),
           generate_subscripts(from_json(candidates, '[{"id": "VARCHAR"}]'), 1) AS k
    FROM read_parquet($files, hive_partitioning = true, filename = true,
                      file_row_number = true)
    WHERE $policy IS NULL OR policy = $policy
)
-- nudge-sim merge-joins a per-event file with the log: the log's order
-- (the files in path order, rows in file order), candidates in arm order.
SELECT event_id, id AS action,
       1.0 / count(*) OVER (PARTITION BY filename, row) AS probability
FROM c
WHERE probability > 0
ORDER BY filename, row, k
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="a `nudge-sim export --to` directory")
    ap.add_argument("--target", help="event_id,action,probability CSV (default: uniform)")
    ap.add_argument("--policy", help="only this logging policy")
    ap.add_argument("--as-of", help="RFC 3339 instant windows are judged at (default: now)")
    ap.add_argument("--nudge-sim", default="target/release/nudge-sim")
    a = ap.parse_args()
    as_of = (
        datetime.fromisoformat(a.as_of.replace("Z", "+00:00"))
        if a.as_of
        else datetime.now(timezone.utc)
    )
    as_of_text = as_of.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    files = os.path.join(a.export, "**", "*.parquet")
    con = duckdb.connect()
    params = {"files": files, "policy": a.policy}
    tmp = tempfile.mkdtemp()
    target = a.target
    if target is None:
        target = os.path.join(tmp, "uniform_target.csv")
        con.execute(f"COPY ({UNIFORM}) TO '{target}' (HEADER)", params)
    con.execute(
        "CREATE TABLE target AS SELECT event_id::VARCHAR AS event_id, "
        "action::VARCHAR AS action, probability::DOUBLE AS probability "
        "FROM read_csv($t, header = true, all_varchar = true)",
        {"t": target},
    )
    n, open_, ipw, snipw = con.execute(IPW, {**params, "as_of": as_of}).fetchone()

    cmd = [
        a.nudge_sim, "evaluate", "--log", a.export, "--target-probs", target,
        "--estimators", "ipw,snipw", "--bootstrap", "0", "--format", "json",
        "--as-of", as_of_text,
    ]
    if a.policy:
        cmd += ["--policy-id", a.policy]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        # Nothing final yet: nudge-sim refuses to evaluate and says until
        # when; the query must find nothing to evaluate either.
        print(f"nudge-sim: {run.stderr.strip()}")
        print(f"DuckDB: {n} events evaluated, {open_} left open")
        sys.exit(0 if n == 0 and "no event to evaluate" in run.stderr else 1)
    ev = json.loads(run.stdout.strip().splitlines()[0])
    ours = {k: v["value"] for k, v in ev["estimates"].items()}
    ours_open = ev["reward_windows"]["open"]

    print(f"export {a.export}, as of {as_of_text}, target {target}")
    print("| figure | DuckDB | nudge-sim | abs. difference |")
    print("|---|---|---|---|")
    print(f"| events evaluated | {n} | {ev['n']} | |")
    print(f"| events left open | {open_} | {ours_open} | |")
    bad = n != ev["n"] or open_ != ours_open
    for name, v in [("ipw", ipw), ("snipw", snipw)]:
        d = abs(v - ours[name])
        bad |= not d <= 1e-12
        print(f"| {name} | {v!r} | {ours[name]!r} | {d:.1e} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
