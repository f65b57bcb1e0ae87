-- The simulator reads one policy's decisions over a time range.
CREATE INDEX decisions_policy_decided_at ON decisions (policy, decided_at);
