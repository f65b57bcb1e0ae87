-- KEYS[1] snapshot hash
-- ARGV: blob of a fresh model, the cursor it starts after
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'cursor', ARGV[2])
return 1
