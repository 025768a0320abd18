-- ARGV[3] app, ARGV[4] channel. Returns {subscribers, members or -1}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, ch = ARGV[3], ARGV[4]
local n = num(redis.call('HGET', K_chs(app), ch))
local users = -1
if string.sub(ch, 1, 9) == 'presence-' then users = redis.call('HLEN', K_pm(app, ch)) end
return {n, users}
