-- KEYS[1] event blob, KEYS[2] event state hash, KEYS[3] learned stream
-- ARGV: event_id, action ('' = the chosen one), reward, sum(0/1), now_ms,
-- reward id ('' = none), policy: a reward id seen before for this event is
-- not applied again (a replay after a timeout or a crash), answered
-- 'duplicate'.
local f = event_of(KEYS[1], ARGV[7])
if not f then return {'unknown_event', ''} end
local h = redis.call('HMGET', KEYS[2], 'ac', 'dl')
if f[4] == '1' and h[1] ~= '1' then return {'not_activated', ''} end
local j = 0
if ARGV[2] ~= '' then
  j = -1
  for i = 0, tonumber(f[6]) - 1 do
    if action_of(f, i) == ARGV[2] then j = i break end
  end
  if j < 0 then return {'unknown_action', ''} end
end
local rid = ARGV[6] or ''
if rid ~= '' and redis.call('HEXISTS', KEYS[2], 'r:' .. rid) == 1 then
  return {'duplicate', action_of(f, j)}
end
if tonumber(ARGV[5]) > deadline(f, h[2]) then return {'expired', ''} end
if redis.call('HGET', KEYS[2], 'st' .. j) == '1' then return {'already_rewarded', ''} end
local action = action_of(f, j)
if rid ~= '' then redis.call('HSET', KEYS[2], 'r:' .. rid, '1') end
if ARGV[4] == '1' then
  redis.call('HINCRBYFLOAT', KEYS[2], 's' .. j, ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'c' .. j, 1)
  follow_ttl(KEYS[2], KEYS[1])
  return {'accumulated', action}
end
learn(KEYS[3], KEYS[2], ARGV[1], f, j, ARGV[3], '0')
follow_ttl(KEYS[2], KEYS[1])
return {'learned', action}
