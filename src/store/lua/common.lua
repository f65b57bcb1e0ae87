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
-- An event blob is a list of "<len>:<bytes>" fields (see redis.rs):
-- [1] format, [2] deadline ms, [3] deferred, [4] response, [5] slots n, then
-- per slot j (0-based) [6+3j] action, [7+3j] arm, [8+3j] x.
local function fields(blob)
  local out, pos = {}, 1
  while pos <= #blob do
    local colon = string.find(blob, ':', pos, true)
    local len = tonumber(string.sub(blob, pos, colon - 1))
    out[#out + 1] = string.sub(blob, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end
-- The deadline: moved by an activation, else the decision's.
local function deadline(f, state)
  return tonumber(state or f[2])
end
-- Keeps the state hash no longer than its event.
local function follow_ttl(state_key, event_key)
  local ttl = redis.call('PTTL', event_key)
  if ttl > 0 then redis.call('PEXPIRE', state_key, ttl) end
end
-- XADD slot j of an event to the learned stream and mark it learned.
local function learn(stream, state_key, event_id, f, j, reward, is_default)
  redis.call('HSET', state_key, 'st' .. j, '1')
  return redis.call('XADD', stream, '*', 'e', event_id, 'a', f[6 + 3 * j], 'm', f[7 + 3 * j],
    'x', f[8 + 3 * j], 'r', reward, 'd', is_default)
end
