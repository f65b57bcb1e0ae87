-- KEYS[1] snapshot hash, KEYS[2] learned stream
-- ARGV: blob of a fresh model
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local cursor = redis.call('HGET', KEYS[1], 'cursor') or '0-0'
if #last > 0 then cursor = last[1][1] end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'cursor', cursor)
redis.call('XTRIM', KEYS[2], 'MINID', cursor)
return 1
