"""`ClusterScripts`: the Lua scripts of the Redis Cluster backend, run by EVALSHA on one
`RedisCluster` client, each on the shard that owns the one slot it touches.

Sources: `lua/` here, then the scripts shared with the one-server backend (`redis/lua/`),
every one prefixed with `keys.lua_prelude()`. `ROUTES` names, per script and from its
arguments, the keys it touches: they are declared to Redis (KEYS), which routes the call to
their slot's shard and, while that slot migrates, answers ASK or TRYAGAIN (followed by
redis-py) instead of letting a script see half of a group. Every key a script touches is
declared, except the registry's leases in `beat` and the taken jobs' marks in `wh_take` (each
in a slot of its own, rarely migrated: a script meeting that slot's migration fails, and is
tried again at the next heartbeat or poll).

Same interface as `redis/scripts.Scripts` (`run`, `pipeline`, `error`), so the one-server
publisher and webhook store run on it unchanged. A publish with no receiver record and no
history (an app or nodes topic) is a plain SPUBLISH: nothing to check, nothing to declare.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..base import NotRegistered, Unavailable
from ..redis.clients import failure
from ..redis.scripts import LUA_DIR as SHARED_DIR
from .client import POOL_SIZE, ShardWatch
from .keys import ClusterKeys, lua_prelude
from .membership import Membership

LUA_DIR = Path(__file__).parent / "lua"
# errors after which the slot map may be stale (a primary died, a failover)
_MOVED_ON = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError)
# replies that send a call again through the cluster client (it follows them)
_REDIRECTED = (MovedError, AskError, TryAgainError)
SHARED = (
    "cache_get",
    "cache_set",
    "claim_once",
    "connection_count",
    "hit",
    "history",
    "members",
    "online_users",
    "publish",
    "wh_add",
    "wh_cancel",
    "wh_size",
    "wh_take",
)

Args = tuple[Any, ...]
Route = Callable[[ClusterKeys, str, Args], list[str]]


def _key(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


async def _pipeline(
    node: ClusterNode, commands: list[Args], idx: list[int], results: list[Any]
) -> None:
    """Send `commands` to `node` in one write on one of its pooled connections; the reply to
    command k goes to results[idx[k]]: its value, its Redis error, or, from a connection
    error on, that error."""
    try:
        conn = node.acquire_connection()
    except RedisError as exc:  # its pool is full: these calls fail, the other shards' run
        for i in idx:
            results[i] = exc
        return
    k = 0
    try:
        await node.disconnect_if_needed(conn)
        await conn.send_packed_command(conn.pack_commands(commands))
        for k in range(len(idx)):
            try:
                results[idx[k]] = await conn.read_response()
            except ResponseError as exc:
                results[idx[k]] = exc
    except (RedisError, OSError) as exc:  # the connection is closed: the rest is unknown
        for i in idx[k:]:
            results[i] = exc
    finally:
        node.release(conn)


def _channel(k: ClusterKeys, node: str, app: str, channel: str) -> list[str]:
    """A channel's records of `node` (the keys set_channel, subscribe and unsubscribe use)."""
    return [
        k.chn(app, channel),
        k.cown(app, channel, node),
        k.cv(app, channel),
        k.pm(app, channel),
        k.pmu(app, channel),
        k.pv(app, channel),
        k.pmn_of(app, channel, node),
    ]


def _publish(k: ClusterKeys, node: str, a: Args) -> list[str]:
    record, topic = a[1], a[4]
    return ([record] if record else []) + (
        [k.hist(topic), k.histm(topic), *k.hids(topic)] if topic else []
    )


def _registry(node: str) -> Callable[[ClusterKeys], list[str]]:
    return lambda k: [k.nodes(), k.inc(), k.lease(node), k.reaping(node)]


def _webhooks(k: ClusterKeys, node: str, a: Args) -> list[str]:
    """(wh_take also marks the jobs it takes, `p:{wh}:taken:I`: names it cannot declare)"""
    return [k.wh_jobs(), k.wh_due()]


ROUTES: dict[str, Route] = {
    # shared with the one-server backend
    "cache_get": lambda k, n, a: [k.cache(a[0], a[1])],
    "cache_set": lambda k, n, a: [k.cache(a[0], a[1])],
    "claim_once": lambda k, n, a: [k.once(a[0])],
    "connection_count": lambda k, n, a: [k.conn(a[0])],
    "hit": lambda k, n, a: [k.rate(a[0])],
    "history": lambda k, n, a: [k.hist(a[0]), k.histm(a[0])],
    "members": lambda k, n, a: [k.pm(a[0], a[1])],
    "online_users": lambda k, n, a: [k.usr(a[0], a[1])],  # one user per call
    "wh_add": lambda k, n, a: [*_webhooks(k, n, a), k.wh_taken(a[0])],
    "wh_cancel": _webhooks,
    "wh_size": _webhooks,
    "wh_take": _webhooks,
    # the cluster's own
    "publish": _publish,
    "subscribe": lambda k, n, a: _channel(k, n, a[0], a[1]),
    "unsubscribe": lambda k, n, a: _channel(k, n, a[0], a[1]),
    "channel_stats": lambda k, n, a: [k.chn(a[0], a[1]), k.pm(a[0], a[1])],
    "set_channel": lambda k, n, a: _channel(k, a[2], a[0], a[1]),
    "chs": lambda k, n, a: [k.chs(a[1])],
    "connect": lambda k, n, a: [k.conn(a[0]), k.aown(a[0], n)],
    "disconnect": lambda k, n, a: [k.conn(a[0]), k.aown(a[0], n)],
    "set_app": lambda k, n, a: [k.conn(a[0]), k.aown(a[0], a[1])],
    "sign_in": lambda k, n, a: [k.usr(a[0], a[1]), k.uown(a[0], a[1], n)],
    "sign_out": lambda k, n, a: [k.usr(a[0], a[1]), k.uown(a[0], a[1], n)],
    "set_user": lambda k, n, a: [k.usr(a[0], a[1]), k.uown(a[0], a[1], a[2])],
    "index": lambda k, n, a: [k.idx(a[1])],
    "beat": lambda k, n, a: [k.nodes(), k.inc(), k.lease(n), k.reaping(n)],
    "register": lambda k, n, a: _registry(n)(k),
    "deregister": lambda k, n, a: _registry(n)(k),
    "reap_begin": lambda k, n, a: _registry(a[0])(k),
    "reap_end": lambda k, n, a: _registry(a[0])(k),
}

# run whatever this node's registration (resync, reaping, liveness, webhook jobs, history
# reads: as on one server)
UNCHECKED = frozenset(
    {"beat", "register", "deregister", "reap_begin", "reap_end", "index", "chs", "history"}
    | {"set_channel", "set_user", "set_app", "wh_add", "wh_cancel", "wh_size", "wh_take"}
)


@functools.cache
def _load_scripts() -> tuple[dict[str, str], dict[str, str]]:
    prelude = lua_prelude()
    paths = {p.stem: p for p in sorted(LUA_DIR.glob("*.lua"))}
    paths.update((name, SHARED_DIR / f"{name}.lua") for name in SHARED)
    source = {name: prelude + p.read_text(encoding="utf-8") for name, p in paths.items()}
    assert set(source) == set(ROUTES), set(source) ^ set(ROUTES)
    return source, {name: hashlib.sha1(s.encode()).hexdigest() for name, s in source.items()}


class ClusterScripts:
    """The scripts, run by EVALSHA (loaded again on a shard that forgot them: a promoted
    replica, a restart). `run` turns every failure into `Unavailable`, and refuses locally
    (NotRegistered) a script that needs this node registered while it is not."""

    def __init__(
        self, client: RedisCluster, keys: ClusterKeys, membership: Membership, watch: ShardWatch
    ) -> None:
        self.client = client
        self.keys = keys
        self.membership = membership
        self.watch = watch
        self.node = membership.node
        self._source, self._sha = _load_scripts()
        self._turns = asyncio.Semaphore(POOL_SIZE)

    def check(self, name: str = "") -> None:
        """Raise NotRegistered unless this node is registered (or script `name` runs
        whatever its registration)."""
        if name not in UNCHECKED and not self.membership.valid:
            raise NotRegistered(f"node {self.node} is not registered")

    def _evalsha(self, name: str, args: Args) -> tuple[Any, ...]:
        keys = ROUTES[name](self.keys, self.node, args)
        return (self._sha[name], len(keys), *keys, self.keys.prefix, self.membership.me(), *args)

    async def _load(self, name: str) -> None:
        """Load script `name` on every primary that answers (one that does not, a dead one
        still in the slot map, fails only the calls routed to it)."""
        source = self._source[name]
        await asyncio.gather(
            *(
                self.client.execute_command("SCRIPT LOAD", source, target_nodes=node)
                for node in self.client.get_primaries()
            ),
            return_exceptions=True,
        )

    async def raw(self, name: str, *args: Any) -> Any:
        """Run script `name`; Redis errors are raised as is."""
        self.check(name)
        async with self._turns:
            try:
                return await self.client.evalsha(*self._evalsha(name, args))
            except NoScriptError:
                await self._load(name)
                return await self.client.evalsha(*self._evalsha(name, args))

    async def run(self, name: str, *args: Any) -> Any:
        try:
            return await self.raw(name, *args)
        except ResponseError as exc:
            raise self.error(name, exc) from None
        except (RedisError, RedisClusterException, OSError) as exc:
            raise Unavailable(f"Redis Cluster unreachable ({name}): {failure(exc)}") from None

    def _command(self, name: str, args: Args) -> tuple[Args, bytes]:
        """The command that runs script `name` with `args`, and the key that routes it (a
        publish with nothing to check is a plain SPUBLISH: see the module doc)."""
        if name == "publish" and not args[1] and not args[4]:
            return ("SPUBLISH", args[0], args[3]), _key(args[0])
        command = ("EVALSHA", *self._evalsha(name, args))
        return command, _key(command[3])

    async def pipeline(self, name: str, calls: Sequence[Args]) -> list[Any]:
        """Run script `name` once per argument tuple, in one round trip per shard; results
        in call order, a failed call's entry its exception (Redis errors as is). Calls to
        one slot run in call order; a call refused locally (this node not registered) is
        a NOTREG error like the scripts'. Raises a RedisError when the cluster cannot be
        asked.

        Each shard's calls go out as one plain pipeline on a connection of that shard's
        pool, routed by the slot map this client holds (redis-py's `ClusterPipeline` costs
        the node more than the round trip: a routing policy, a slot and a node lookup and
        a reply callback per command). A call the shard redirects (MOVED, ASK: a slot
        moved or migrates; TRYAGAIN) is sent again through the cluster client, which
        follows the redirection and updates the slot map; a shard that forgot the scripts
        gets them again and its calls run once more; a connection error fails that shard's
        calls not answered yet, and the slot map is reloaded."""
        if name not in UNCHECKED and not self.membership.valid:
            return [ResponseError("NOTREG (checked locally)")] * len(calls)
        commands = [self._command(name, args) for args in calls]
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        try:
            async with self._turns:
                for attempt in range(2):
                    try:
                        await self._by_shard(commands, todo, results)
                    except _MOVED_ON:  # a slot no shard covers, a map that cannot be read
                        await self._reload_map()
                        raise
                    for i in todo:
                        if isinstance(results[i], _REDIRECTED):
                            try:
                                results[i] = await self.client.execute_command(*commands[i][0])
                            except (RedisError, OSError) as exc:
                                results[i] = exc
                    if any(isinstance(results[i], _MOVED_ON) for i in todo):
                        await self._reload_map()
                    todo = [i for i in todo if isinstance(results[i], NoScriptError)]
                    if not todo or attempt:
                        break
                    await self._load(name)  # a shard that forgot them: run those again
        except RedisClusterException as exc:
            raise ClusterError(str(exc)) from exc
        return results

    async def _by_shard(
        self, commands: Sequence[tuple[Args, bytes]], todo: Sequence[int], results: list[Any]
    ) -> None:
        """Send commands `todo`, each to the primary of its key's slot, one pipeline per
        shard; each one's reply (or exception) into `results`."""
        if self.client._initialize:  # not connected yet: the first call reads the slot map
            await self.client.initialize()
        nodes = self.client.nodes_manager
        shards: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in todo:
            node = nodes.get_node_from_slot(key_slot(commands[i][1]))
            shards.setdefault(node.name, (node, []))[1].append(i)
        await asyncio.gather(
            *(_pipeline(node, [commands[i][0] for i in idx], idx, results)
              for node, idx in shards.values())
        )  # fmt: skip

    async def _reload_map(self) -> None:
        """Reload the slot map now: redis-py does it after a failed command, not after a
        pipeline that failed without retries (the next one would go to the dead node)."""
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self.client.nodes_manager.initialize()

    async def many(self, name: str, calls: Sequence[Args]) -> list[Any]:
        """`pipeline`, every failure raised as `Unavailable` (the first one)."""
        try:
            results = await self.pipeline(name, calls)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis Cluster unreachable ({name}): {failure(exc)}") from None
        for r in results:
            if isinstance(r, ResponseError):
                raise self.error(name, r)
            if isinstance(r, Exception):
                raise Unavailable(f"Redis Cluster unreachable ({name}): {failure(r)}")
        return results

    def error(self, name: str, exc: ResponseError) -> Unavailable:
        text = str(exc)
        if text.startswith("NOTREG"):
            return NotRegistered(f"node {self.node} is not registered")
        return Unavailable(f"Redis script {name} failed: {text}")
