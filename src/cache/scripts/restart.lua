-- After a flush of every cached answer: `delivered` (KEYS[1]) restarts at
-- ARGV[2], the outbox head read before the flush began, if it still holds
-- what the round saw (ARGV[1]; '' for missing). Clears `ahead` (KEYS[2]).
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
