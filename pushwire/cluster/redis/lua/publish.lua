-- The Redis Cluster backend runs this script too, with its prelude's versions of `registered`,
-- `receivers`, `recall` / `remember` (a publish id seen), `subscribers` and `send` (sharded
-- pub/sub there) and `history_meta`.
-- ARGV[3] pub/sub channel, ARGV[4] the hash listing the nodes that must receive it ('' for
-- none), ARGV[5] '1' when this node's own pub/sub connection may be subscribed to the channel,
-- ARGV[6] the message. Publishes it if this node is registered; then checks that every node
-- listed in the hash (this node aside) is subscribed: PUBSUB NUMSUB, taken in the same atomic
-- step, is exactly the set of connections PUBLISH delivers to (pattern subscribers aside).
-- A listed node without a lease fails the publish before it is sent (see `receivers`).
-- With history (ARGV[7] the topic, '' for none; ARGV[8] size, ARGV[9] ttl ms, ARGV[10] meta
-- ttl ms, ARGV[11] the payload to keep, ARGV[12] this publish's id): the message is appended
-- to the topic's stream first and published with its position line '@OFFSET EPOCH' in front;
-- it echoes, so this node counts among the receivers too. A publish id seen already (a retry
-- after a lost reply) is not appended or published again.
-- ARGV[13]: '' when the registry and the hash are on this server (one Redis for bus and
-- state); otherwise the bus and the state are apart: the state checked the registration and
-- counted the receivers (`receivers.lua`, just before), and this is that count.
-- ARGV[14], ARGV[15] (with ARGV[13]): '' when the state counted the receivers for this
-- publish; else the count is one the publisher remembered (within the leases that vouch for
-- it), ARGV[14] names its pipeline and ARGV[15] is the channel's join mark (`joined`) as the
-- publish after that count saw it. When a node joined since (the mark moved) or fewer nodes
-- are subscribed than counted (one left), the count may be stale: nothing is sent, 'STALE'
-- is returned, and so is every later publish of the pipeline to this channel (their order
-- holds); the publisher counts afresh and publishes them again.
-- Returns the number of receivers, or with history {receivers, offset, epoch}; with
-- ARGV[13], always {receivers, offset or 0, epoch or '', the channel's join mark}.
-- Errors: NOTREG; 'SHORT got need' when fewer nodes received it than must; 'EXPIRED node';
-- 'STALE'.
local channel, record = ARGV[3], ARGV[4]
local data, topic = ARGV[6], ARGV[7]
local need = tonumber(ARGV[13])
local apart = need ~= nil  -- bus and state on two servers
-- of the connections subscribed, those that count as receivers
local function receiving(subscribed)
  if topic ~= '' then return subscribed end
  -- no echo: this node is neither among the receivers nor needed
  local got = subscribed - tonumber(ARGV[5])
  if got < 0 then got = 0 end  -- this node's own connection was not among them after all
  return got
end
if not need then
  if not registered(NODE) then return redis.error_reply('NOTREG') end
  if record ~= '' then
    local late
    need, late = receivers(record, topic ~= '')
    if not need then return redis.error_reply('EXPIRED ' .. late) end
  end
elseif ARGV[14] ~= '' then
  if held(ARGV[14], channel) or joined(channel) ~= ARGV[15]
     or receiving(subscribers(channel)) < need then
    hold(ARGV[14], channel)
    return redis.error_reply('STALE')
  end
end
local offset, epoch
if topic ~= '' then
  local seen = recall(topic, ARGV[12])
  if seen then
    local i = string.find(seen, ' ', 1, true)
    return {0, tonumber(string.sub(seen, 1, i - 1)), string.sub(seen, i + 1)}
  end
  epoch = history_meta(topic, ARGV[10])
  local meta, stream = K_histm(topic), K_hist(topic)
  offset = redis.call('HINCRBY', meta, 'top', 1)
  redis.call('XADD', stream, 'MAXLEN', ARGV[8], int(offset) .. '-0', 'd', ARGV[11],
             't', int(now_ms()))
  redis.call('PEXPIRE', stream, ARGV[9])
  redis.call('PEXPIRE', meta, ARGV[10])
  remember(topic, ARGV[12], int(offset) .. ' ' .. epoch)
  data = '@' .. int(offset) .. ' ' .. epoch .. '\n' .. data
end
local subscribed = subscribers(channel)
send(channel, data)
local function result()
  if apart then return {subscribed, offset or 0, epoch or '', joined(channel)} end
  if topic == '' then return subscribed end
  return {subscribed, offset, epoch}
end
if not need then return result() end
local got = receiving(subscribed)
if got < need then
  return redis.error_reply('SHORT ' .. got .. ' ' .. need)
end
return result()
