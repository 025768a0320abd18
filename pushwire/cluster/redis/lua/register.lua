-- ARGV[3] node_timeout in ms. Registers this node with a fresh lease, under the generation
-- it believes the server has (see keys.py, `p:gen`).
redis.call('SADD', K_nodes(), NODE)
redis.call('HSET', K_gen(), NODE, GEN)
redis.call('SET', K_lease(NODE), '1', 'PX', ARGV[3])
return 1
