-- The arm lists that compact `decisions.candidates` refer to (see
-- src/log/arms.rs): a disjoint decision stores {"set", "p", "x"} instead of
-- repeating every arm's id on every row.
CREATE TABLE arm_sets (
    id   TEXT NOT NULL PRIMARY KEY,
    arms JSON NOT NULL
);
