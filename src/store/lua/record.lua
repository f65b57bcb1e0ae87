-- KEYS[1] event hash, KEYS[2] due zset
-- ARGV: event_id, deadline_ms, ttl_ms, deferred(0/1), response, n, then n x (action, arm, x)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'rs')
end
local n = tonumber(ARGV[6])
-- Only what is known now; flags and sums start absent (= 0, not learned).
local fields = {'dl', ARGV[2], 'df', ARGV[4], 'rs', ARGV[5], 'n', ARGV[6]}
for j = 0, n - 1 do
  local b = 7 + 3 * j
  fields[#fields + 1] = 'a' .. j
  fields[#fields + 1] = ARGV[b]
  fields[#fields + 1] = 'm' .. j
  fields[#fields + 1] = ARGV[b + 1]
  fields[#fields + 1] = 'x' .. j
  fields[#fields + 1] = ARGV[b + 2]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return false
