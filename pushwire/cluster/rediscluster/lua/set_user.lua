-- Resync or reaping of one node's signed-in sockets of one user (its slot): ARGV[3] app,
-- ARGV[4] user, ARGV[5] the node, ARGV[6] its incarnation, ARGV[7] 'sync' or 'reap',
-- ARGV[8] its sockets (sync). As set_channel.lua. Returns {online 0/1, offline 0/1, holds}.
local app, uid, node, inc, mode = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local own = K_uown(app, uid, node)
local step = records_step(own, inc, mode)
if step == 'refuse' then return redis.error_reply('NOTREG') end
if step == 'skip' then return {0, 0, 0} end
local want = 0
if mode == 'sync' then want = positive(ARGV[8]) end
local key = K_usr(app, uid)
local had = redis.call('EXISTS', key)
if want > 0 then
  redis.call('HSET', key, node, int(want))
else
  redis.call('HDEL', key, node)
end
local has = redis.call('EXISTS', key)
records_done(own, inc, mode, want > 0)
local online, offline, holds = 0, 0, 0
if has == 1 and had == 0 then online = 1 end
if had == 1 and has == 0 then offline = 1 end
if want > 0 then holds = 1 end
return {online, offline, holds}
