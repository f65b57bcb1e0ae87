-- One row per decision (the embedded log). JSON is stored as TEXT,
-- timestamps as RFC 3339 TEXT in UTC (they sort chronologically), booleans
-- as 0/1.
CREATE TABLE decisions (
    event_id       TEXT    NOT NULL PRIMARY KEY,
    policy         TEXT    NOT NULL,
    policy_version INTEGER NOT NULL,
    model_version  INTEGER NOT NULL,
    decided_at     TEXT    NOT NULL,
    context        TEXT    NOT NULL,
    actions        TEXT,
    candidates     TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    probability    REAL    NOT NULL,
    slate          TEXT,
    deferred       BOOLEAN NOT NULL,
    activated_at   TEXT,
    degraded       BOOLEAN NOT NULL
);
