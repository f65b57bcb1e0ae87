-- Shadow challengers' distributions over the decision's eligible
-- candidates, `{"<challenger>": {"<action>": probability, ...}}`; NULL for
-- policies without challengers. On the partitioned parent, so every
-- partition has it.
ALTER TABLE decisions ADD COLUMN challengers JSON;
