-- Stores a new decision; a retry gets the first blob back, and changes
-- nothing.
-- KEYS[1] event blob, KEYS[2] the shard's due buckets (zset), KEYS[3] the
-- due list of the event's bucket, KEYS[4] the policy's pending count
-- ARGV: blob, ttl_ms, due bucket, event_id
local old = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if old then return old end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[3])
redis.call('INCR', KEYS[4])
return false
