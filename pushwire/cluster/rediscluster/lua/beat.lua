-- ARGV[3] node_timeout in ms. The registry's slot. Renews this node's lease if it is
-- registered under its incarnation and no reaper has claimed it (never registers it).
-- Returns {registered 0/1, {alive nodes}, {dead nodes}}: registered nodes with a lease, and
-- without one.
local registered_now = 0
if redis.call('HGET', K_inc(), NODE) == INC and redis.call('EXISTS', K_reaping(NODE)) == 0
   and redis.call('SISMEMBER', K_nodes(), NODE) == 1 then
  registered_now = 1
  redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
end
local alive, dead = {}, {}
for _, n in ipairs(redis.call('SMEMBERS', K_nodes())) do
  if redis.call('EXISTS', K_lease(n)) == 1 then
    alive[#alive + 1] = n
  else
    dead[#dead + 1] = n
  end
end
return {registered_now, alive, dead}
