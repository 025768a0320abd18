-- ARGV[3] the node to reap, ARGV[4] the claim's ttl in ms. The registry's slot. Claims the
-- reaping of a registered node whose lease ran out (this node itself: a clean stop, no lease
-- check): one reaper at a time; a reaper that dies midway lets another one finish after the
-- claim's ttl. Returns the node's incarnation ('' if unknown), or nil: nothing to reap (not
-- registered, its lease is valid, or another reaper holds the claim).
local dead = ARGV[3]
if redis.call('SISMEMBER', K_nodes(), dead) == 0 then return false end
if dead ~= NODE and redis.call('EXISTS', K_lease(dead)) == 1 then return false end
if not redis.call('SET', K_reaping(dead), NODE, 'NX', 'PX', ARGV[4]) then return false end
return redis.call('HGET', K_inc(), dead) or ''
