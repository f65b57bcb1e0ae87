-- One shard's part of a sync: the node's clock, the trim point and the
-- entries after the replica's position.
-- KEYS[1] learned stream, KEYS[2] trim point
-- ARGV: position ("ms-seq", exclusive), count
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local trim = redis.call('GET', KEYS[2]) or '0-0'
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {string.format('%d', now_ms), trim, entries}
