-- Closes the windows of one shard of one policy that ended by now.
-- KEYS[1] due buckets (zset), KEYS[2] learned stream, KEYS[3] pending count
-- ARGV: now_ms, limit, event key prefix, state key prefix, due list prefix,
-- default reward, sum(0/1), policy, now (in due buckets)
-- Every key shares the shard's hash tag, so the script stays within one
-- Redis Cluster slot.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local buckets = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[9], 'LIMIT', 0, 64)
local out, seen, closed = {}, 0, 0
for _, b in ipairs(buckets) do
  if seen >= limit then break end
  local list = ARGV[5] .. b
  local ids = redis.call('LPOP', list, limit - seen)
  if redis.call('EXISTS', list) == 0 then redis.call('ZREM', KEYS[1], b) end
  for _, eid in ipairs(ids or {}) do
    seen = seen + 1
    local key, state = ARGV[3] .. eid, ARGV[4] .. eid
    local f = event_of(key, ARGV[8])
    if not f then
      -- Forgotten (its retention passed before a sweep came by).
      closed = closed + 1
    else
      local h = redis.call('HMGET', state, 'ac', 'dl')
      if deadline(f, h[2]) <= now then
        closed = closed + 1
        if f[4] == '1' and h[1] ~= '1' then
          out[#out + 1] = {eid, '', '', 'dropped'}
        else
          for j = 0, tonumber(f[6]) - 1 do
            local s = redis.call('HMGET', state, 'st' .. j, 's' .. j, 'c' .. j)
            if s[1] ~= '1' then
              local reward, is_default = ARGV[6], '1'
              if ARGV[7] == '1' and tonumber(s[3] or '0') > 0 then reward, is_default = s[2], '0' end
              learn(KEYS[2], state, eid, f, j, reward, is_default)
              out[#out + 1] = {eid, action_of(f, j), reward, is_default}
            end
          end
          follow_ttl(state, key)
        end
      end
      -- else: activated since; its new due list closes it.
    end
  end
end
if closed > 0 then
  local left = redis.call('DECRBY', KEYS[3], closed)
  if left <= 0 then redis.call('DEL', KEYS[3]) end
end
return out
