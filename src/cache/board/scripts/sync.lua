-- Where a copy stands against Redis. KEYS: ready, version, log. ARGV: the
-- copy's generation, its log position, the first log id it lacks, and how
-- many entries to return. {0} when not ready; {1} when the generation is not
-- the copy's; {2, version} when the copy is current; {2, version, entries}
-- with the log entries after the copy's position otherwise.
local generation = redis.call('GET', KEYS[1])
if not generation then return {0} end
if generation ~= ARGV[1] then return {1} end
local version = redis.call('GET', KEYS[2]) or '0'
if tonumber(version) <= tonumber(ARGV[2]) then return {2, version} end
return {2, version, redis.call('XRANGE', KEYS[3], ARGV[3], '+', 'COUNT', ARGV[4])}
