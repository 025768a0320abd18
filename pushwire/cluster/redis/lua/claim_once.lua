-- ARGV[3] key, ARGV[4] ttl in ms (>= 1). Returns 1 for the first caller within the ttl.
if not registered(NODE) then return redis.error_reply('NOTREG') end
if redis.call('SET', K_once(ARGV[3]), NODE, 'NX', 'PX', ARGV[4]) then return 1 end
return 0
