-- A node's index (its slot): the groups where it may hold records, so that a reaper finds
-- them. ARGV[3] op, ARGV[4] the node, ARGV[5] an incarnation, then fields and tokens.
-- 'add' (the node, before its first write to a group): refused with NOTREG unless the
--   index is open to this incarnation (a reaper froze it: the node was reaped).
-- 'del' field, token, ...: drops each entry still at that token (the node holds nothing
--   there any more; an entry added again meanwhile has another token).
-- 'open' field, token, ...: resync / register: this incarnation may add from now on (NOTREG
--   when a reaped or newer one owns the index); adds the fields; returns every entry
--   (field, token, ...).
-- 'reset' field, token, ...: after a resync: exactly these entries. Returns 1.
-- 'freeze' (a reaper of that incarnation): no adds by it or an older one any more; returns
--   every field.
-- 'drop' (the reaper, done): deletes the index if still frozen by that incarnation.
local op, idx, inc = ARGV[3], K_idx(ARGV[4]), ARGV[5]
local cur = redis.call('HGET', idx, '!inc')
local function fields()
  local out = {}
  for _, f in ipairs(redis.call('HKEYS', idx)) do
    if f ~= '!inc' then out[#out + 1] = f end
  end
  return out
end
local function entries()
  local out = {}
  local flat = redis.call('HGETALL', idx)
  for i = 1, #flat, 2 do
    if flat[i] ~= '!inc' then
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
  return out
end
local function put()
  for i = 6, #ARGV, 2 do redis.call('HSET', idx, ARGV[i], ARGV[i + 1]) end
end
if op == 'add' then
  if cur ~= inc then return redis.error_reply('NOTREG') end
  put()
  return 1
elseif op == 'del' then
  for i = 6, #ARGV, 2 do
    if redis.call('HGET', idx, ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', idx, ARGV[i]) end
  end
  return 1
elseif op == 'open' then
  local s = owner_state(cur, inc)
  if s == 'reaped' or s == 'newer' then return redis.error_reply('NOTREG') end
  redis.call('HSET', idx, '!inc', inc)
  put()
  return entries()
elseif op == 'reset' then
  if cur ~= inc then return redis.error_reply('NOTREG') end
  redis.call('DEL', idx)
  redis.call('HSET', idx, '!inc', inc)
  put()
  return 1
elseif op == 'freeze' then
  local s = owner_state(cur, inc)
  if s ~= 'reaped' and s ~= 'newer' then redis.call('HSET', idx, '!inc', '~' .. inc) end
  return fields()
elseif op == 'drop' then
  if cur == '~' .. inc then redis.call('DEL', idx) end
  return 1
end
return redis.error_reply('ERR unknown op ' .. op)
