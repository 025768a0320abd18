-- ARGV[3] the node to reap. Unregisters it and removes all its records, once: another node
-- is left alone while its lease is valid, or once it is unregistered (reaped already). This
-- node reaping itself is a clean stop (no lease check). Returns the transitions:
-- {{app, channel, ...} vacated, {app, channel, uid, version, ...} removed, {app, uid, ...}
-- offline}.
local dead = ARGV[3]
if dead ~= NODE then
  if redis.call('EXISTS', K_lease(dead)) == 1 or not registered(dead) then
    return {{}, {}, {}}
  end
end
redis.call('SREM', K_nodes(), dead)
redis.call('HDEL', K_gen(), dead)
redis.call('DEL', K_lease(dead))
local vacated, removed, offline = {}, {}, {}
local apps = K_node_apps(dead)
for _, app in ipairs(redis.call('SMEMBERS', apps)) do
  redis.call('HDEL', K_conn(app), dead)
  local chs = K_chs(app)
  local cnn = K_cnn(app, dead)
  local flat = redis.call('HGETALL', cnn)
  for i = 1, #flat, 2 do
    local ch, n = flat[i], tonumber(flat[i + 1])
    redis.call('HDEL', K_chn(app, ch), dead)
    if redis.call('HINCRBY', chs, ch, -n) <= 0 then
      redis.call('HDEL', chs, ch)
      vacated[#vacated + 1] = app
      vacated[#vacated + 1] = ch
    end
  end
  redis.call('DEL', cnn)
  local pmn = K_pmn(app, dead)
  flat = redis.call('HGETALL', pmn)
  for i = 1, #flat, 2 do
    local ch, uid = split_field(flat[i])
    local pmu = K_pmu(app, ch)
    if redis.call('HINCRBY', pmu, uid, -1) <= 0 then
      redis.call('HDEL', pmu, uid)
      redis.call('HDEL', K_pm(app, ch), uid)
      removed[#removed + 1] = app
      removed[#removed + 1] = ch
      removed[#removed + 1] = uid
      removed[#removed + 1] = next_version(app, ch)
    end
  end
  redis.call('DEL', pmn)
  local usn = K_usn(app, dead)
  for _, uid in ipairs(redis.call('SMEMBERS', usn)) do
    local usr = K_usr(app, uid)
    redis.call('HDEL', usr, dead)
    if redis.call('EXISTS', usr) == 0 then
      offline[#offline + 1] = app
      offline[#offline + 1] = uid
    end
  end
  redis.call('DEL', usn)
end
redis.call('DEL', apps)
return {vacated, removed, offline}
