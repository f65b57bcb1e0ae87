-- KEYS[1] due zset, KEYS[2] learned stream
-- ARGV: now_ms, limit, event key prefix, default reward, sum(0/1)
-- Event hashes share the policy's hash tag with KEYS, so the script stays
-- within one Redis Cluster slot.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, eid in ipairs(due) do
  redis.call('ZREM', KEYS[1], eid)
  local key = ARGV[3] .. eid
  if redis.call('EXISTS', key) == 1 then
    local h = redis.call('HMGET', key, 'df', 'ac', 'n')
    if h[1] == '1' and h[2] ~= '1' then
      out[#out + 1] = {eid, '', '', 'dropped'}
    else
      for j = 0, tonumber(h[3]) - 1 do
        local s = redis.call('HMGET', key, 'st' .. j, 's' .. j, 'c' .. j, 'a' .. j)
        if s[1] ~= '1' then
          local reward, is_default = ARGV[4], '1'
          if ARGV[5] == '1' and tonumber(s[3] or '0') > 0 then reward, is_default = s[2], '0' end
          learn(KEYS[2], key, eid, j, reward, is_default)
          out[#out + 1] = {eid, s[4], reward, is_default}
        end
      end
    end
  end
end
return out
