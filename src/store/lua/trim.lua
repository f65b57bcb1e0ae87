-- Drops a shard's entries before a snapshot's position in it.
-- KEYS[1] learned stream, KEYS[2] trim point; ARGV: position
local trim = redis.call('GET', KEYS[2]) or '0-0'
if not sid_gt(ARGV[1], trim) then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
