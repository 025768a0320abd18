-- ARGV[3] this node's snapshot as JSON: {app: {"c": connections, "ch": {channel: n},
-- "m": {channel: {uid: [info JSON, n]}}, "u": {uid: n}}}. Makes this node's records exactly
-- that (apps it has records in but not in the snapshot are cleared) and returns the
-- deployment-wide transitions: {occupied {app, ch, ...}, vacated {app, ch, ...},
-- added {app, ch, uid, info, version, ...}, removed {app, ch, uid, version, ...},
-- online {app, uid, ...}, offline {app, uid, ...}}. Does not need this node registered.
local snapshot = cjson.decode(ARGV[3])
local occupied, vacated, added, removed, online, offline = {}, {}, {}, {}, {}, {}
local function push(t, ...)
  for _, v in ipairs({...}) do t[#t + 1] = v end
end
local function positive(v)
  v = tonumber(v)
  if v and v > 0 then return v end
  return 0
end
local apps_key = K_node_apps(NODE)
local apps = {}
for _, app in ipairs(redis.call('SMEMBERS', apps_key)) do apps[app] = true end
for app, _ in pairs(snapshot) do apps[app] = true end

for app, _ in pairs(apps) do
  local snap = snapshot[app] or {}
  local want_ch = snap['ch'] or {}
  local want_m = snap['m'] or {}
  local want_u = snap['u'] or {}
  local holds = false

  -- connections
  local c = positive(snap['c'])
  if c > 0 then
    redis.call('HSET', K_conn(app), NODE, int(c))
    holds = true
  else
    redis.call('HDEL', K_conn(app), NODE)
  end

  -- channel counts
  local chs, cnn = K_chs(app), K_cnn(app, NODE)
  local names = {}
  local flat = redis.call('HGETALL', cnn)
  for i = 1, #flat, 2 do names[flat[i]] = tonumber(flat[i + 1]) end
  for ch, _ in pairs(want_ch) do if names[ch] == nil then names[ch] = 0 end end
  for ch, old in pairs(names) do
    local new = positive(want_ch[ch])
    if new > 0 then holds = true end
    if new ~= old then
      local before = num(redis.call('HGET', chs, ch))
      local after = before - old + new
      if new > 0 then
        redis.call('HSET', K_chn(app, ch), NODE, int(new))
        redis.call('HSET', cnn, ch, int(new))
      else
        redis.call('HDEL', K_chn(app, ch), NODE)
        redis.call('HDEL', cnn, ch)
      end
      if after > 0 then
        redis.call('HSET', chs, ch, int(after))
      else
        redis.call('HDEL', chs, ch)
      end
      if before <= 0 and after > 0 then push(occupied, app, ch) end
      if before > 0 and after <= 0 then push(vacated, app, ch) end
    end
  end

  -- presence holdings
  local pmn = K_pmn(app, NODE)
  local fields = {}
  flat = redis.call('HGETALL', pmn)
  for i = 1, #flat, 2 do fields[flat[i]] = {tonumber(flat[i + 1]), nil} end
  for ch, users in pairs(want_m) do
    for uid, entry in pairs(users) do
      local f = ch .. '\n' .. uid
      if fields[f] == nil then fields[f] = {0, entry} else fields[f][2] = entry end
    end
  end
  for f, pair in pairs(fields) do
    local old, entry = pair[1], pair[2]
    local new = 0
    if entry then new = positive(entry[2]) end
    if new > 0 then holds = true end
    if new ~= old then
      local ch, uid = split_field(f)
      local pmu = K_pmu(app, ch)
      if new > 0 then
        redis.call('HSET', pmn, f, int(new))
      else
        redis.call('HDEL', pmn, f)
      end
      if old <= 0 and new > 0 then
        if redis.call('HINCRBY', pmu, uid, 1) == 1 then
          redis.call('HSET', K_pm(app, ch), uid, entry[1])
          push(added, app, ch, uid, entry[1], next_version(app, ch))
        end
      elseif old > 0 and new <= 0 then
        if redis.call('HINCRBY', pmu, uid, -1) <= 0 then
          redis.call('HDEL', pmu, uid)
          redis.call('HDEL', K_pm(app, ch), uid)
          push(removed, app, ch, uid, next_version(app, ch))
        end
      end
    end
  end

  -- signed-in users
  local usn = K_usn(app, NODE)
  local uids = {}
  for _, uid in ipairs(redis.call('SMEMBERS', usn)) do uids[uid] = true end
  for uid, _ in pairs(want_u) do uids[uid] = true end
  for uid, _ in pairs(uids) do
    local usr = K_usr(app, uid)
    local new = positive(want_u[uid])
    local had = redis.call('EXISTS', usr) == 1
    if new > 0 then
      holds = true
      redis.call('HSET', usr, NODE, int(new))
      redis.call('SADD', usn, uid)
    else
      redis.call('HDEL', usr, NODE)
      redis.call('SREM', usn, uid)
    end
    local has = redis.call('EXISTS', usr) == 1
    if has and not had then push(online, app, uid) end
    if had and not has then push(offline, app, uid) end
  end

  if holds then
    redis.call('SADD', apps_key, app)
  else
    redis.call('SREM', apps_key, app)
  end
end
return {occupied, vacated, added, removed, online, offline}
