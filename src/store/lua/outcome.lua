-- Records the reward of a user's send: replaces the last '|' field.
-- KEYS[1] the user's hash; ARGV: event_id, outcome
local r = redis.call('HGET', KEYS[1], ARGV[1])
if not r then return 0 end
local head = string.match(r, '^(.*|)[^|]*$')
if not head then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], head .. ARGV[2])
return 1
