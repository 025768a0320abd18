-- ARGV[3] node_timeout in ms. Renews this node's lease if it is registered (never registers
-- it). Returns {registered 0/1, {alive nodes}, {dead nodes}}: registered nodes with / without
-- a lease.
local registered_now = 0
if registered(NODE) then
  registered_now = 1
  redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
end
local alive, dead = {}, {}
for _, n in ipairs(redis.call('SMEMBERS', K_nodes())) do
  if redis.call('EXISTS', K_lease(n)) == 1 then alive[#alive + 1] = n else dead[#dead + 1] = n end
end
return {registered_now, alive, dead}
