-- ARGV[3] app, ARGV[4] channel, ARGV[5] payload, ARGV[6] ttl in ms (<= 0: drop it).
if not registered(NODE) then return redis.error_reply('NOTREG') end
local key, ttl = K_cache(ARGV[3], ARGV[4]), tonumber(ARGV[6])
if ttl > 0 then
  redis.call('SET', key, ARGV[5], 'PX', ARGV[6])
else
  redis.call('DEL', key)
end
return 1
