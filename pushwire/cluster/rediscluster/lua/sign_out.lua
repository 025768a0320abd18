-- ARGV[3] app, ARGV[4] user. One user's slot. Returns {1 when that was the user's last
-- socket else 0, holds 0/1}. Error NOTREG (see subscribe.lua).
local app, uid = ARGV[3], ARGV[4]
local own, key = K_uown(app, uid, NODE), K_usr(app, uid)
if not writable(own) then return redis.error_reply('NOTREG') end
local n = num(redis.call('HGET', key, NODE))
if n > 1 then
  redis.call('HINCRBY', key, NODE, -1)
  return {0, 1}
end
local last = 0
if n == 1 then
  redis.call('HDEL', key, NODE)
  if redis.call('EXISTS', key) == 0 then last = 1 end
end
settle(own, false)
return {last, 0}
