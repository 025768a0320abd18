-- ARGV[3] topic, ARGV[4] offset to read after ('' for the last events), ARGV[5] limit,
-- ARGV[6] ttl ms (older entries count as gone), ARGV[7] bytes of payloads at most (0: no
-- bound; a page cut short by it is not complete).
-- Creates the topic's epoch when it has none (or one of another generation), kept only as
-- long as an event would be (a publish keeps it for the meta ttl). Returns {epoch, top, complete (0/1),
-- offset1, data1, time1, offset2, ...} in ascending offsets.
local topic = ARGV[3]
local stream = K_hist(topic)
local epoch, top = history_meta(topic, ARGV[6])
local limit = tonumber(ARGV[5])
local cutoff = now_ms() - tonumber(ARGV[6])
local budget = tonumber(ARGV[7])  -- bytes of payloads at most (0: no bound)
local latest = ARGV[4] == ''
local entries = {}  -- in the order they are taken: oldest first, or newest first for latest
if latest then
  if limit > 0 then entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit) end
else
  local since = tonumber(ARGV[4])
  entries = redis.call('XRANGE', stream, int(since + 1) .. '-0', '+', 'COUNT', math.max(limit, 1))
end
local taken, first, bytes, cut = {}, nil, 0, false
for _, e in ipairs(entries) do
  local f = e[2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  local t = tonumber(fields['t'] or '0')
  if t >= cutoff then
    local off = tonumber(string.match(e[1], '^(%d+)'))
    if not first then first = off end
    if #taken >= limit then break end
    bytes = bytes + #fields['d']
    if budget > 0 and bytes > budget then cut = true; break end
    taken[#taken + 1] = {off, fields['d'], t}
  end
end
local out = {epoch, top, 0}
local from, to, step = 1, #taken, 1
if latest then from, to, step = #taken, 1, -1 end
for i = from, to, step do
  out[#out + 1] = taken[i][1]
  out[#out + 1] = taken[i][2]
  out[#out + 1] = taken[i][3]
end
if latest then
  out[3] = 1
else
  local since = tonumber(ARGV[4])
  if not cut and (since == top or (since < top and first == since + 1)) then out[3] = 1 end
end
return out
