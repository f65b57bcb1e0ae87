-- Catches decisions outside every monthly partition (clock skew, a month the
-- writer has not created yet), so an insert never fails for lack of one.
CREATE TABLE decisions_default PARTITION OF decisions DEFAULT;
