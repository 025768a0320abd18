-- ARGV[3] app, ARGV[4] channel, ARGV[5] '1' when a presence user id is given, ARGV[6] it.
-- Returns {subscribers after, vacated 0/1, member_removed 0/1, version}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, ch = ARGV[3], ARGV[4]
local removed, version = 0, 0
if ARGV[5] == '1' then
  local uid = ARGV[6]
  removed, version = member_leave(app, ch, K_pmn(app, NODE), ch .. '\n' .. uid, uid)
end
local chs = K_chs(app)
local total = num(redis.call('HGET', chs, ch))
local mine = num(redis.call('HGET', K_chn(app, ch), NODE))
local vacated = 0
if mine > 1 then
  redis.call('HINCRBY', K_chn(app, ch), NODE, -1)
  redis.call('HINCRBY', K_cnn(app, NODE), ch, -1)
  total = redis.call('HINCRBY', chs, ch, -1)
elseif mine == 1 then
  redis.call('HDEL', K_chn(app, ch), NODE)
  redis.call('HDEL', K_cnn(app, NODE), ch)
  total = redis.call('HINCRBY', chs, ch, -1)
  if total <= 0 then
    redis.call('HDEL', chs, ch)
    total = 0
    vacated = 1
  end
end
return {total, vacated, removed, version}
