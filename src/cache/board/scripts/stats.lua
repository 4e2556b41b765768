-- A user's stats and rank. KEYS: set, members, stats, ready; ARGV[1]: name
-- key. {0} when the board is not ready; {1} when the user has no stats;
-- {1, value, 0-based rank}.
if redis.call('EXISTS', KEYS[4]) == 0 then return {0} end
local value = redis.call('HGET', KEYS[3], ARGV[1])
if not value then return {1} end
local member = redis.call('HGET', KEYS[2], ARGV[1])
local rank = member and redis.call('ZREVRANK', KEYS[1], member)
if not rank then return {0} end
return {1, value, rank}
