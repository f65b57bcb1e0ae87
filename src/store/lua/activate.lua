-- KEYS[1] event blob, KEYS[2] event state hash, KEYS[3] due zset
-- ARGV: event_id, now_ms, window_ms, retention_ms
local blob = redis.call('GET', KEYS[1])
if not blob then return 'unknown_event' end
local f = fields(blob)
if f[3] ~= '1' then return 'not_deferred' end
local h = redis.call('HMGET', KEYS[2], 'ac', 'dl')
if h[1] == '1' then return 'already_active' end
local now = tonumber(ARGV[2])
if now > deadline(f, h[2]) then return 'expired' end
local new_deadline = now + tonumber(ARGV[3])
local keep = tonumber(ARGV[3]) + tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'ac', '1', 'dl', string.format('%d', new_deadline))
redis.call('ZADD', KEYS[3], new_deadline, ARGV[1])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 'activated'
