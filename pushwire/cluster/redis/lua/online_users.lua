-- ARGV[3] app, ARGV[4..] user ids. Returns 1/0 per user: signed in anywhere.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local out = {}
for i = 4, #ARGV do out[#out + 1] = redis.call('EXISTS', K_usr(ARGV[3], ARGV[i])) end
return out
