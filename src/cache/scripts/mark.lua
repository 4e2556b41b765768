-- Records that the changes of outbox number `seq` are in Redis. `delivered`
-- is the number up to which every change is in Redis; numbers that arrive
-- ahead of it wait in the sorted set `ahead` until the gap is filled.
-- Nothing happens while `delivered` is missing (a delivery round sets it).
local function mark_delivered(delivered_key, ahead_key, seq)
  seq = tonumber(seq)
  local delivered = tonumber(redis.call('GET', delivered_key) or '-1')
  if seq <= 0 or delivered < 0 or seq <= delivered then return end
  if seq == delivered + 1 then
    delivered = seq
    while redis.call('ZSCORE', ahead_key, string.format('%d', delivered + 1)) do
      delivered = delivered + 1
    end
    redis.call('SET', delivered_key, string.format('%d', delivered))
    redis.call('ZREMRANGEBYSCORE', ahead_key, '-inf', delivered)
  else
    redis.call('ZADD', ahead_key, seq, string.format('%d', seq))
  end
end
