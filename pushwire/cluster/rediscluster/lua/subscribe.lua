-- ARGV[3] app, ARGV[4] channel, ARGV[5] '1' for a presence member, ARGV[6] user id,
-- ARGV[7] user_info JSON, ARGV[8] member limit. One channel's slot.
-- Returns {-1, holds} when the channel is full (nothing changed), else {subscribers after,
-- occupied 0/1, member_added 0/1, version, {uid, info, ...}, occupancy version or 0, 1}.
-- The last element: 1 when this node holds records in the channel afterwards.
-- Error NOTREG: this node's records here belong to a reaped or a newer incarnation.
local app, ch = ARGV[3], ARGV[4]
local own, chn = K_cown(app, ch, NODE), K_chn(app, ch)
if not writable(own) then return redis.error_reply('NOTREG') end
local added, version, members = 0, 0, {}
if ARGV[5] == '1' then
  local uid = ARGV[6]
  added, version, members = member_join(app, ch, K_pmn(app, ch, NODE), uid, uid, ARGV[7],
                                        tonumber(ARGV[8]))
  if added == nil then
    local holds = redis.call('HEXISTS', chn, NODE)
    settle(own, holds == 1)
    return {-1, holds}
  end
end
redis.call('HINCRBY', chn, NODE, 1)
local total = 0
for _, v in ipairs(redis.call('HVALS', chn)) do total = total + tonumber(v) end
local occupied, cv = 0, 0
if total == 1 then
  occupied = 1
  cv = bump(K_cv(app, ch))
end
return {total, occupied, added, version, members, cv, 1}
