-- ARGV[3] job id. Returns 1 if the job was pending.
redis.call('ZREM', K_wh_due(), ARGV[3])
return redis.call('HDEL', K_wh_jobs(), ARGV[3])
