-- Joining rewards to their decisions.
CREATE INDEX rewards_event_id ON rewards (event_id);
