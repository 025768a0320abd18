-- ARGV[3] app, ARGV[4] limit. One app's slot. Counts one more connection on this node unless
-- `limit` (> 0) are open in the deployment: the atomic connection quota.
-- Returns {1 admitted / 0 refused, holds 0/1}. Error NOTREG (see subscribe.lua).
local app, limit = ARGV[3], tonumber(ARGV[4])
local own, key = K_aown(app, NODE), K_conn(app)
if not writable(own) then return redis.error_reply('NOTREG') end
if limit > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
  if total >= limit then
    local holds = redis.call('HEXISTS', key, NODE)
    settle(own, holds == 1)
    return {0, holds}
  end
end
redis.call('HINCRBY', key, NODE, 1)
return {1, 1}
