-- KEYS[1] snapshot hash
-- ARGV: blob, cursor ("ms-seq,…" one per shard), epoch
-- Saved only in the same epoch, and only if the new cursor is at or past
-- the stored one in every shard and past it in one.
local s = redis.call('HMGET', KEYS[1], 'epoch', 'cursor')
if (s[1] or '0') ~= ARGV[3] then return 0 end
local old = {}
for id in string.gmatch(s[2] or '0-0', '[^,]+') do old[#old + 1] = id end
local ahead, i = false, 0
for id in string.gmatch(ARGV[2], '[^,]+') do
  i = i + 1
  local o = old[i] or '0-0'
  if sid_gt(o, id) then return 0 end
  if sid_gt(id, o) then ahead = true end
end
for k = i + 1, #old do
  if sid_gt(old[k], '0-0') then return 0 end
end
if not ahead then return 0 end
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'cursor', ARGV[2])
return 1
