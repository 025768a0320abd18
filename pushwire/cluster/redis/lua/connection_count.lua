-- ARGV[3] app. Returns the open connections of the deployment.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local total = 0
for _, v in ipairs(redis.call('HVALS', K_conn(ARGV[3]))) do total = total + tonumber(v) end
return total
