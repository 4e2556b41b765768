-- Starts a rebuild if no other replica is running one: takes the rebuild
-- lease (KEYS[1] = building) with token ARGV[1] for ARGV[2] ms, then empties
-- the board, ready marker first. KEYS[2..]: ready, set, members, stats,
-- version, log. Returns 1 when this caller now owns the rebuild.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) == false then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
return 1
