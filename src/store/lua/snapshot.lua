-- KEYS[1] snapshot hash, KEYS[2] learned stream
-- ARGV: blob, cursor, epoch
local s = redis.call('HMGET', KEYS[1], 'epoch', 'cursor')
if (s[1] or '0') ~= ARGV[3] then return 0 end
if not sid_gt(ARGV[2], s[2] or '0-0') then return 0 end
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'cursor', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[2])
return 1
