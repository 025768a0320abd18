-- ARGV[3] app, ARGV[4] name prefix. Returns {channel, subscribers, members or -1, ...}.
if not registered(NODE) then return redis.error_reply('NOTREG') end
local app, prefix = ARGV[3], ARGV[4]
local flat = redis.call('HGETALL', K_chs(app))
local out = {}
for i = 1, #flat, 2 do
  local ch, n = flat[i], tonumber(flat[i + 1])
  if n > 0 and string.sub(ch, 1, #prefix) == prefix then
    local users = -1
    if string.sub(ch, 1, 9) == 'presence-' then users = redis.call('HLEN', K_pm(app, ch)) end
    out[#out + 1] = ch
    out[#out + 1] = n
    out[#out + 1] = users
  end
end
return out
