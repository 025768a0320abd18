-- ARGV[3] now, ARGV[4] limit, ARGV[5] ms a taken job's id is remembered. Takes the due jobs
-- (due time, then id order): each goes to exactly one caller.
local jobs, due = K_wh_jobs(), K_wh_due()
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', due, id)
  local job = redis.call('HGET', jobs, id)
  redis.call('HDEL', jobs, id)
  redis.call('SET', K_wh_taken(id), '1', 'PX', ARGV[5])
  if job then out[#out + 1] = job end
end
return out
