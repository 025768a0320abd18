-- ARGV[3] node_timeout in ms. Registers this node with a fresh lease.
redis.call('SADD', K_nodes(), NODE)
redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
return 1
