-- Shared helpers (prepended to every script).
-- Stream ids are "<ms>-<seq>"; compare them numerically.
local function sid(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function sid_gt(a, b)
  local am, as = sid(a)
  local bm, bs = sid(b)
  if am ~= bm then return am > bm end
  return as > bs
end
-- XADD one learned slot of event hash `key`.
local function learn(stream, key, event_id, j, reward, is_default)
  local f = redis.call('HMGET', key, 'a' .. j, 'm' .. j, 'x' .. j)
  redis.call('HSET', key, 'st' .. j, '1')
  return redis.call('XADD', stream, '*', 'e', event_id, 'a', f[1], 'm', f[2], 'x', f[3],
    'r', reward, 'd', is_default)
end
