-- ARGV[3] node_timeout in ms. Renews this node's lease if it is registered under the current
-- generation (never registers it). Returns {registered 0/1, {alive nodes}, {dead nodes}}:
-- alive, registered nodes with a lease and of this generation (when it is known); dead,
-- registered nodes whose lease ran out. A node with a lease but of another generation (one
-- that has not resynced on a new primary yet) is in neither.
local registered_now = 0
if registered(NODE) then
  registered_now = 1
  redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
end
local alive, dead = {}, {}
for _, n in ipairs(redis.call('SMEMBERS', K_nodes())) do
  if redis.call('EXISTS', K_lease(n)) == 0 then
    dead[#dead + 1] = n
  elseif GEN == '' or redis.call('HGET', K_gen(), n) == GEN then
    alive[#alive + 1] = n
  end
end
return {registered_now, alive, dead}
