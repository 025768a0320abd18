-- ARGV[3] app, ARGV[4] channel. Returns {uid, info JSON, ...}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
return redis.call('HGETALL', K_pm(ARGV[3], ARGV[4]))
