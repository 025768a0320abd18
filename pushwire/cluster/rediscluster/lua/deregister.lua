-- The registry's slot. Unregisters this node (its records stay until it is reaped or
-- resyncs).
redis.call('SREM', K_nodes(), NODE)
redis.call('HDEL', K_inc(), NODE)
redis.call('DEL', K_lease(NODE))
return 1
