-- ARGV[3] app, ARGV[4] channel. Returns {} or {payload, remaining ms}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local key = K_cache(ARGV[3], ARGV[4])
local payload = redis.call('GET', key)
if not payload then return {} end
return {payload, redis.call('PTTL', key)}
