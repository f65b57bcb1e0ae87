-- Shadow challengers' distributions over the decision's eligible
-- candidates, `{"<challenger>": {"<action>": probability, ...}}`; NULL for
-- policies without challengers.
ALTER TABLE decisions ADD COLUMN challengers TEXT;
