-- ARGV[3] app, ARGV[4] channel, ARGV[5] '1' for a presence member, ARGV[6] user id,
-- ARGV[7] user_info JSON, ARGV[8] member limit.
-- Returns {-1} when the channel is full (nothing changed), else
-- {subscribers after, occupied 0/1, member_added 0/1, version, {uid, info, ...}}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, ch = ARGV[3], ARGV[4]
local added, version, members = 0, 0, {}
if ARGV[5] == '1' then
  local uid = ARGV[6]
  added, version, members = member_join(app, ch, K_pmn(app, NODE), ch .. '\n' .. uid, uid,
                                        ARGV[7], tonumber(ARGV[8]))
  if added == nil then return {-1} end
end
redis.call('HINCRBY', K_chn(app, ch), NODE, 1)
redis.call('HINCRBY', K_cnn(app, NODE), ch, 1)
local total = redis.call('HINCRBY', K_chs(app), ch, 1)
redis.call('SADD', K_node_apps(NODE), app)
local occupied = 0
if total == 1 then occupied = 1 end
return {total, occupied, added, version, members}
