"""Cluster adapter over Redis: the only module that imports redis.

Delivery: Redis pub/sub. A node subscribes to a channel's bus (`{p}:bus:{app}:{channel}`) only
while it has local subscribers, and to a user's bus (`{p}:ubus:{app}:{user}`) only while a
local socket is signed in as that user. A publish is delivered locally first, then published;
every bus message carries the sender's node id and a node drops its own echo. Wire format: one
JSON header line (`{"v":1,"n":node,"k":kind,...}`), a newline, then the raw frame payload.
No pickle.

State: each node writes only its own keys, listed in `{p}:node:{id}:keys`:
- `{p}:cn:{app}:{node}`   hash channel -> this node's subscriber count
- `{p}:pm:{app}:{channel}:{node}` hash user_id -> user_info JSON (presence members here)
- `{p}:conn:{app}`        hash node -> this node's connection count
- `{p}:us:{app}:{node}`   set of users signed in here
Cluster figures are sums / unions over the live nodes (`{p}:nodes`). Presence joins and leaves
run as Lua scripts, atomically, so `member_added` / `member_removed` go out exactly once per
user for the whole cluster.

Liveness: each node renews a lease (`{p}:lease:{id}`, TTL `node_timeout`) every
`heartbeat_interval`. Any node that finds a registered node without a lease takes a reap lock
and removes the dead node's state, announcing `member_removed` for users that were only there:
a killed node's ghosts are gone within node_timeout + heartbeat_interval. A clean stop reaps
itself at once.

Outages: when Redis is unreachable the node keeps serving its local clients (local delivery
works; cross-node delivery and cluster figures pause), logs the outage once, retries with capped
backoff, and on return re-registers, re-subscribes and re-writes its local truth (announcing
members that are new to the cluster again).

Limits: one Redis server (not Redis Cluster): the Lua scripts read keys they compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..config import App, Config
from ..connection import Connection
from ..extensions import Extensions
from ..hub import ChannelStats, Hub
from ..monitor import TrafficMonitor
from ..protocol import messages
from ..protocol.errors import ConnectionUnauthorized, OverConnectionQuota, PresenceLimit
from ..protocol.frames import Outbound
from .base import Happening

log = logging.getLogger("pushwire.cluster")
T = TypeVar("T")

WIRE_VERSION = 1

# KEYS: none (single Redis). ARGV: prefix, app, channel, node, user_id, user_info, limit.
# Returns {status, id1, info1, ...}: status 1 = first connection of the user in the cluster,
# 0 = already a member, -1 = refused (channel full). The rest is the members' union.
JOIN = """
local p, app, ch, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local uid, info, limit = ARGV[5], ARGV[6], tonumber(ARGV[7])
local prefix = p .. ':pm:' .. app .. ':' .. ch .. ':'
local members, count = {}, 0
for _, n in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  local flat = redis.call('HGETALL', prefix .. n)
  for i = 1, #flat, 2 do
    if members[flat[i]] == nil then members[flat[i]] = flat[i + 1]; count = count + 1 end
  end
end
local existed = members[uid] ~= nil
if not existed and count >= limit then return {-1} end
redis.call('HSET', prefix .. node, uid, info)
redis.call('SADD', p .. ':node:' .. node .. ':keys', cjson.encode({'pm', app, ch}))
if not existed then members[uid] = info end
local out = {existed and 0 or 1}
for k, v in pairs(members) do out[#out + 1] = k; out[#out + 1] = v end
return out
"""

# ARGV: prefix, app, channel, node, user_id. Returns 1 when no node has the user any more.
LEAVE = """
local p, app, ch, node, uid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local prefix = p .. ':pm:' .. app .. ':' .. ch .. ':'
redis.call('HDEL', prefix .. node, uid)
for _, n in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if redis.call('HEXISTS', prefix .. n, uid) == 1 then return 0 end
end
return 1
"""

# ARGV: prefix, app, node, user, op ("in" | "out"). Adds / removes the user from this node's
# signed-in set; returns 1 when the user just came online / went offline cluster-wide.
PRESENCE_OF_USER = """
local p, app, node, uid, op = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local own = p .. ':us:' .. app .. ':' .. node
local elsewhere = false
for _, n in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if n ~= node and redis.call('SISMEMBER', p .. ':us:' .. app .. ':' .. n, uid) == 1 then
    elsewhere = true; break
  end
end
if op == 'in' then
  local added = redis.call('SADD', own, uid)
  redis.call('SADD', p .. ':node:' .. node .. ':keys', cjson.encode({'us', app}))
  if added == 1 and not elsewhere then return 1 end
  return 0
end
local removed = redis.call('SREM', own, uid)
if removed == 1 and not elsewhere then return 1 end
return 0
"""

# ARGV: prefix, app, channel, node, count. Writes this node's subscriber count of a channel and
# returns {total before, total after} over the live nodes: occupied / vacated, decided once.
COUNT = """
local p, app, ch, node, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local before = 0
local nodes = redis.call('SMEMBERS', p .. ':nodes')
for _, n in ipairs(nodes) do
  before = before + tonumber(redis.call('HGET', p .. ':cn:' .. app .. ':' .. n, ch) or '0')
end
local own = p .. ':cn:' .. app .. ':' .. node
local mine = tonumber(redis.call('HGET', own, ch) or '0')
if count > 0 then
  redis.call('HSET', own, ch, count)
  redis.call('SADD', p .. ':node:' .. node .. ':keys', cjson.encode({'cn', app}))
else
  redis.call('HDEL', own, ch)
end
return {before, before - mine + count}
"""

# ARGV: prefix, dead node. Removes everything the node wrote; returns {{app, channel, user, ...}
# for presence members no live node still has, {app, channel, ...} for channels now empty}.
REAP = """
local p, dead = ARGV[1], ARGV[2]
redis.call('SREM', p .. ':nodes', dead)
local nodes = redis.call('SMEMBERS', p .. ':nodes')
local gone, vacated, offline = {}, {}, {}
for _, raw in ipairs(redis.call('SMEMBERS', p .. ':node:' .. dead .. ':keys')) do
  local k = cjson.decode(raw)
  if k[1] == 'pm' then
    local prefix = p .. ':pm:' .. k[2] .. ':' .. k[3] .. ':'
    for _, uid in ipairs(redis.call('HKEYS', prefix .. dead)) do
      local found = false
      for _, n in ipairs(nodes) do
        if redis.call('HEXISTS', prefix .. n, uid) == 1 then found = true; break end
      end
      if not found then gone[#gone + 1] = k[2]; gone[#gone + 1] = k[3]; gone[#gone + 1] = uid end
    end
    redis.call('DEL', prefix .. dead)
  elseif k[1] == 'cn' then
    local own = p .. ':cn:' .. k[2] .. ':' .. dead
    for _, ch in ipairs(redis.call('HKEYS', own)) do
      local others = 0
      for _, n in ipairs(nodes) do
        others = others + tonumber(redis.call('HGET', p .. ':cn:' .. k[2] .. ':' .. n, ch) or '0')
      end
      if others == 0 then vacated[#vacated + 1] = k[2]; vacated[#vacated + 1] = ch end
    end
    redis.call('DEL', own)
  elseif k[1] == 'conn' then
    redis.call('HDEL', p .. ':conn:' .. k[2], dead)
  elseif k[1] == 'us' then
    local own = p .. ':us:' .. k[2] .. ':' .. dead
    for _, uid in ipairs(redis.call('SMEMBERS', own)) do
      local found = false
      for _, n in ipairs(nodes) do
        if redis.call('SISMEMBER', p .. ':us:' .. k[2] .. ':' .. n, uid) == 1 then
          found = true; break
        end
      end
      if not found then offline[#offline + 1] = k[2]; offline[#offline + 1] = uid end
    end
    redis.call('DEL', own)
  end
end
redis.call('DEL', p .. ':node:' .. dead .. ':keys', p .. ':lease:' .. dead)
return {gone, vacated, offline}
"""


class RedisAdapter:
    def __init__(self, hub: Hub, config: Config, node_id: str | None = None) -> None:
        assert hub.cluster_presence, "the cluster adapter needs Hub(cluster_presence=True)"
        self.hub = hub
        self.config = config
        self.node = node_id or uuid.uuid4().hex[:12]
        c = config.cluster
        self.p = c.key_prefix
        self.redis = aioredis.Redis.from_url(
            c.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=0
        )
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.bus_channels: set[str] = set()
        self.healthy = True
        self.tasks: list[asyncio.Task[None]] = []
        self._join = self.redis.register_script(JOIN)
        self._leave = self.redis.register_script(LEAVE)
        self._reap = self.redis.register_script(REAP)
        self._count = self.redis.register_script(COUNT)
        self._user_presence = self.redis.register_script(PRESENCE_OF_USER)
        self.listeners: list[Happening] = []
        self._stopping = False
        self.ext = Extensions()
        self.monitor = TrafficMonitor(self.node)
        self.bus_channels.add(f"{self.p}:ext")  # custom internal messages reach every node
        self._bg: set[asyncio.Task[Any]] = set()
        self._count_sent: dict[tuple[str, str], float] = {}

    def bind_extensions(self, ext: Extensions, monitor: TrafficMonitor) -> None:
        self.ext = ext
        self.monitor = monitor
        monitor.node = self.node
        monitor.forward = self._forward_traffic

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _forward_traffic(self, event: dict[str, Any]) -> None:
        body = (
            orjson.dumps({"v": WIRE_VERSION, "n": self.node, "k": "tap"})
            + b"\n"
            + orjson.dumps(event)
        )
        self._spawn(self._safe("tap", lambda: self.redis.publish(f"{self.p}:tap", body), 0))

    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        await self.ext.run_internal(kind, orjson.loads(body), self.node)
        head = orjson.dumps({"v": WIRE_VERSION, "n": self.node, "k": "ext", "t": kind})
        await self._safe(
            "publish", lambda: self.redis.publish(f"{self.p}:ext", head + b"\n" + body), 0
        )

    async def _tap_heartbeat(self) -> None:
        """Who wants cluster-wide traffic: nodes with cluster monitors keep a key alive; every
        node publishes its traffic only while that key says someone listens."""
        c = self.config.cluster
        key = f"{self.p}:tap-until"
        now = time.time()
        if self.monitor.cluster:
            await self.redis.set(key, now + 3 * c.heartbeat_interval + 1)
            await self._bus_sub(f"{self.p}:tap")
        else:
            await self._bus_unsub(f"{self.p}:tap")
        until = await self.redis.get(key)
        self.monitor.cluster_wanted = until is not None and float(until) > now

    # Keys ----------------------------------------------------------------------------------
    def _bus(self, app_id: str, channel: str) -> str:
        return f"{self.p}:bus:{app_id}:{channel}"

    def _ubus(self, app_id: str, user_id: str) -> str:
        return f"{self.p}:ubus:{app_id}:{user_id}"

    def _owned(self, *parts: str) -> str:
        return orjson.dumps(list(parts)).decode()

    # Outage handling -------------------------------------------------------------------------
    async def _safe(self, what: str, op: Callable[[], Awaitable[T]], default: T) -> T:
        """Run a Redis operation; on failure log the outage once and return `default`."""
        try:
            result = await op()
        except (RedisError, OSError) as exc:
            if self.healthy:
                self.healthy = False
                log.error(
                    "Redis unreachable (%s: %s): serving local clients only until it returns",
                    what,
                    exc,
                )
            return default
        return result

    # Lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._register()
        except (RedisError, OSError) as exc:
            self.healthy = False
            log.error("Redis unreachable at start (%s): retrying in the background", exc)
        self.tasks.append(asyncio.create_task(self._listen()))
        self.tasks.append(asyncio.create_task(self._heartbeat()))
        log.info("cluster node %s joined via Redis", self.node)

    async def _register(self) -> None:
        c = self.config.cluster
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(f"{self.p}:nodes", self.node)
        pipe.set(f"{self.p}:lease:{self.node}", "1", px=int(c.node_timeout * 1000))
        await pipe.execute()

    async def stop(self) -> None:
        self._stopping = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._safe("leave", lambda: self._reap_node(self.node), None)
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.redis.aclose()

    async def _heartbeat(self) -> None:
        c = self.config.cluster
        backoff = c.heartbeat_interval
        while True:
            await asyncio.sleep(backoff)
            try:
                registered = await self.redis.sismember(f"{self.p}:nodes", self.node)
                await self._register()
                if not self.healthy or not registered:
                    log.warning("Redis is back (or lost our state): re-publishing local state")
                    await self._resync()
                    self.healthy = True
                backoff = c.heartbeat_interval
                await self._reap_dead()
                await self._tap_heartbeat()
            except (RedisError, OSError) as exc:
                if self.healthy:
                    log.error("Redis unreachable (%s): serving local clients only", exc)
                    self.healthy = False
                backoff = min(backoff * 2, 5.0)

    async def _reap_dead(self) -> None:
        nodes = await self.redis.smembers(f"{self.p}:nodes")
        for raw in nodes:
            n = _s(raw)
            if n == self.node or await self.redis.exists(f"{self.p}:lease:{n}"):
                continue
            lock = f"{self.p}:reap:{n}"
            if await self.redis.set(lock, self.node, nx=True, px=30000):
                log.warning("node %s missed its lease: removing its state", n)
                await self._reap_node(n)

    def _tell(self, app: App, kind: str, channel: str, **fields: Any) -> None:
        for listener in self.listeners:
            listener(app, kind, channel, fields)

    async def _reap_node(self, node: str) -> None:
        gone, vacated, offline = await self._reap(args=[self.p, node])
        for i in range(0, len(offline), 2):
            app = self.config.app_by_id(_s(offline[i]))
            if app is not None:
                await self._announce_status(app, _s(offline[i + 1]), "offline")
        for i in range(0, len(gone), 3):
            app = self.config.app_by_id(_s(gone[i]))
            if app is None:
                continue
            channel, uid = _s(gone[i + 1]), _s(gone[i + 2])
            msg = messages.member_removed(channel, uid)
            self.hub.broadcast(app, channel, msg, None)
            await self._send_bus(self._bus(app.id, channel), "pub", msg, a=app.id, c=channel)
            self._tell(app, "member_removed", channel, user_id=uid)
        for i in range(0, len(vacated), 2):
            app = self.config.app_by_id(_s(vacated[i]))
            if app is not None:
                self._tell(app, "channel_vacated", _s(vacated[i + 1]))

    async def _resync(self) -> None:
        """Write this node's local truth again and re-subscribe (after an outage)."""
        for st in list(self.hub.apps.values()):
            app = st.app
            pipe = self.redis.pipeline(transaction=False)
            cn = f"{self.p}:cn:{app.id}:{self.node}"
            pipe.delete(cn)
            for name, ch in st.channels.items():
                pipe.hset(cn, name, len(ch.subscribers))
            pipe.hset(f"{self.p}:conn:{app.id}", self.node, len(st.connections))
            keys = f"{self.p}:node:{self.node}:keys"
            pipe.sadd(keys, self._owned("cn", app.id), self._owned("conn", app.id))
            if st.users:
                pipe.sadd(f"{self.p}:us:{app.id}:{self.node}", *st.users)
                pipe.sadd(keys, self._owned("us", app.id))
            await pipe.execute()
            for name, ch in list(st.channels.items()):
                for uid, m in list(ch.members.items()):
                    res = await self._join(
                        args=[
                            self.p,
                            app.id,
                            name,
                            self.node,
                            uid,
                            orjson.dumps(m.user_info),
                            1 << 30,
                        ]
                    )
                    if res[0] == 1:
                        msg = messages.member_added(name, uid, m.user_info)
                        self.hub.broadcast(app, name, msg, None)
                        await self._send_bus(self._bus(app.id, name), "pub", msg, a=app.id, c=name)
        channels = list(self.bus_channels)
        if channels:
            await self.pubsub.subscribe(*channels)

    # Bus -------------------------------------------------------------------------------------
    async def _send_bus(self, bus: str, kind: str, msg: Outbound | None, **header: Any) -> None:
        head = orjson.dumps({"v": WIRE_VERSION, "n": self.node, "k": kind, **header})
        body = head + b"\n" + (msg.payload if msg is not None else b"")
        await self._safe("publish", lambda: self.redis.publish(bus, body), 0)

    async def _bus_sub(self, bus: str) -> None:
        if bus not in self.bus_channels:
            self.bus_channels.add(bus)
            await self._safe("subscribe", lambda: self.pubsub.subscribe(bus), None)

    async def _bus_unsub(self, bus: str) -> None:
        if bus in self.bus_channels:
            self.bus_channels.discard(bus)
            await self._safe("unsubscribe", lambda: self.pubsub.unsubscribe(bus), None)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not self.pubsub.subscribed:
                    if self.bus_channels:
                        await self.pubsub.subscribe(*self.bus_channels)
                    else:
                        await asyncio.sleep(0.05)
                        continue
                msg = await self.pubsub.get_message(timeout=1.0)
                backoff = 0.1
                if msg is not None and msg["type"] == "message":
                    self._on_bus(msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                # the heartbeat reports outages (once); this only reconnects
                log.debug("Redis pub/sub lost (%s): reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(RedisError, OSError):
                    await self.pubsub.reset()
                self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            except Exception:
                log.exception("bad bus message ignored")

    def _on_bus(self, raw: bytes) -> None:
        head_raw, _, payload = raw.partition(b"\n")
        head = orjson.loads(head_raw)
        if head.get("v") != WIRE_VERSION or head.get("n") == self.node:
            return
        if head["k"] == "ext":
            self._spawn(self.ext.run_internal(head["t"], orjson.loads(payload), head["n"]))
            return
        if head["k"] == "tap":
            self.monitor.deliver(orjson.loads(payload), remote=True)
            return
        app = self.config.app_by_id(head.get("a", ""))
        if app is None:
            return
        kind = head["k"]
        if kind == "pub":
            self.hub.broadcast(app, head["c"], Outbound(payload), head.get("x"))
        elif kind == "user":
            self.hub.send_to_user(app, head["u"], Outbound(payload), head.get("x"))
        elif kind == "term":
            self._terminate_local(app, head["u"])
        elif kind == "watch":
            self.hub.notify_watchers(app, head["u"], head["s"])

    # Connections -----------------------------------------------------------------------------
    async def add_connection(self, conn: Connection) -> None:
        app = conn.app
        if app.max_connections:
            counts = await self._safe(
                "quota", lambda: self.redis.hgetall(f"{self.p}:conn:{app.id}"), None
            )
            if counts is not None:
                # other nodes' written counts, plus this node's live figure
                others = sum(int(v) for n, v in counts.items() if _s(n) != self.node)
                total = others + self.hub.connection_count(app)
                if total >= app.max_connections:
                    raise OverConnectionQuota(
                        f"Application is over its connection quota ({app.max_connections})"
                    )
        self.hub.add_connection(conn)
        await self._write_conn_count(app)

    async def _write_conn_count(self, app: App) -> None:
        n = self.hub.connection_count(app)

        async def op() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(f"{self.p}:conn:{app.id}", self.node, n)
            pipe.sadd(f"{self.p}:node:{self.node}:keys", self._owned("conn", app.id))
            await pipe.execute()

        await self._safe("connections", op, None)

    async def remove_connection(self, conn: Connection) -> None:
        for name in list(conn.channels):
            await self.unsubscribe(conn, name)
        user_id = conn.user_id
        self.hub.remove_connection(conn)
        if user_id is not None and not self.hub.user_connections(conn.app, user_id):
            await self._bus_unsub(self._ubus(conn.app.id, user_id))
            offline = await self._safe(
                "users",
                lambda: self._user_presence(args=[self.p, conn.app.id, self.node, user_id, "out"]),
                0,
            )
            if offline == 1:
                await self._announce_status(conn.app, user_id, "offline")
        await self._write_conn_count(conn.app)

    # Channels --------------------------------------------------------------------------------
    async def subscribe(
        self, conn: Connection, channel: str, member: tuple[str, Any] | None
    ) -> dict[str, Any] | None:
        hub, app = self.hub, conn.app
        ch = hub.channel(app, channel)
        if ch is not None and conn.socket_id in ch.subscribers:
            return await self.presence_members(app, channel) if member else None
        members: dict[str, Any] | None = None
        announce: str | None = None  # member_added is told after channel_occupied
        if member is not None:
            uid, info = member
            if ch is None or uid not in ch.members:
                res = await self._safe(
                    "presence join",
                    lambda: self._join(
                        args=[
                            self.p,
                            app.id,
                            channel,
                            self.node,
                            uid,
                            orjson.dumps(info),
                            app.max_presence_members,
                        ]
                    ),
                    None,
                )
                if res is None:  # Redis is down: decide with local knowledge only
                    local = {} if ch is None else ch.presence_hash()
                    if len(local) >= app.max_presence_members:
                        raise PresenceLimit(f"Presence channel {channel} is full")
                    res = [1]
                    members = {**local, uid: info}
                if res[0] == -1:
                    raise PresenceLimit(
                        f"Presence channel {channel} is full ({app.max_presence_members} members)"
                    )
                if members is None:
                    members = {
                        res[i].decode(): orjson.loads(res[i + 1]) for i in range(1, len(res), 2)
                    }
                if res[0] == 1:
                    msg = messages.member_added(channel, uid, info)
                    hub.broadcast(app, channel, msg, conn.socket_id)
                    await self._send_bus(
                        self._bus(app.id, channel),
                        "pub",
                        msg,
                        a=app.id,
                        c=channel,
                        x=conn.socket_id,
                    )
                    announce = uid
            else:
                members = await self.presence_members(app, channel)
        hub.subscribe(conn, channel, member)
        if ch is None:
            await self._bus_sub(self._bus(app.id, channel))
        await self._write_channel_count(app, channel, conn.socket_id)
        if announce is not None:
            self._tell(app, "member_added", channel, user_id=announce)
        if members is not None:
            return dict(sorted(members.items()))
        return None

    async def _write_channel_count(self, app: App, channel: str, joiner: str | None = None) -> None:
        """Write this node's count; announce occupied / vacated when the cluster total moves
        from / to zero (decided atomically in Redis, so exactly once), and the cluster-wide
        `pusher_internal:subscription_count` when the app enables it (the joining socket
        gets its count from the handler, after its subscription_succeeded)."""
        ch = self.hub.channel(app, channel)
        n = 0 if ch is None else len(ch.subscribers)
        res = await self._safe(
            "channel count", lambda: self._count(args=[self.p, app.id, channel, self.node, n]), None
        )
        if res is None:
            return
        before, after = int(res[0]), int(res[1])
        if before <= 0 < after:
            self._tell(app, "channel_occupied", channel)
        elif after <= 0 < before:
            self._tell(app, "channel_vacated", channel)
        if app.enable_subscription_count and after > 0 and not channel.startswith("presence-"):
            now = time.monotonic()
            key = (app.id, channel)
            if after <= 100 or now - self._count_sent.get(key, float("-inf")) >= 5.0:
                self._count_sent[key] = now
                msg = messages.subscription_count(channel, after)
                self.hub.broadcast(app, channel, msg, joiner)
                await self._send_bus(
                    self._bus(app.id, channel), "pub", msg, a=app.id, c=channel, x=joiner
                )

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        hub, app = self.hub, conn.app
        uid = conn.channels.get(channel)
        ch = hub.channel(app, channel)
        if ch is None or conn.socket_id not in ch.subscribers:
            hub.unsubscribe(conn, channel)
            return
        last_local = (
            uid is not None and ch.members.get(uid) is not None and ch.members[uid].connections == 1
        )
        hub.unsubscribe(conn, channel)
        if last_local:
            assert uid is not None
            gone = await self._safe(
                "presence leave",
                lambda: self._leave(args=[self.p, app.id, channel, self.node, uid]),
                1,
            )
            if gone == 1:
                msg = messages.member_removed(channel, uid)
                hub.broadcast(app, channel, msg, None)
                await self._send_bus(self._bus(app.id, channel), "pub", msg, a=app.id, c=channel)
                self._tell(app, "member_removed", channel, user_id=uid)
        if hub.channel(app, channel) is None:
            await self._bus_unsub(self._bus(app.id, channel))
        await self._write_channel_count(app, channel)

    async def publish(
        self, app: App, channel: str, msg: Outbound, except_socket_id: str | None
    ) -> None:
        self.hub.broadcast(app, channel, msg, except_socket_id)
        await self._send_bus(
            self._bus(app.id, channel), "pub", msg, a=app.id, c=channel, x=except_socket_id
        )

    # Users -----------------------------------------------------------------------------------
    async def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None:
        app = conn.app
        first_local = not self.hub.user_connections(app, user_id)
        self.hub.sign_in(conn, user_id, user_data)
        await self._bus_sub(self._ubus(app.id, user_id))
        if conn.watchlist and app.enable_watchlist_events:
            await self._bus_sub(self._wbus(app.id))
        if first_local:
            online = await self._safe(
                "sign-in",
                lambda: self._user_presence(args=[self.p, app.id, self.node, user_id, "in"]),
                0,
            )
            if online == 1:
                await self._announce_status(app, user_id, "online")

    def _wbus(self, app_id: str) -> str:
        return f"{self.p}:watch:{app_id}"

    async def _announce_status(self, app: App, user_id: str, status: str) -> None:
        """Watchlist events for a user who came online / went offline cluster-wide."""
        if not app.enable_watchlist_events:
            return
        self.hub.notify_watchers(app, user_id, status)
        await self._send_bus(self._wbus(app.id), "watch", None, a=app.id, u=user_id, s=status)

    async def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> None:
        self.hub.send_to_user(app, user_id, msg, except_socket_id)
        await self._send_bus(
            self._ubus(app.id, user_id), "user", msg, a=app.id, u=user_id, x=except_socket_id
        )

    def _terminate_local(self, app: App, user_id: str) -> int:
        conns = self.hub.user_connections(app, user_id)
        err = ConnectionUnauthorized("Connection terminated by the app (terminate_connections)")
        for conn in conns:
            conn.send_error_and_close(err)
        return len(conns)

    async def terminate_user(self, app: App, user_id: str) -> int:
        n = self._terminate_local(app, user_id)
        await self._send_bus(self._ubus(app.id, user_id), "term", None, a=app.id, u=user_id)
        return n

    async def claim_once(self, key: str, ttl: float) -> bool:
        return bool(
            await self._safe(
                "claim",
                lambda: self.redis.set(
                    f"{self.p}:once:{key}", self.node, nx=True, px=int(ttl * 1000)
                ),
                True,
            )
        )

    async def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]:
        async def op() -> list[str]:
            nodes = await self._nodes()
            pipe = self.redis.pipeline(transaction=False)
            for n in nodes:
                pipe.smismember(f"{self.p}:us:{app.id}:{n}", list(user_ids))
            rows = await pipe.execute()
            return [u for i, u in enumerate(user_ids) if any(r[i] for r in rows)]

        return await self._safe("online users", op, self.hub.online_users(app, user_ids))

    # Figures ---------------------------------------------------------------------------------
    async def _nodes(self) -> list[str]:
        return [_s(n) for n in await self.redis.smembers(f"{self.p}:nodes")]

    async def _member_ids(self, app: App, channels: list[str]) -> dict[str, set[str]]:
        nodes = await self._nodes()
        pipe = self.redis.pipeline(transaction=False)
        for c in channels:
            for n in nodes:
                pipe.hkeys(f"{self.p}:pm:{app.id}:{c}:{n}")
        rows = await pipe.execute()
        out: dict[str, set[str]] = {}
        for i, c in enumerate(channels):
            ids: set[str] = set()
            for r in rows[i * len(nodes) : (i + 1) * len(nodes)]:
                ids.update(k.decode() for k in r)
            out[c] = ids
        return out

    async def channels(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        async def op() -> dict[str, ChannelStats]:
            nodes = await self._nodes()
            pipe = self.redis.pipeline(transaction=False)
            for n in nodes:
                pipe.hgetall(f"{self.p}:cn:{app.id}:{n}")
            counts: dict[str, int] = {}
            for row in await pipe.execute():
                for k, v in row.items():
                    name = k.decode()
                    if name.startswith(prefix):
                        counts[name] = counts.get(name, 0) + int(v)
            counts = {k: v for k, v in counts.items() if v > 0}
            presence = [c for c in counts if c.startswith("presence-")]
            ids = await self._member_ids(app, presence) if presence else {}
            return {
                c: ChannelStats(v, len(ids[c]) if c in ids else None) for c, v in counts.items()
            }

        return await self._safe("channels", op, {})

    async def channel_stats(self, app: App, channel: str) -> ChannelStats | None:
        async def op() -> ChannelStats | None:
            nodes = await self._nodes()
            pipe = self.redis.pipeline(transaction=False)
            for n in nodes:
                pipe.hget(f"{self.p}:cn:{app.id}:{n}", channel)
            total = sum(int(v) for v in await pipe.execute() if v is not None)
            if total <= 0:
                return None
            users = None
            if channel.startswith("presence-"):
                users = len((await self._member_ids(app, [channel]))[channel])
            return ChannelStats(total, users)

        ch = self.hub.channel(app, channel)
        local = None if ch is None else self.hub.stats(ch)
        return await self._safe("channel", op, local)

    async def presence_members(self, app: App, channel: str) -> dict[str, Any]:
        async def op() -> dict[str, Any]:
            nodes = await self._nodes()
            pipe = self.redis.pipeline(transaction=False)
            for n in nodes:
                pipe.hgetall(f"{self.p}:pm:{app.id}:{channel}:{n}")
            out: dict[str, Any] = {}
            for row in await pipe.execute():
                for k, v in row.items():
                    out.setdefault(k.decode(), orjson.loads(v))
            return dict(sorted(out.items()))

        ch = self.hub.channel(app, channel)
        local = {} if ch is None else ch.presence_hash()
        return await self._safe("members", op, local)

    async def connection_count(self, app: App) -> int:
        async def op() -> int:
            return sum(int(v) for v in await self.redis.hvals(f"{self.p}:conn:{app.id}"))

        return await self._safe("connections", op, self.hub.connection_count(app))

    # Cache channels --------------------------------------------------------------------------
    async def cache_set(self, app: App, channel: str, msg: Outbound) -> None:
        self.hub.cache_set(app, channel, msg)
        await self._safe(
            "cache",
            lambda: self.redis.set(
                f"{self.p}:cache:{app.id}:{channel}", msg.payload, px=int(app.cache_ttl * 1000)
            ),
            None,
        )

    async def cache_get(self, app: App, channel: str) -> tuple[Outbound, float] | None:
        async def op() -> tuple[Outbound, float] | None:
            pipe = self.redis.pipeline(transaction=False)
            key = f"{self.p}:cache:{app.id}:{channel}"
            pipe.get(key)
            pipe.pttl(key)
            payload, ttl = await pipe.execute()
            if payload is None:
                return None
            return Outbound(payload), max(0.0, ttl / 1000)

        entry = self.hub.cache_get(app, channel)
        local = None if entry is None else (entry.msg, entry.expires_at - self.hub.clock())
        return await self._safe("cache", op, local)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ARGV: prefix, now, limit. Claims due jobs atomically: each goes to exactly one node.
TAKE_DUE = """
local p, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', p .. ':wh:due', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. ':wh:due', id)
  local job = redis.call('HGET', p .. ':wh:jobs', id)
  redis.call('HDEL', p .. ':wh:jobs', id)
  if job then out[#out + 1] = job end
end
return out
"""

# ARGV: prefix, id, job, due, max. Returns 0 when the queue is full.
ADD_JOB = """
local p, id, job, due, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local jobs = p .. ':wh:jobs'
if redis.call('HEXISTS', jobs, id) == 0 and redis.call('HLEN', jobs) >= max then
  return 0
end
redis.call('HSET', p .. ':wh:jobs', id, job)
redis.call('ZADD', p .. ':wh:due', due, id)
return 1
"""


class RedisWebhookStore:
    """Webhook jobs kept in Redis (a hash of jobs and a sorted set of due times), so queued
    webhooks survive a node restart and each is sent by exactly one node of the cluster."""

    def __init__(self, adapter: RedisAdapter, max_size: int) -> None:
        self.redis = adapter.redis
        self.p = adapter.p
        self.max_size = max_size
        self._take = self.redis.register_script(TAKE_DUE)
        self._add = self.redis.register_script(ADD_JOB)

    async def add(self, job_id: str, job: bytes, due: float) -> bool:
        return bool(await self._add(args=[self.p, job_id, job, due, self.max_size]))

    async def cancel(self, job_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(f"{self.p}:wh:due", job_id)
        pipe.hdel(f"{self.p}:wh:jobs", job_id)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def take_due(self, now: float, limit: int) -> list[bytes]:
        return list(await self._take(args=[self.p, now, limit]))

    async def size(self) -> int:
        return int(await self.redis.hlen(f"{self.p}:wh:jobs"))
