"""Writes the OPE benchmark's input files (needs numpy and pandas).

    python gen_ope_bench.py DIR [N_EVENTS] [N_ACTIONS]

DIR/log.csv     an Open Bandit Dataset-layout log: timestamp, item_id,
                position, click, propensity_score, user_feature_0..4
DIR/target.csv  event_id,action,probability (a softmax candidate)
DIR/q.csv       event_id,action,estimate (a reward model)
Events are in file order; event ids are row numbers from 0.
"""

import os
import sys

import numpy as np
import pandas as pd

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(2026)

x = rng.normal(size=(n, 5))
theta = rng.normal(size=(5, k))
logits = x @ theta
q = 1.0 / (1.0 + np.exp(-(logits - 2.0)))
# Logging policy: a softmax of a noisy score with a 5% uniform floor.
pb = np.exp(0.5 * logits)
pb /= pb.sum(axis=1, keepdims=True)
pb = 0.95 * pb + 0.05 / k
u = rng.random(n)[:, None]
action = (pb.cumsum(axis=1) < u).sum(axis=1).clip(0, k - 1)
reward = (rng.random(n) < q[np.arange(n), action]).astype(int)
pe = np.exp(2.0 * logits)
pe /= pe.sum(axis=1, keepdims=True)

ts = pd.Timestamp("2026-11-01T00:00:00Z") + pd.to_timedelta(np.arange(n), unit="s")
log = pd.DataFrame({
    "timestamp": ts.astype(str),
    "item_id": action,
    "position": np.zeros(n, dtype=int),
    "click": reward,
    "propensity_score": pb[np.arange(n), action],
})
for j in range(5):
    log[f"user_feature_{j}"] = x[:, j]
log.to_csv(os.path.join(out, "log.csv"), index=False)

ids = np.repeat(np.arange(n), k)
acts = np.tile(np.arange(k), n)
pd.DataFrame({"event_id": ids, "action": acts, "probability": pe.ravel()}).to_csv(
    os.path.join(out, "target.csv"), index=False)
q_hat = np.clip(q + rng.normal(scale=0.05, size=q.shape), 0, 1)
pd.DataFrame({"event_id": ids, "action": acts, "estimate": q_hat.ravel()}).to_csv(
    os.path.join(out, "q.csv"), index=False)
print(f"wrote {n} events x {k} actions to {out}")
