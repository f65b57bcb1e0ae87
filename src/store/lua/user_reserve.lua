-- Adds a send to a user's history if it is still at the version the
-- decision read (and the event's send is not there yet).
-- KEYS[1] the user's hash: field '#v' the version, one field per event id
--         with 'at|policy|arm|groups|outcome'
-- ARGV: event_id, record text, expected version, retention_ms, now_ms,
--       max_sends
local h = KEYS[1]
if redis.call('HEXISTS', h, ARGV[1]) == 1 then return 'duplicate' end
local v = redis.call('HGET', h, '#v') or '0'
if v ~= ARGV[3] then return 'conflict' end
redis.call('HSET', h, ARGV[1], ARGV[2])
redis.call('HINCRBY', h, '#v', 1)
-- Forget sends older than the retention, then the oldest beyond the bound.
local now, keep = tonumber(ARGV[5]), tonumber(ARGV[4])
local all = redis.call('HGETALL', h)
local n, oldest, oldest_at = 0, nil, nil
for i = 1, #all, 2 do
  local f = all[i]
  if f ~= '#v' then
    local at = tonumber(string.match(all[i + 1], '^(-?%d+)|'))
    if at == nil or at < now - keep then
      redis.call('HDEL', h, f)
    else
      n = n + 1
      if oldest_at == nil or at < oldest_at then oldest, oldest_at = f, at end
    end
  end
end
if n > tonumber(ARGV[6]) and oldest then redis.call('HDEL', h, oldest) end
if redis.call('PTTL', h) < keep then redis.call('PEXPIRE', h, keep) end
return 'ok'
