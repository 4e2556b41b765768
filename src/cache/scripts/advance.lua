-- A delivery round applied every change numbered after ARGV[1] up to
-- ARGV[2]: move `delivered` (KEYS[1]) there, then past any numbers waiting
-- in `ahead` (KEYS[2]). Refuses (-1) when `delivered` is now below where
-- the round started or missing: Redis lost data meanwhile, and the changes
-- in between were not delivered again.
local delivered = tonumber(redis.call('GET', KEYS[1]) or '-1')
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
if delivered < from then return -1 end
if to > delivered then delivered = to end
while redis.call('ZSCORE', KEYS[2], string.format('%d', delivered + 1)) do
  delivered = delivered + 1
end
redis.call('SET', KEYS[1], string.format('%d', delivered))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', delivered)
return delivered
