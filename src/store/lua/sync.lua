-- KEYS[1] snapshot hash, KEYS[2] learned stream
-- ARGV: replica epoch ('' = none), replica cursor, limit
local s = redis.call('HMGET', KEYS[1], 'epoch', 'cursor')
local epoch = s[1] or '0'
local cursor = s[2] or '0-0'
local reload = (epoch ~= ARGV[1]) or sid_gt(cursor, ARGV[2])
local from = ARGV[2]
if reload then from = cursor end
local entries = redis.call('XRANGE', KEYS[2], '(' .. from, '+', 'COUNT', ARGV[3])
if reload then
  return {epoch, cursor, redis.call('HGET', KEYS[1], 'blob') or '', entries}
end
return {epoch, false, false, entries}
