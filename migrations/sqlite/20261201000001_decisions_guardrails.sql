-- Guardrail facts of a decision (user, time zone, forced fallback, delivery
-- time); NULL for policies without guardrails.
ALTER TABLE decisions ADD COLUMN guardrails TEXT;
