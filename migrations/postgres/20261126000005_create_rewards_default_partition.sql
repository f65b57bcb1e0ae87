-- Catches rewards outside every monthly partition.
CREATE TABLE rewards_default PARTITION OF rewards DEFAULT;
