-- ARGV[3] app, ARGV[4] limit. Counts one more connection on this node unless `limit` (> 0)
-- are open in the deployment: the atomic connection quota. Returns 1, or 0 when refused.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, limit = ARGV[3], tonumber(ARGV[4])
local key = K_conn(app)
if limit > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
  if total >= limit then return 0 end
end
redis.call('HINCRBY', key, NODE, 1)
redis.call('SADD', K_node_apps(NODE), app)
return 1
