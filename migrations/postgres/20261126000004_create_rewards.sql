-- One row per reward (explicit, or the policy default when the window
-- closed). Range-partitioned by arrival time like `decisions`; the primary
-- key includes the partition key.
CREATE TABLE rewards (
    reward_id   UUID             NOT NULL,
    event_id    TEXT             NOT NULL,
    policy      TEXT             NOT NULL,
    action      TEXT             NOT NULL,
    reward      DOUBLE PRECISION NOT NULL,
    signals     JSON,
    is_default  BOOLEAN          NOT NULL,
    received_at TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (reward_id, received_at)
) PARTITION BY RANGE (received_at);
