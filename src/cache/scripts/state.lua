-- Where Redis stands for a delivery round, in one call. KEYS: delivered,
-- ahead, ready, building. ARGV[1]: how many `ahead` numbers to return.
-- Returns {delivered or '' when missing, ready (0/1), building (0/1),
-- ahead numbers...}.
local out = {redis.call('GET', KEYS[1]) or '',
             redis.call('EXISTS', KEYS[3]), redis.call('EXISTS', KEYS[4])}
for _, seq in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  out[#out + 1] = seq
end
return out
