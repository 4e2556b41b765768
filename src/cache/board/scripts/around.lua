-- The window around a user. KEYS: set, members, ready; ARGV: name key,
-- window size. {0} when not ready; {1, -1} when the user is unranked;
-- {1, start, total, "member\nscore\n..."} (see page.lua). The window rule is
-- `domain::window_start`'s: centred, then clamped to the board.
if redis.call('EXISTS', KEYS[3]) == 0 then return {0} end
local member = redis.call('HGET', KEYS[2], ARGV[1])
if (not member) or string.sub(member, 1, 1) == '~' then return {1, -1} end
local index = redis.call('ZREVRANK', KEYS[1], member)
if not index then return {0} end
local total = redis.call('ZCARD', KEYS[1])
local size = tonumber(ARGV[2])
local start = index - math.floor((size - 1) / 2)
if start > total - size then start = total - size end
if start < 0 then start = 0 end
return {1, start, total,
        table.concat(redis.call('ZREVRANGE', KEYS[1], start, start + size - 1, 'WITHSCORES'), '\n')}
