-- ARGV[3] job id, ARGV[4] job, ARGV[5] due time, ARGV[6] max jobs, ARGV[7] '1' when it is
-- added again after a failover (see webhooks.py): then not if it was taken already.
-- Queues the job (replacing one with the same id). Returns 0 when the store is full (or the
-- job was taken already).
local jobs, due = K_wh_jobs(), K_wh_due()
local id = ARGV[3]
if ARGV[7] == '1' and redis.call('EXISTS', K_wh_taken(id)) == 1 then return 0 end
if redis.call('HEXISTS', jobs, id) == 0 and redis.call('HLEN', jobs) >= tonumber(ARGV[6]) then
  return 0
end
redis.call('HSET', jobs, id, ARGV[4])
redis.call('ZADD', due, ARGV[5], id)
return 1
