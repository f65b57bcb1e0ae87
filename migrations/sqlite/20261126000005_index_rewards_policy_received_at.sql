-- The simulator reads one policy's rewards over a time range.
CREATE INDEX rewards_policy_received_at ON rewards (policy, received_at);
