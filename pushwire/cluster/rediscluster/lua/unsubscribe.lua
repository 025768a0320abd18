-- ARGV[3] app, ARGV[4] channel, ARGV[5] '1' when a presence user id is given, ARGV[6] it.
-- One channel's slot. Returns {subscribers after, vacated 0/1, member_removed 0/1, version,
-- occupancy version or 0, holds 0/1 (this node still holds records in the channel)}.
-- Error NOTREG: this node's records here belong to a reaped or a newer incarnation.
local app, ch = ARGV[3], ARGV[4]
local own, chn = K_cown(app, ch, NODE), K_chn(app, ch)
if not writable(own) then return redis.error_reply('NOTREG') end
local removed, version = 0, 0
if ARGV[5] == '1' then
  removed, version = member_leave(app, ch, K_pmn(app, ch, NODE), ARGV[6], ARGV[6])
end
local mine = num(redis.call('HGET', chn, NODE))
if mine > 1 then
  redis.call('HINCRBY', chn, NODE, -1)
elseif mine == 1 then
  redis.call('HDEL', chn, NODE)
end
local total = 0
for _, v in ipairs(redis.call('HVALS', chn)) do total = total + tonumber(v) end
local vacated, cv = 0, 0
if mine == 1 and total == 0 then
  vacated = 1
  cv = bump(K_cv(app, ch))
end
local holds = redis.call('HEXISTS', chn, NODE)
settle(own, holds == 1)
return {total, vacated, removed, version, cv, holds}
