-- Removes the deleted user ARGV[2] (an id) from the board under name key
-- ARGV[1], and leaves a tombstone (`~` and the id) so that a game of theirs
-- that reaches Redis later cannot bring them back. A name already held by
-- another (later) user is left alone. Logs the removal (ARGV[3]: the log's
-- length), then marks outbox number ARGV[4] as delivered.
-- KEYS: set, members, stats, ready, version, log, delivered, ahead.
local key, id = ARGV[1], ARGV[2]
local member = redis.call('HGET', KEYS[2], key)
local tombstone = member and string.sub(member, 1, 1) == '~'
if member and (not tombstone) and string.sub(member, 17, 52) ~= id then
  mark_delivered(KEYS[7], KEYS[8], ARGV[4])
  return 0
end
local ranked = member and not tombstone
if ranked then redis.call('ZREM', KEYS[1], member) end
local removed = redis.call('HDEL', KEYS[3], key)
redis.call('HSET', KEYS[2], key, '~' .. id)
if ranked or removed > 0 then
  local version = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], string.format('%d-0', version), 'k', key)
end
mark_delivered(KEYS[7], KEYS[8], ARGV[4])
return 1
