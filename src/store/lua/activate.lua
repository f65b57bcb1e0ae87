-- KEYS[1] event blob, KEYS[2] event state hash, KEYS[3] the shard's due
-- buckets, KEYS[4] the due list of the new deadline's bucket
-- ARGV: event_id, now_ms, new deadline, keep_ms (window + retention),
-- new due bucket, policy
local f = event_of(KEYS[1], ARGV[6])
if not f then return 'unknown_event' end
if f[4] ~= '1' then return 'not_deferred' end
local h = redis.call('HMGET', KEYS[2], 'ac', 'dl')
if h[1] == '1' then return 'already_active' end
if tonumber(ARGV[2]) > deadline(f, h[2]) then return 'expired' end
redis.call('HSET', KEYS[2], 'ac', '1', 'dl', ARGV[3])
-- The old due list still names the event; the sweep skips it there (its
-- deadline moved) and closes it from the new one.
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'activated'
