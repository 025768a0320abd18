-- ARGV[3] app, ARGV[4] user. Returns 1 for the user's first socket in the deployment.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, uid = ARGV[3], ARGV[4]
local key = K_usr(app, uid)
local first = redis.call('EXISTS', key) == 0
if redis.call('HINCRBY', key, NODE, 1) == 1 then
  redis.call('SADD', K_usn(app, NODE), uid)
end
redis.call('SADD', K_node_apps(NODE), app)
if first then return 1 end
return 0
