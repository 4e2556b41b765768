-- One step of a scan of the whole board, for loading a copy. KEYS: members,
-- set, stats; ARGV: HSCAN cursor, count. Returns {next cursor, key, member,
-- score, value, ...}; tombstones and half-written entries are skipped.
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = reply[2]
local out = {reply[1]}
for i = 1, #fields, 2 do
  local key, member = fields[i], fields[i + 1]
  local score = redis.call('ZSCORE', KEYS[2], member)
  local value = redis.call('HGET', KEYS[3], key)
  if score and value then
    out[#out + 1] = key
    out[#out + 1] = member
    out[#out + 1] = score
    out[#out + 1] = value
  end
end
return out
