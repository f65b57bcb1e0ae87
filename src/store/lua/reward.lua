-- KEYS[1] event hash, KEYS[2] learned stream
-- ARGV: event_id, action ('' = the chosen one), reward, sum(0/1), now_ms
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_event', ''} end
local h = redis.call('HMGET', KEYS[1], 'dl', 'df', 'ac', 'n')
if h[2] == '1' and h[3] ~= '1' then return {'not_activated', ''} end
local j = 0
if ARGV[2] ~= '' then
  j = -1
  for i = 0, tonumber(h[4]) - 1 do
    if redis.call('HGET', KEYS[1], 'a' .. i) == ARGV[2] then j = i break end
  end
  if j < 0 then return {'unknown_action', ''} end
end
if tonumber(ARGV[5]) > tonumber(h[1]) then return {'expired', ''} end
if redis.call('HGET', KEYS[1], 'st' .. j) == '1' then return {'already_rewarded', ''} end
local action = redis.call('HGET', KEYS[1], 'a' .. j)
if ARGV[4] == '1' then
  redis.call('HINCRBYFLOAT', KEYS[1], 's' .. j, ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'c' .. j, 1)
  return {'accumulated', action}
end
learn(KEYS[2], KEYS[1], ARGV[1], j, ARGV[3], '0')
return {'learned', action}
