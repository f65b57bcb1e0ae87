-- KEYS[1] due zset, KEYS[2] learned stream
-- ARGV: now_ms, limit, event key prefix, state key prefix, default reward, sum(0/1)
-- Event keys share the policy's hash tag with KEYS, so the script stays
-- within one Redis Cluster slot.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, eid in ipairs(due) do
  redis.call('ZREM', KEYS[1], eid)
  local key = ARGV[3] .. eid
  local state = ARGV[4] .. eid
  local blob = redis.call('GET', key)
  if blob then
    local f = fields(blob)
    local ac = redis.call('HGET', state, 'ac')
    if f[3] == '1' and ac ~= '1' then
      out[#out + 1] = {eid, '', '', 'dropped'}
    else
      for j = 0, tonumber(f[5]) - 1 do
        local s = redis.call('HMGET', state, 'st' .. j, 's' .. j, 'c' .. j)
        if s[1] ~= '1' then
          local reward, is_default = ARGV[5], '1'
          if ARGV[6] == '1' and tonumber(s[3] or '0') > 0 then reward, is_default = s[2], '0' end
          learn(KEYS[2], state, eid, f, j, reward, is_default)
          out[#out + 1] = {eid, f[6 + 3 * j], reward, is_default}
        end
      end
      follow_ttl(state, key)
    end
  end
end
return out
