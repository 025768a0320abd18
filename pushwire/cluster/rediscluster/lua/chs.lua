-- The app's channel index (one app's slot): channel -> the occupancy version that last
-- marked it occupied. It is updated after the channel's own step (another slot), so marks
-- may arrive out of order: a mark older than the entry is ignored; a stale entry (a channel
-- empty by now) is dropped by 'prune' when a reader finds it empty.
-- ARGV[3] op, ARGV[4] app, then:
-- 'mark' ARGV[5..]: channel, version, '1' occupied / '0' vacated, ... Returns 1.
-- 'read' ARGV[5] name prefix. Returns {channel, version, ...}.
-- 'prune' ARGV[5..]: channel, version, ...: drops each entry still at that version.
local op, key = ARGV[3], K_chs(ARGV[4])
if op == 'mark' then
  for i = 5, #ARGV, 3 do
    local ch, v = ARGV[i], tonumber(ARGV[i + 1])
    local cur = num(redis.call('HGET', key, ch))
    if v > cur then
      if ARGV[i + 2] == '1' then
        redis.call('HSET', key, ch, ARGV[i + 1])
      else
        redis.call('HDEL', key, ch)
      end
    end
  end
  return 1
elseif op == 'read' then
  local prefix, out = ARGV[5], {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, #prefix) == prefix then
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
  return out
elseif op == 'prune' then
  for i = 5, #ARGV, 2 do
    if redis.call('HGET', key, ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', key, ARGV[i]) end
  end
  return 1
end
return redis.error_reply('ERR unknown op ' .. op)
