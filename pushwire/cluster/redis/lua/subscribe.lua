-- ARGV[3] app, ARGV[4] channel, ARGV[5] '1' for a presence member, ARGV[6] user id,
-- ARGV[7] user_info JSON, ARGV[8] member limit.
-- Returns {-1} when the channel is full (nothing changed), else
-- {subscribers after, occupied 0/1, member_added 0/1, version, {uid, info, ...}}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, ch = ARGV[3], ARGV[4]
local added, version, members = 0, 0, {}
if ARGV[5] == '1' then
  local uid, info, limit = ARGV[6], ARGV[7], tonumber(ARGV[8])
  local pm = K_pm(app, ch)
  local new = redis.call('HEXISTS', pm, uid) == 0
  if new and redis.call('HLEN', pm) >= limit then return {-1} end
  if redis.call('HINCRBY', K_pmn(app, NODE), ch .. '\n' .. uid, 1) == 1 then
    redis.call('HINCRBY', K_pmu(app, ch), uid, 1)
  end
  if new then
    redis.call('HSET', pm, uid, info)
    added = 1
    version = next_version(app, ch)
  else
    version = current_version(app, ch)
  end
  members = redis.call('HGETALL', pm)
end
redis.call('HINCRBY', K_chn(app, ch), NODE, 1)
redis.call('HINCRBY', K_cnn(app, NODE), ch, 1)
local total = redis.call('HINCRBY', K_chs(app), ch, 1)
redis.call('SADD', K_node_apps(NODE), app)
local occupied = 0
if total == 1 then occupied = 1 end
return {total, occupied, added, version, members}
