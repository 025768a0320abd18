-- ARGV[3] node_timeout in ms. The registry's slot. Registers this node under its
-- incarnation with a fresh lease.
redis.call('SADD', K_nodes(), NODE)
redis.call('HSET', K_inc(), NODE, INC)
redis.call('DEL', K_reaping(NODE))
redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
return 1
