-- ARGV[3] the node reaped, ARGV[4] the incarnation reaped. The registry's slot. Unregisters
-- the node unless it registered again meanwhile (under a newer incarnation), and drops this
-- reaper's claim.
local dead, inc = ARGV[3], ARGV[4]
local cur = redis.call('HGET', K_inc(), dead)
if not cur or cur == inc then
  redis.call('SREM', K_nodes(), dead)
  redis.call('HDEL', K_inc(), dead)
  redis.call('DEL', K_lease(dead))
end
if redis.call('GET', K_reaping(dead)) == NODE then redis.call('DEL', K_reaping(dead)) end
return 1
