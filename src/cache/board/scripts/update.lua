-- Applies board entries (4 arguments each from ARGV[4]: name key, member,
-- score, stats value) by the forward-only rules, so that the same entries
-- in any order leave the same board:
-- - a user's entry moves only to a later sequence number (the member's
--   first 16 digits are (2^53 - 1) - seq: lower means later), and their
--   stats only to a higher games_played (the value's first 20 digits);
-- - when the name is held by another user (another id in the member), the
--   later user (higher seq) takes both entry and stats, the earlier one's
--   update is ignored;
-- - a tombstone (`~` and a deleted user's id) stops that user's late
--   updates; another user replaces it.
-- ARGV[1]: 'live' (log every change, then mark outbox number ARGV[3] as
-- delivered) or 'load:TOKEN' (a rebuild loading its snapshot: applied only
-- while KEYS[9] still holds TOKEN, not logged: copies load the finished set).
-- ARGV[2]: the log's length. Returns {ready, 0-based rank of the last
-- entry's member}; rank -2 when that entry met a tombstone; {-1, -1} when a
-- load's token is stale.
-- KEYS: set, members, stats, ready, version, log, delivered, ahead, building.
local live = ARGV[1] == 'live'
if not live and redis.call('GET', KEYS[9]) ~= string.sub(ARGV[1], 6) then
  return {-1, -1}
end
for i = 4, #ARGV, 4 do
  local key, member, score, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local id = string.sub(member, 17, 52)
  local later = tonumber(string.sub(member, 1, 16))
  local old = redis.call('HGET', KEYS[2], key)
  local apply = true
  local takeover = false
  if old and string.sub(old, 1, 1) == '~' then
    if string.sub(old, 2) == id then apply = false end
    old = nil
  elseif old and string.sub(old, 17, 52) ~= id then
    if tonumber(string.sub(old, 1, 16)) > later then takeover = true else apply = false end
  end
  if apply then
    local changed = false
    if (not old) or takeover or tonumber(string.sub(old, 1, 16)) > later then
      if old then redis.call('ZREM', KEYS[1], old) end
      redis.call('ZADD', KEYS[1], score, member)
      redis.call('HSET', KEYS[2], key, member)
      changed = true
    end
    local current = redis.call('HGET', KEYS[3], key)
    if takeover or (not current)
        or tonumber(string.sub(current, 1, 20)) < tonumber(string.sub(value, 1, 20)) then
      redis.call('HSET', KEYS[3], key, value)
      changed = true
    end
    if live and changed then
      local version = redis.call('INCR', KEYS[5])
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], string.format('%d-0', version),
                 'k', key, 'm', member, 's', score, 'v', value)
    end
  end
end
if live then mark_delivered(KEYS[7], KEYS[8], ARGV[3]) end
local ready = redis.call('EXISTS', KEYS[4])
local rank = -1
if #ARGV >= 7 then
  local member = redis.call('HGET', KEYS[2], ARGV[#ARGV - 3])
  if member and string.sub(member, 1, 1) == '~' then
    rank = -2
  elseif member then
    rank = redis.call('ZREVRANK', KEYS[1], member) or -1
  end
end
return {ready, rank}
