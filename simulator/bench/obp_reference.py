"""The Python reference for the OPE benchmark: Open Bandit Pipeline (obp
0.5.7) on the files of gen_ope_bench.py, timed in two parts (reading the
files with pandas, CSV or Parquet through pyarrow; estimating IPW, SNIPW,
DM and DR with obp).

    /work/venv-obp/bin/python obp_reference.py DIR [csv|parquet]
"""

import json
import sys
import time

import numpy as np
import pandas as pd
from obp.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    OffPolicyEvaluation,
    SelfNormalizedInverseProbabilityWeighting,
)

d = sys.argv[1]
fmt = sys.argv[2] if len(sys.argv) > 2 else "csv"
read = pd.read_csv if fmt == "csv" else pd.read_parquet
t0 = time.perf_counter()
log = read(f"{d}/log.{fmt}")
target = read(f"{d}/target.{fmt}")
q = read(f"{d}/q.{fmt}")
n = len(log)
k = len(target) // n
# Files list every event's actions in order: reshape, checking the layout.
assert (target["event_id"].values == np.repeat(np.arange(n), k)).all()
assert (q["event_id"].values == np.repeat(np.arange(n), k)).all()
action_dist = target["probability"].values.reshape(n, k)[:, :, None]
q_hat = q["estimate"].values.reshape(n, k)[:, :, None]
feedback = {
    "n_rounds": n,
    "n_actions": k,
    # OffPolicyEvaluation requires the key; the estimators here do not use it.
    "context": log[[c for c in log.columns if c.startswith("user_feature_")]].values,
    "action": log["item_id"].values,
    "reward": log["click"].values,
    "pscore": log["propensity_score"].values,
    "position": None,
}
t1 = time.perf_counter()
ope = OffPolicyEvaluation(
    bandit_feedback=feedback,
    ope_estimators=[
        InverseProbabilityWeighting(),
        SelfNormalizedInverseProbabilityWeighting(),
        DirectMethod(),
        DoublyRobust(),
    ],
)
values = ope.estimate_policy_values(action_dist=action_dist, estimated_rewards_by_reg_model=q_hat)
t2 = time.perf_counter()
print(json.dumps({
    "read_s": round(t1 - t0, 3),
    "estimate_s": round(t2 - t1, 3),
    "total_s": round(t2 - t0, 3),
    "values": {k: float(v) for k, v in values.items()},
}))
