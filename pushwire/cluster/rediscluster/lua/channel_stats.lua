-- ARGV[3] app, ARGV[4] channel. One channel's slot. Returns {subscribers, members or -1}.
local app, ch = ARGV[3], ARGV[4]
local total = 0
for _, v in ipairs(redis.call('HVALS', K_chn(app, ch))) do total = total + tonumber(v) end
local users = -1
if string.sub(ch, 1, 9) == 'presence-' then users = redis.call('HLEN', K_pm(app, ch)) end
return {total, users}
