-- ARGV[3] counter key (it names its time window), ARGV[4] amount, ARGV[5] ttl in ms.
-- Adds to a rate counter and returns its new total; the first hit of a window sets its expiry.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local n = redis.call('INCRBY', K_rate(ARGV[3]), ARGV[4])
if n == tonumber(ARGV[4]) then redis.call('PEXPIRE', K_rate(ARGV[3]), ARGV[5]) end
return n
