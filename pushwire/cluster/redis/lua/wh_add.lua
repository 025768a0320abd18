-- ARGV[3] job id, ARGV[4] job, ARGV[5] due time, ARGV[6] max jobs. Queues the job (replacing
-- one with the same id). Returns 0 when the store is full.
local jobs, due = K_wh_jobs(), K_wh_due()
local id = ARGV[3]
if redis.call('HEXISTS', jobs, id) == 0 and redis.call('HLEN', jobs) >= tonumber(ARGV[6]) then
  return 0
end
redis.call('HSET', jobs, id, ARGV[4])
redis.call('ZADD', due, ARGV[5], id)
return 1
