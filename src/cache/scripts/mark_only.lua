-- KEYS: delivered, ahead. ARGV: the outbox number whose changes are in Redis.
mark_delivered(KEYS[1], KEYS[2], ARGV[1])
return 1
