-- Counts a send in a budget window unless the budget is spent.
-- KEYS[1] the window's counter; KEYS[2] (optional) the event's dedupe key,
-- for sends without a user (same hash tag)
-- ARGV: max, ttl_ms
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 'duplicate' end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return 'spent' end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if KEYS[2] then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
return 'ok'
