-- A page of the board. KEYS: set, ready; ARGV: first and last 0-based rank.
-- {0} when not ready; {1, total, "member\nscore\nmember\nscore..."}: the
-- range as one string, one reply frame instead of two per entry (members
-- cannot hold a newline: names refuse control characters).
if redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
return {1, redis.call('ZCARD', KEYS[1]),
        table.concat(redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES'), '\n')}
