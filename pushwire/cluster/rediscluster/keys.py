"""Every Redis Cluster name the backend uses, with the hash tags that decide their slots, for
Python and for the Lua scripts (as `redis/keys.py` for one server).

A hash tag (the part of a name between the first `{` and the next `}`) decides the slot, so a
group of names tagged alike lives on one shard and one script can touch them atomically.
Let p = prefix, A an app id, N a node id, C a channel, U a user id, T a bus topic
(`base.channel_topic` and friends: `c:A:C`, `u:A:U`, `a:A`, `n`):

The registry, one slot (`{reg}`): who is registered, under which incarnation, their leases.
- `p:{reg}:nodes`          set: registered nodes
- `p:{reg}:inc`            hash N -> the incarnation N registered under (see `membership.py`)
- `p:{reg}:lease:N`        string with PX = node_timeout: N's lease
- `p:{reg}:reaping:N`      string with PX: a reaper's claim on N (one reaper at a time)

A node's index, its own slot (`{n:N}`):
- `p:{n:N}:idx`            hash: field `!inc` -> the incarnation that may add to it (`~I`:
                           frozen by a reaper of incarnation I); `c\\nA\\nC`, `u\\nA\\nU`,
                           `a\\nA` -> a token: the groups where N may hold records (a superset)

A channel C of app A, the slot of its bus topic `{c:A:C}`:
- `p:{c:A:C}:chn`          hash N -> subscribers on N (their sum: the channel's subscribers)
- `p:{c:A:C}:pm`           hash U -> user_info JSON: the presence members
- `p:{c:A:C}:pmu`          hash U -> number of nodes holding a socket of U in C
- `p:{c:A:C}:pmn:N`        hash U -> sockets of U in C on N
- `p:{c:A:C}:pv`           string: the membership version (kept a day after a change)
- `p:{c:A:C}:cv`           string: the occupancy version (of the last occupied / vacated)
- `p:{c:A:C}:own:N`        string: the incarnation N's records in C belong to (`~I`: reaped
                           as incarnation I; writes of an incarnation <= I are refused)
- `p:{c:A:C}:cache`        string with PX: the cache channel's last payload
- `p:{c:A:C}:bus`          the sharded pub/sub channel of topic `c:A:C` (SSUBSCRIBE)
- `p:{c:A:C}:hist`, `:histm`, `:hid`, `:hid:old`: the topic's history stream, its epoch and
                           top, and the ids of recent history publishes (two hashes that take
                           turns: a retried publish is appended once)
A user U of app A, `{u:A:U}`: `:usr` (hash N -> signed-in sockets on N), `:own:N`, `:bus`.
An app A, `{a:A}`: `:conn` (hash N -> connections on N: the quota), `:chs` (hash C -> the
occupancy version that last marked C occupied: the app's channel index), `:own:N`, `:bus`.
Other topics T (`n`: every node): `p:{T}:bus`.
- `p:{o:K}:once`, `p:{r:K}:rate`: a claim, a rate counter (each its own slot)
- `p:{wh}:jobs`, `p:{wh}:due`, `p:{wh}:taken:I`: webhook jobs (one slot)

Assumptions: those of `redis/keys.py`, and a prefix without `{` or `}`. A `}` in an app id or
a user id shortens the tag, but alike in every name of its group: the group keeps one slot.
"""

from __future__ import annotations

from ..base import app_topic, channel_topic, user_topic
from ..redis.keys import LUA_HELPERS, Keys, lua_function


def _tagged(group: str) -> str:
    """`group` (a format template) as a hash tag in a format template."""
    return "{{" + group + "}}"


CHANNEL = _tagged(channel_topic("{app}", "{channel}"))
USER = _tagged(user_topic("{app}", "{user}"))
APP = _tagged(app_topic("{app}"))
TOPIC = _tagged("{topic}")

TEMPLATES: dict[str, str] = {
    "nodes": "{{reg}}:nodes",
    "inc": "{{reg}}:inc",
    "lease": "{{reg}}:lease:{node}",
    "reaping": "{{reg}}:reaping:{node}",
    "idx": "{{n:{node}}}:idx",
    "chn": CHANNEL + ":chn",
    "pm": CHANNEL + ":pm",
    "pmu": CHANNEL + ":pmu",
    "pmn": CHANNEL + ":pmn:{node}",
    "pv": CHANNEL + ":pv",
    "cv": CHANNEL + ":cv",
    "cown": CHANNEL + ":own:{node}",
    "cache": CHANNEL + ":cache",
    "usr": USER + ":usr",
    "uown": USER + ":own:{node}",
    "conn": APP + ":conn",
    "chs": APP + ":chs",
    "aown": APP + ":own:{node}",
    "bus": TOPIC + ":bus",
    "hist": TOPIC + ":hist",
    "histm": TOPIC + ":histm",
    "hid": TOPIC + ":hid",
    "hid_old": TOPIC + ":hid:old",
    "once": "{{o:{key}}}:once",
    "rate": "{{r:{key}}}:rate",
    "wh_jobs": "{{wh}}:jobs",
    "wh_due": "{{wh}}:due",
    "wh_taken": "{{wh}}:taken:{id}",
}

# How long a reaped incarnation's mark stays in a group it was removed from (its writes, if
# any arrive later, are refused meanwhile). A node that comes back later than this is very
# late: its in-flight writes are long gone.
FENCE_TTL_MS = 86_400_000


class ClusterKeys(Keys):
    templates = TEMPLATES

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix {prefix!r}: no '{{' or '}}' with Redis Cluster")
        super().__init__(prefix)

    def inc(self) -> str:
        return self._k("inc")

    def reaping(self, node: str) -> str:
        return self._k("reaping", node=node)

    def idx(self, node: str) -> str:
        return self._k("idx", node=node)

    def pmn_of(self, app: str, channel: str, node: str) -> str:
        return self._k("pmn", app=app, channel=channel, node=node)

    def cv(self, app: str, channel: str) -> str:
        return self._k("cv", app=app, channel=channel)

    def cown(self, app: str, channel: str, node: str) -> str:
        return self._k("cown", app=app, channel=channel, node=node)

    def uown(self, app: str, user: str, node: str) -> str:
        return self._k("uown", app=app, user=user, node=node)

    def aown(self, app: str, node: str) -> str:
        return self._k("aown", app=app, node=node)

    def histm(self, topic: str) -> str:
        return self._k("histm", topic=topic)

    def hids(self, topic: str) -> tuple[str, str]:
        return self._k("hid", topic=topic), self._k("hid_old", topic=topic)


def lua_prelude() -> str:
    """The Lua every cluster script starts with. ARGV[1] is the prefix; ARGV[2] this node's
    id, its incarnation and the nodes it saw dead at its last heartbeat, one per line."""
    lines = [
        "local P = ARGV[1]",
        "local NODE, INC, DEADS = string.match(ARGV[2], '^([^\\n]*)\\n([^\\n]*)\\n?(.*)$')",
        "local DEAD = {}",
        "for n in string.gmatch(DEADS, '[^\\n]+') do DEAD[n] = true end",
        *(lua_function(name, t) for name, t in TEMPLATES.items()),
        *LUA_HELPERS,
        f"local FENCE_TTL_MS = {FENCE_TTL_MS}",
        # the caller checked its own registration before it sent a script that needs it
        "local function registered(node) return node == NODE end",
        # How many nodes listed in `record` (node -> count) must receive a publish: this node
        # aside unless it receives its own (`echo`). Returns nil and the node when a listed
        # node was dead at the publisher's last heartbeat: it cannot vouch for its
        # subscribers (cut off, paused), so a publish must not count on its subscription.
        "local function receivers(record, echo)",
        "  local need = 0",
        "  for _, n in ipairs(redis.call('HKEYS', record)) do",
        "    if n ~= NODE then",
        "      if DEAD[n] then return nil, n end",
        "      need = need + 1",
        "    elseif echo then",
        "      need = need + 1",
        "    end",
        "  end",
        "  return need",
        "end",
        # a history publish already appended: recent ids in two hashes that take turns
        "local function recall(topic, id)",
        "  return redis.call('HGET', K_hid(topic), id) or redis.call('HGET', K_hid_old(topic), id)",
        "end",
        "local function remember(topic, id, value)",
        "  local hid = K_hid(topic)",
        "  redis.call('HSET', hid, id, value)",
        "  redis.call('PEXPIRE', hid, 60000)",
        "  if redis.call('HLEN', hid) >= 1000 then redis.call('RENAME', hid, K_hid_old(topic)) end",
        "end",
        # sharded pub/sub: SPUBLISH reaches the subscribers of this shard, and only those
        "local function subscribers(channel)",
        "  return redis.call('PUBSUB', 'SHARDNUMSUB', channel)[2]",
        "end",
        "local function send(channel, data) redis.call('SPUBLISH', channel, data) end",
        # The replication ids of this server: its own, and the one of the primary it replaced
        # when it was promoted (a replica's last writes may be missing).
        "local function replids()",
        "  local info = redis.call('INFO', 'replication')",
        "  return string.match(info, 'master_replid:(%w+)'),",
        "         string.match(info, 'master_replid2:(%w+)')",
        "end",
        # A history's epoch and top, started anew when it has none or was last written on
        # the primary this one replaced (a failover may have lost its last appends: never
        # reuse their offsets). Written on another shard (a migrated slot): kept, adopted.
        "local function history_meta(topic, ttl_ms)",
        "  local meta = K_histm(topic)",
        "  local epoch, gen = unpack(redis.call('HMGET', meta, 'epoch', 'gen'))",
        "  local id, previous = replids()",
        "  if epoch and gen ~= previous then",
        "    if gen ~= id then redis.call('HSET', meta, 'gen', id) end",
        "    return epoch, num(redis.call('HGET', meta, 'top'))",
        "  end",
        "  redis.call('DEL', K_hist(topic))",
        "  epoch = new_epoch()",
        "  redis.call('DEL', meta)",
        "  redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'gen', id)",
        "  redis.call('PEXPIRE', meta, ttl_ms)",
        "  return epoch, 0",
        "end",
        # The registration check of one group (a channel, a user, an app), through `own`, the
        # incarnation this node's records there belong to: a write of incarnation INC is
        # refused when a reaper removed an incarnation >= INC there, or a newer incarnation
        # of this node wrote there (this write is stale); otherwise INC owns the records.
        "local function owner_state(v, inc)",
        "  if not v then return 'none' end",
        "  if string.sub(v, 1, 1) == '~' then",
        "    if string.sub(v, 2) >= inc then return 'reaped' end",
        "    return 'older'",
        "  end",
        "  if v > inc then return 'newer' end",
        "  if v == inc then return 'same' end",
        "  return 'older'",
        "end",
        "local function writable(own)",
        "  local s = owner_state(redis.call('GET', own), INC)",
        "  if s == 'reaped' or s == 'newer' then return false end",
        "  if s ~= 'same' then redis.call('SET', own, INC) end",
        "  return true",
        "end",
        # Resync ('sync') or reaping ('reap') of `node`'s records in one group (`own`):
        # 'refuse' a sync for a reaped or newer incarnation; 'skip' a reap of records reaped
        # already or of a newer incarnation; else 'go'. Then `records_done` marks the group.
        "local function records_step(own, inc, mode)",
        "  local s = owner_state(redis.call('GET', own), inc)",
        "  if s == 'reaped' or s == 'newer' then",
        "    if mode == 'reap' then return 'skip' end",
        "    return 'refuse'",
        "  end",
        "  return 'go'",
        "end",
        "local function records_done(own, inc, mode, holds)",
        "  if mode == 'reap' then",
        "    redis.call('SET', own, '~' .. inc, 'PX', FENCE_TTL_MS)",
        "  elseif holds then",
        "    redis.call('SET', own, inc)",
        "  else",
        "    redis.call('DEL', own)",
        "  end",
        "end",
        "local function positive(v)",
        "  v = tonumber(v)",
        "  if v and v > 0 then return v end",
        "  return 0",
        "end",
        "local function push(t, ...)",
        "  for _, v in ipairs({...}) do t[#t + 1] = v end",
        "end",
        # after a write: a node holding nothing in the group owns nothing there
        "local function settle(own, holds)",
        "  if not holds and redis.call('GET', own) == INC then redis.call('DEL', own) end",
        "end",
        "",
    ]
    return "\n".join(lines)
