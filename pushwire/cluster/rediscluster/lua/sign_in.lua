-- ARGV[3] app, ARGV[4] user. One user's slot. Returns {1 for the user's first socket in the
-- deployment else 0, 1 (holds)}. Error NOTREG (see subscribe.lua).
local app, uid = ARGV[3], ARGV[4]
local own, key = K_uown(app, uid, NODE), K_usr(app, uid)
if not writable(own) then return redis.error_reply('NOTREG') end
local first = 0
if redis.call('EXISTS', key) == 0 then first = 1 end
redis.call('HINCRBY', key, NODE, 1)
return {first, 1}
