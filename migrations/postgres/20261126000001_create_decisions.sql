-- One row per decision, with the propensities needed for off-policy
-- evaluation. Range-partitioned by decision time so the table can grow
-- without bound: the writer creates monthly partitions ahead of time; the
-- primary key includes the partition key, as PostgreSQL requires.
-- JSON columns are `json`, not `jsonb`: the log is written far more than it
-- is read, `json` keeps the caller's text exactly as sent, and it costs the
-- server a validation instead of a conversion per row; queries cast to jsonb
-- where they need its operators.
CREATE TABLE decisions (
    event_id       TEXT             NOT NULL,
    policy         TEXT             NOT NULL,
    policy_version INTEGER          NOT NULL,
    model_version  BIGINT           NOT NULL,
    decided_at     TIMESTAMPTZ      NOT NULL,
    context        JSON             NOT NULL,
    actions        JSON,
    candidates     JSON             NOT NULL,
    action         TEXT             NOT NULL,
    probability    DOUBLE PRECISION NOT NULL,
    slate          JSON,
    deferred       BOOLEAN          NOT NULL,
    activated_at   TIMESTAMPTZ,
    degraded       BOOLEAN          NOT NULL,
    PRIMARY KEY (event_id, decided_at)
) PARTITION BY RANGE (decided_at);
