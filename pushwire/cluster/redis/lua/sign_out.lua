-- ARGV[3] app, ARGV[4] user. Returns 1 when that was the user's last socket.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, uid = ARGV[3], ARGV[4]
local key = K_usr(app, uid)
local n = num(redis.call('HGET', key, NODE))
if n <= 0 then return 0 end
if n > 1 then
  redis.call('HINCRBY', key, NODE, -1)
  return 0
end
redis.call('HDEL', key, NODE)
redis.call('SREM', K_usn(app, NODE), uid)
if redis.call('EXISTS', key) == 0 then return 1 end
return 0
