-- Returns the number of pending webhook jobs.
return redis.call('HLEN', K_wh_jobs())
