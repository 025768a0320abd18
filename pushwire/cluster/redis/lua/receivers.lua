-- The state's half of a publish when the bus is another server (see publish.lua, ARGV[13]).
-- ARGV[3] the hash listing the nodes that must receive it, ARGV[4] '1' when the publish
-- echoes to this node (history). Returns how many nodes must receive it.
-- Errors: NOTREG; 'EXPIRED node' when a listed node has no lease.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local need, late = receivers(ARGV[3], ARGV[4] == '1')
if not need then return redis.error_reply('EXPIRED ' .. late) end
return need
