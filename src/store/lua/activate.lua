-- KEYS[1] event hash, KEYS[2] due zset
-- ARGV: event_id, now_ms, window_ms, retention_ms
if redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown_event' end
local h = redis.call('HMGET', KEYS[1], 'dl', 'df', 'ac')
if h[2] ~= '1' then return 'not_deferred' end
if h[3] == '1' then return 'already_active' end
if tonumber(ARGV[2]) > tonumber(h[1]) then return 'expired' end
local deadline = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'ac', '1', 'dl', deadline)
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]))
return 'activated'
