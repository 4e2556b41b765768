-- Extends the rebuild lease KEYS[1] by ARGV[2] ms if ARGV[1] still holds it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
