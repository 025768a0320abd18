-- The state's half of a publish when the bus is another server (see publish.lua, ARGV[13]).
-- ARGV[3] the hash listing the nodes that must receive it, ARGV[4] '1' when the publish
-- echoes to this node (history). Returns {need, ttl}: how many nodes must receive it, and
-- for how long (ms) the count may be reused: the least time a lease that vouches for it has
-- left (the listed nodes' and this node's own; -1: no lease, do not reuse).
-- Errors: NOTREG; 'EXPIRED node' when a listed node has no lease.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local need, late, ttl = receivers(ARGV[3], ARGV[4] == '1')
if not need then return redis.error_reply('EXPIRED ' .. late) end
local own = redis.call('PTTL', K_lease(NODE))
if own < 0 then return {need, -1} end
if not ttl or own < ttl then ttl = own end
return {need, ttl}
