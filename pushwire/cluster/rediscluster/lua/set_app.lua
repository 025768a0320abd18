-- Resync or reaping of one node's connection count in one app (its slot): ARGV[3] app,
-- ARGV[4] the node, ARGV[5] its incarnation, ARGV[6] 'sync' or 'reap', ARGV[7] its open
-- connections (sync). As set_channel.lua. Returns holds 0/1.
local app, node, inc, mode = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local own = K_aown(app, node)
local step = records_step(own, inc, mode)
if step == 'refuse' then return redis.error_reply('NOTREG') end
if step == 'skip' then return 0 end
local want = 0
if mode == 'sync' then want = positive(ARGV[7]) end
if want > 0 then
  redis.call('HSET', K_conn(app), node, int(want))
else
  redis.call('HDEL', K_conn(app), node)
end
records_done(own, inc, mode, want > 0)
if want > 0 then return 1 end
return 0
