"""Every Redis name the backend uses, in one place, for Python and for the Lua scripts.

`Keys(prefix)` renders a name in Python; `lua_prelude()` renders the same templates as Lua
functions (`K_lease(node)`, ...) that every script is prefixed with, so a name is spelled once.
Let p = prefix, A an app id, N a node id, C a channel, U a user id:

- `p:nodes`            set: registered nodes
- `p:gen`              hash N -> the generation (primary's replication id) N registered
                       under; a registration of another generation does not count
- `p:lease:N`          string with PX = node_timeout: N's lease
- `p:node:N:apps`      set: apps N has records in (for reap and resync)
- `p:conn:A`           hash N -> open connections on N (the connection quota)
- `p:chs:A`            hash C -> subscribers in the deployment
- `p:chn:A:C`          hash N -> subscribers on N (HLEN: nodes a publish must reach)
- `p:cnn:A:N`          hash C -> subscribers on N (for reap and resync)
- `p:pm:A:C`           hash U -> user_info JSON: the presence members
- `p:pmu:A:C`          hash U -> number of nodes holding a socket of U in C
- `p:pmn:A:N`          hash "C\\nU" -> sockets of U in C on N (for reap and resync)
- `p:pv:A:C`           string: the channel's membership version (kept a day after a change)
- `p:usr:A:U`          hash N -> signed-in sockets of U on N (EXISTS: online)
- `p:usn:A:N`          set: users with signed-in sockets on N (for reap and resync)
- `p:cache:A:C`        string with PX: the cache channel's last payload
- `p:once:K`           string SET NX PX: once-only claims
- `p:wh:jobs`, `p:wh:due`  hash id -> job, zset id by due time: webhook jobs
- `p:wh:taken:I`       string with PX: job I was taken (not queued again after a failover)
- `p:bus:T`            pub/sub channel of bus topic T
- `p:hist:T`           stream: topic T's history, entry id "OFFSET-0", fields d (payload)
                       and t (unix ms); trimmed to the app's size (MAXLEN), read back only
                       while younger than its ttl; PEXPIRE ttl after each append
- `p:histm:T`          hash epoch, top: T's history epoch and last offset (meta ttl)
- `p:hid:I`            string "OFFSET EPOCH" with PX: a history publish already appended
                       (a publish retried after a lost reply is not appended twice)
- `p:bus:T:joined`     string with PX (1 h), on the bus when it is apart from the state: a
                       mark set anew each time a node subscribes to T (see publisher.py)
- `p:held:B`           hash C -> 1 with PX, on the bus: pub/sub channels whose publishes in
                       pipeline B were held back (a remembered receiver count was stale)

Assumptions: app ids and node ids contain no ':' and no newline, channel names no newline
(Pusher channel names cannot); user ids may contain anything (they always come last, or after
the first newline of a field).
"""

from __future__ import annotations

import string

TEMPLATES: dict[str, str] = {
    "nodes": "nodes",
    "gen": "gen",
    "lease": "lease:{node}",
    "node_apps": "node:{node}:apps",
    "conn": "conn:{app}",
    "chs": "chs:{app}",
    "chn": "chn:{app}:{channel}",
    "cnn": "cnn:{app}:{node}",
    "pm": "pm:{app}:{channel}",
    "pmu": "pmu:{app}:{channel}",
    "pmn": "pmn:{app}:{node}",
    "pv": "pv:{app}:{channel}",
    "usr": "usr:{app}:{user}",
    "usn": "usn:{app}:{node}",
    "cache": "cache:{app}:{channel}",
    "once": "once:{key}",
    "rate": "rate:{key}",
    "wh_jobs": "wh:jobs",
    "wh_due": "wh:due",
    "wh_taken": "wh:taken:{id}",
    "bus": "bus:{topic}",
    "hist": "hist:{topic}",
    "histm": "histm:{topic}",
    "hid": "hid:{id}",
    "held": "held:{id}",
}

JOINED = ":joined"  # a bus topic's join mark: its pub/sub channel's name and this

# How long a presence channel's membership version outlives its last change. Versions are
# taken as max(previous + 1, Redis TIME in microseconds), so they keep increasing without it.
VERSION_TTL_MS = 86_400_000


class Keys:
    templates = TEMPLATES

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _k(self, name: str, **parts: str) -> str:
        return f"{self.prefix}:{self.templates[name].format(**parts)}"

    def nodes(self) -> str:
        return self._k("nodes")

    def gen(self) -> str:
        return self._k("gen")

    def lease(self, node: str) -> str:
        return self._k("lease", node=node)

    def node_apps(self, node: str) -> str:
        return self._k("node_apps", node=node)

    def conn(self, app: str) -> str:
        return self._k("conn", app=app)

    def chs(self, app: str) -> str:
        return self._k("chs", app=app)

    def chn(self, app: str, channel: str) -> str:
        return self._k("chn", app=app, channel=channel)

    def cnn(self, app: str, node: str) -> str:
        return self._k("cnn", app=app, node=node)

    def pm(self, app: str, channel: str) -> str:
        return self._k("pm", app=app, channel=channel)

    def pmu(self, app: str, channel: str) -> str:
        return self._k("pmu", app=app, channel=channel)

    def pmn(self, app: str, node: str) -> str:
        return self._k("pmn", app=app, node=node)

    def pv(self, app: str, channel: str) -> str:
        return self._k("pv", app=app, channel=channel)

    def joined(self, topic: str) -> str:
        return self.bus(topic) + JOINED

    def usr(self, app: str, user: str) -> str:
        return self._k("usr", app=app, user=user)

    def usn(self, app: str, node: str) -> str:
        return self._k("usn", app=app, node=node)

    def cache(self, app: str, channel: str) -> str:
        return self._k("cache", app=app, channel=channel)

    def once(self, key: str) -> str:
        return self._k("once", key=key)

    def rate(self, key: str) -> str:
        return self._k("rate", key=key)

    def wh_jobs(self) -> str:
        return self._k("wh_jobs")

    def wh_due(self) -> str:
        return self._k("wh_due")

    def wh_taken(self, job_id: str) -> str:
        return self._k("wh_taken", id=job_id)

    def bus(self, topic: str) -> str:
        return self._k("bus", topic=topic)

    def hist(self, topic: str) -> str:
        return self._k("hist", topic=topic)

    def record_of_topic(self, topic: str) -> str | None:
        """The hash (node -> count) listing the nodes that must receive a publish to `topic`:
        `chn` for a channel topic `c:A:C`, `usr` for a user topic `u:A:U`; None otherwise.
        Splits on the first two ':' only (user ids may contain ':')."""
        kind, sep, rest = topic.partition(":")
        app, sep2, name = rest.partition(":")
        if not (sep and sep2 and app and name):
            return None
        if kind == "c":
            return self.chn(app, name)
        if kind == "u":
            return self.usr(app, name)
        return None


def lua_function(name: str, template: str) -> str:
    """`K_name(...)`: the Lua function that renders `template` after the prefix."""
    pieces = ["P"]
    params: list[str] = []
    text = ":"
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is not None:
            if text:
                assert "'" not in text and "\\" not in text
                pieces.append(f"'{text}'")
                text = ""
            pieces.append(field)
            params.append(field)
    if text:
        pieces.append(f"'{text}'")
    return f"local function K_{name}({', '.join(params)}) return {' .. '.join(pieces)} end"


# Lua helpers that do not depend on where records live (after the K_ functions: they use K_pv)
LUA_HELPERS = (
    f"local VERSION_TTL_MS = {VERSION_TTL_MS}",
    # numbers are formatted by hand: Lua's tostring would print 1.7e+15
    "local function int(v) return string.format('%d', v) end",
    "local function num(v) if v then return tonumber(v) end return 0 end",
    # a new version of `key`: max(previous + 1, TIME in microseconds)
    "local function bump(key)",
    "  local t = redis.call('TIME')",
    "  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])",
    "  local prev = num(redis.call('GET', key))",
    "  if prev + 1 > v then v = prev + 1 end",
    "  redis.call('SET', key, int(v), 'PX', VERSION_TTL_MS)",
    "  return v",
    "end",
    # a presence channel's new membership version
    "local function next_version(app, channel) return bump(K_pv(app, channel)) end",
    "local function current_version(app, channel)",
    "  local v = redis.call('GET', K_pv(app, channel))",
    "  if v then return tonumber(v) end",
    "  return next_version(app, channel)",
    "end",
    # Presence: one socket of user `uid` joins channel `ch` on this node, its sockets there
    # counted in hash `pmn` under `field`. Returns nil when a new member would pass `limit`
    # (nothing changed), else member_added 0/1, the membership version, {uid, info, ...}.
    "local function member_join(app, ch, pmn, field, uid, info, limit)",
    "  local pm = K_pm(app, ch)",
    "  local new = redis.call('HEXISTS', pm, uid) == 0",
    "  if new and redis.call('HLEN', pm) >= limit then return nil end",
    "  if redis.call('HINCRBY', pmn, field, 1) == 1 then",
    "    redis.call('HINCRBY', K_pmu(app, ch), uid, 1)",
    "  end",
    "  if not new then return 0, current_version(app, ch), redis.call('HGETALL', pm) end",
    "  redis.call('HSET', pm, uid, info)",
    "  return 1, next_version(app, ch), redis.call('HGETALL', pm)",
    "end",
    # ... and one leaves. Returns member_removed 0/1, the version (0: none)
    "local function member_leave(app, ch, pmn, field, uid)",
    "  local n = num(redis.call('HGET', pmn, field))",
    "  if n > 1 then",
    "    redis.call('HINCRBY', pmn, field, -1)",
    "  elseif n == 1 then",
    "    redis.call('HDEL', pmn, field)",
    "    local pmu = K_pmu(app, ch)",
    "    if redis.call('HINCRBY', pmu, uid, -1) <= 0 then",
    "      redis.call('HDEL', pmu, uid)",
    "      redis.call('HDEL', K_pm(app, ch), uid)",
    "      return 1, next_version(app, ch)",
    "    end",
    "  end",
    "  return 0, 0",
    "end",
    # a history's epoch: the store's clock in hex (a lost history never gets it back)
    "local function new_epoch()",
    "  local t = redis.call('TIME')",
    "  return string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))",
    "end",
    "local function now_ms()",
    "  local t = redis.call('TIME')",
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)",
    "end",
    # split 'channel\nuser' on the first newline
    "local function split_field(f)",
    "  local i = string.find(f, '\\n', 1, true)",
    "  return string.sub(f, 1, i - 1), string.sub(f, i + 1)",
    "end",
)


def lua_prelude() -> str:
    """The Lua every script starts with. ARGV[1] is the prefix, ARGV[2] this node's id and,
    after a newline, the generation it believes the server has ('' before the first contact:
    not checked); see `clients.PrimaryWatch`."""
    lines = [
        "local P = ARGV[1]",
        "local NODE, GEN = string.match(ARGV[2], '^([^\\n]*)\\n?(.*)$')",
        *(lua_function(name, t) for name, t in TEMPLATES.items()),
        *LUA_HELPERS,
        # this node counts as registered only under the generation it believes in: on a new
        # primary a replicated registration is stale, so the node resyncs its records there
        "local function registered(node)",
        "  if redis.call('SISMEMBER', K_nodes(), node) == 0 then return false end",
        "  if node ~= NODE or GEN == '' then return true end",
        "  return redis.call('HGET', K_gen(), node) == GEN",
        "end",
        # How many nodes listed in `record` (node -> count) must receive a publish: this node
        # aside unless it receives its own (`echo`). Returns nil and the node when a listed
        # node's lease ran out: it cannot vouch for its subscribers (cut off, paused), so a
        # publish must not count on its subscription (Redis may count a dead connection).
        # Third: the least time (ms) a listed node's lease has left (nil: none listed).
        "local function receivers(record, echo)",
        "  local need, ttl = 0, nil",
        "  for _, n in ipairs(redis.call('HKEYS', record)) do",
        "    if n ~= NODE then",
        "      local left = redis.call('PTTL', K_lease(n))",
        "      if left == -2 then return nil, n end",
        "      if left >= 0 and (not ttl or left < ttl) then ttl = left end",
        "      need = need + 1",
        "    elseif echo then",
        "      need = need + 1",
        "    end",
        "  end",
        "  return need, nil, ttl",
        "end",
        # a publish held back in pipeline `batch` (see publish.lua, ARGV[14]), and whether the
        # pipeline held one to `channel` already
        "local function hold(batch, channel)",
        "  redis.call('HSET', K_held(batch), channel, 1)",
        "  redis.call('PEXPIRE', K_held(batch), 10000)",
        "end",
        "local function held(batch, channel)",
        "  return redis.call('HEXISTS', K_held(batch), channel) == 1",
        "end",
        # the join mark of pub/sub channel `channel` ('' for none; Keys.joined)
        f"local function joined(channel) return redis.call('GET', channel .. '{JOINED}') or '' end",
        # a history publish already appended (its id), and remembering one for 10 s
        "local function recall(topic, id) return redis.call('GET', K_hid(id)) end",
        "local function remember(topic, id, value)",
        "  redis.call('SET', K_hid(id), value, 'PX', 10000)",
        "end",
        # who receives a PUBLISH to `channel` (pattern subscribers aside), and sending it
        "local function subscribers(channel) return redis.call('PUBSUB', 'NUMSUB', channel)[2] end",
        "local function send(channel, data) redis.call('PUBLISH', channel, data) end",
        # a history's epoch and top, started anew when it has none or was written under another
        # generation (a new primary may lack its last appends: never reuse their offsets)
        "local function history_meta(topic, ttl_ms)",
        "  local meta = K_histm(topic)",
        "  local epoch, gen = unpack(redis.call('HMGET', meta, 'epoch', 'gen'))",
        "  if epoch and (GEN == '' or gen == GEN) then",
        "    return epoch, num(redis.call('HGET', meta, 'top'))",
        "  end",
        "  redis.call('DEL', K_hist(topic))",
        "  epoch = new_epoch()",
        "  redis.call('DEL', meta)",
        "  redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'gen', GEN)",
        "  redis.call('PEXPIRE', meta, ttl_ms)",
        "  return epoch, 0",
        "end",
        "",
    ]
    return "\n".join(lines)
