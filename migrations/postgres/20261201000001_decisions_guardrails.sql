-- Guardrail facts of a decision (user, time zone, forced fallback, delivery
-- time); NULL for policies without guardrails. Added to the partitioned
-- parent, so every partition has it.
ALTER TABLE decisions ADD COLUMN guardrails JSON;
