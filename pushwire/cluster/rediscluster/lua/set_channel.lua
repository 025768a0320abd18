-- Resync or reaping of one node's records in one channel (its slot). ARGV[3] app,
-- ARGV[4] channel, ARGV[5] the node, ARGV[6] its incarnation, ARGV[7] 'sync' or 'reap',
-- ARGV[8] its subscribers there (sync), ARGV[9] its members there (sync): JSON
-- {uid: [info JSON, sockets]}, or ''.
-- sync: the node's records become exactly that (NOTREG when a reaped or newer incarnation
-- owns them). reap: removes them when they belong to that incarnation or an older one, once
-- (the channel keeps a mark: later writes of those incarnations are refused).
-- Returns {occupied 0/1, vacated 0/1, {uid, info, version, ...} added,
-- {uid, version, ...} removed, occupancy version or 0, holds 0/1}.
local app, ch, node, inc, mode = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local own = K_cown(app, ch, node)
local step = records_step(own, inc, mode)
if step == 'refuse' then return redis.error_reply('NOTREG') end
if step == 'skip' then return {0, 0, {}, {}, 0, 0} end
local want, want_m = 0, {}
if mode == 'sync' then
  want = positive(ARGV[8])
  if ARGV[9] ~= '' then want_m = cjson.decode(ARGV[9]) end
end
local added, removed = {}, {}
local pmn, pmu, pm = K_pmn(app, ch, node), K_pmu(app, ch), K_pm(app, ch)
local held = {}
local flat = redis.call('HGETALL', pmn)
for i = 1, #flat, 2 do held[flat[i]] = tonumber(flat[i + 1]) end
for uid, _ in pairs(want_m) do
  if held[uid] == nil then held[uid] = 0 end
end
for uid, old in pairs(held) do
  local entry = want_m[uid]
  local new = 0
  if entry then new = positive(entry[2]) end
  if new ~= old then
    if new > 0 then
      redis.call('HSET', pmn, uid, int(new))
    else
      redis.call('HDEL', pmn, uid)
    end
    if old <= 0 and new > 0 then
      if redis.call('HINCRBY', pmu, uid, 1) == 1 then
        redis.call('HSET', pm, uid, entry[1])
        push(added, uid, entry[1], next_version(app, ch))
      end
    elseif old > 0 and new <= 0 then
      if redis.call('HINCRBY', pmu, uid, -1) <= 0 then
        redis.call('HDEL', pmu, uid)
        redis.call('HDEL', pm, uid)
        push(removed, uid, next_version(app, ch))
      end
    end
  end
end
local chn = K_chn(app, ch)
local before = 0
for _, v in ipairs(redis.call('HVALS', chn)) do before = before + tonumber(v) end
local after = before - num(redis.call('HGET', chn, node)) + want
if want > 0 then
  redis.call('HSET', chn, node, int(want))
else
  redis.call('HDEL', chn, node)
end
local occupied, vacated, cv = 0, 0, 0
if before <= 0 and after > 0 then occupied = 1 end
if before > 0 and after <= 0 then vacated = 1 end
if occupied + vacated > 0 then cv = bump(K_cv(app, ch)) end
records_done(own, inc, mode, want > 0)
local holds = 0
if want > 0 then holds = 1 end
return {occupied, vacated, added, removed, cv, holds}
