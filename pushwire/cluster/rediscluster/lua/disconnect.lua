-- ARGV[3] app. One app's slot. One connection fewer on this node. Returns holds 0/1.
local app = ARGV[3]
local own, key = K_aown(app, NODE), K_conn(app)
if not writable(own) then return redis.error_reply('NOTREG') end
if num(redis.call('HGET', key, NODE)) > 1 then
  redis.call('HINCRBY', key, NODE, -1)
else
  redis.call('HDEL', key, NODE)
end
local holds = redis.call('HEXISTS', key, NODE)
settle(own, holds == 1)
return holds
