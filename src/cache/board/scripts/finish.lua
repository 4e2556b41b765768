-- Ends a rebuild: marks the board ready (KEYS[1]) with the rebuild's token
-- ARGV[1] as its generation, if that rebuild still holds the lease KEYS[2].
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
