-- ARGV[3] pub/sub channel, ARGV[4] the hash listing the nodes that must receive it ('' for
-- none), ARGV[5] '1' when this node's own pub/sub connection may be subscribed to the channel,
-- ARGV[6] the message. Publishes it if this node is registered; then checks that every node
-- listed in the hash (this node aside) is subscribed: PUBSUB NUMSUB, taken in the same atomic
-- step, is exactly the set of connections PUBLISH delivers to (pattern subscribers aside).
-- Errors: NOTREG; 'SHORT got need' when fewer nodes received it than must.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local channel, record = ARGV[3], ARGV[4]
local subscribed = redis.call('PUBSUB', 'NUMSUB', channel)[2]
redis.call('PUBLISH', channel, ARGV[6])
if record == '' then return subscribed end
local got = subscribed - tonumber(ARGV[5])
if got < 0 then got = 0 end  -- this node's own connection was not among them after all
local need = redis.call('HLEN', record)
if need > 0 and redis.call('HEXISTS', record, NODE) == 1 then need = need - 1 end
if got < need then
  return redis.error_reply('SHORT ' .. got .. ' ' .. need)
end
return subscribed
