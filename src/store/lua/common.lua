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
-- An event blob is a list of "<len>:<bytes>" fields (see redis/blob.rs):
-- [1] format "2", [2] policy, [3] deadline ms, [4] deferred, [5] response,
-- [6] slots n, then per slot j (0-based) [7+3j] action, [8+3j] arm,
-- [9+3j] x (compact encoding, copied as is).
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
local function action_of(f, j) return f[7 + 3 * j] end
-- The event's blob, if it exists and belongs to `policy`.
local function event_of(key, policy)
  local blob = redis.call('GET', key)
  if not blob then return nil end
  local f = fields(blob)
  if f[1] ~= '2' or f[2] ~= policy then return nil end
  return f
end
-- The deadline: moved by an activation, else the decision's.
local function deadline(f, state)
  return tonumber(state or f[3])
end
-- Keeps the state hash no longer than its event.
local function follow_ttl(state_key, event_key)
  local ttl = redis.call('PTTL', event_key)
  if ttl > 0 then redis.call('PEXPIRE', state_key, ttl) end
end
-- XADD slot j of an event to the learned stream and mark it learned.
local function learn(stream, state_key, event_id, f, j, reward, is_default)
  redis.call('HSET', state_key, 'st' .. j, '1')
  return redis.call('XADD', stream, '*', 'e', event_id, 'a', f[7 + 3 * j], 'm', f[8 + 3 * j],
    'v', f[9 + 3 * j], 'r', reward, 'd', is_default)
end
