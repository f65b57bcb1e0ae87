-- spark.read.parquet("s3://…/nudge-export").createOrReplaceTempView("nudge_log")
-- spark.read.parquet("s3://…/scores").createOrReplaceTempView("target")  -- event_id, action, probability
WITH log AS (
  SELECT event_id, action, probability,
         CASE
           WHEN reward_final AND coalesce(reward, default_reward) IS NOT NULL
             THEN coalesce(reward, default_reward)
           WHEN window_closes_at IS NULL THEN reward
           WHEN window_closes_at <= TIMESTAMP '2026-12-04 12:00:00 UTC'
             THEN coalesce(reward, default_reward)
         END AS outcome
  FROM nudge_log
  WHERE policy = 'push_send' AND date >= DATE '2026-11-01'
),
weighted AS (
  SELECT l.outcome, coalesce(t.probability, 0D) / l.probability AS w
  FROM log l LEFT JOIN target t ON t.event_id = l.event_id AND t.action = l.action
  WHERE l.outcome IS NOT NULL
)
SELECT count(*) AS n, avg(w * outcome) AS ipw, sum(w * outcome) / sum(w) AS snipw
FROM weighted
