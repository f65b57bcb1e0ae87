-- One row per reward (explicit, or the policy default when the window
-- closed). `reward_id` is the hyphenated UUID as TEXT.
CREATE TABLE rewards (
    reward_id   TEXT    NOT NULL PRIMARY KEY,
    event_id    TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    reward      REAL    NOT NULL,
    signals     TEXT,
    is_default  BOOLEAN NOT NULL,
    received_at TEXT    NOT NULL
);
