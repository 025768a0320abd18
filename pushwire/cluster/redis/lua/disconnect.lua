-- ARGV[3] app. One connection fewer on this node.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local key = K_conn(ARGV[3])
if num(redis.call('HGET', key, NODE)) > 1 then
  redis.call('HINCRBY', key, NODE, -1)
else
  redis.call('HDEL', key, NODE)
end
return 1
