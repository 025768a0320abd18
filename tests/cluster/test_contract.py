"""Contract tests of the cluster backends: the same test functions run against the memory
backend (several nodes on one `Backplane`, with a fake clock) and against the Redis backend
(several `RedisBackend`s with their own node ids and one key prefix, over a real redis-server).
A few tests at the end are Redis-only (the bus receiver check, a Redis restart)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pushwire.cluster.base import (
    NODES_TOPIC,
    AppSnapshot,
    BusKind,
    BusMessage,
    Changes,
    ChannelStats,
    Joined,
    Left,
    Unavailable,
    app_topic,
    channel_topic,
    encode,
    user_topic,
)
from pushwire.cluster.memory import Backplane, MemoryBroker, MemoryLiveness, MemoryState
from pushwire.cluster.redis import RedisBackend
from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.cluster.rediscluster import RedisClusterBackend
from pushwire.protocol.errors import PresenceLimit
from pushwire.protocol.history import HistoryPolicy
from pushwire.webhooks import MemoryWebhookStore, WebhookStore
from tests.conftest import start_redis
from tests.helpers.blackhole import BlackholeProxy

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def redis_client(url: str) -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(url)

APP = "app-1"
APP2 = "app-2"
REDIS_NODE_TIMEOUT = 0.5


def bounded(seconds: float = 10.0) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Fail a test that runs longer than `seconds`."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Any:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


def chmsg(channel: str, payload: bytes = b"{}") -> BusMessage:
    return BusMessage(BusKind.CHANNEL, app=APP, channel=channel, payload=payload)


class Node:
    def __init__(self, name: str, broker: Any, state: Any, liveness: Any) -> None:
        self.name = name
        self.broker = broker
        self.state = state
        self.liveness = liveness
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()

    async def recv(self, timeout: float = 3.0) -> BusMessage:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def nothing(self, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert self.inbox.empty(), self.inbox.get_nowait()


class Cluster:
    kind = ""

    async def add(self, name: str) -> Node:
        """A registered node, its broker started."""
        raise NotImplementedError

    async def expire(self) -> None:
        """Let every lease run out (a node that beats afterwards is alive again)."""
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        """Let time pass (for cache and claim ttls)."""
        raise NotImplementedError

    def webhook_stores(self, max_size: int) -> tuple[WebhookStore, WebhookStore]:
        """Two nodes' views of one webhook store."""
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class MemoryCluster(Cluster):
    kind = "memory"

    def __init__(self) -> None:
        self.now = 1000.0
        self.plane = Backplane(lambda: self.now, node_timeout=6.0)
        # calls yield to the loop a random number of times, as over a network, so that
        # concurrent calls interleave
        self.plane.round_trip = random.Random(1)

    async def add(self, name: str) -> Node:
        p = self.plane
        node = Node(name, MemoryBroker(p, name), MemoryState(p, name), MemoryLiveness(p, name))
        await node.liveness.register()
        await node.broker.start(node.inbox.put_nowait)
        return node

    async def expire(self) -> None:
        self.now += self.plane.node_timeout + 1

    async def advance(self, seconds: float) -> None:
        self.now += seconds

    def webhook_stores(self, max_size: int) -> tuple[WebhookStore, WebhookStore]:
        store = MemoryWebhookStore(max_size)
        return store, store


class RedisCluster(Cluster):
    kind = "redis"

    def __init__(self, url: str, state_url: str = "") -> None:
        self.url = url
        self.state_url = state_url or url
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.backends: list[RedisBackend] = []

    def backend(self, name: str) -> RedisBackend:
        backend = RedisBackend(
            parse_redis_url(self.url),
            parse_redis_url(self.state_url),
            self.prefix,
            name,
            REDIS_NODE_TIMEOUT,
        )
        self.backends.append(backend)
        return backend

    async def add(self, name: str) -> Node:
        b = self.backend(name)
        node = Node(name, b.broker, b.state, b.liveness)
        await node.liveness.register()
        await node.broker.start(node.inbox.put_nowait)
        return node

    async def expire(self) -> None:
        await asyncio.sleep(REDIS_NODE_TIMEOUT + 0.15)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def webhook_stores(self, max_size: int) -> tuple[WebhookStore, WebhookStore]:
        return self.backend("wh1").webhook_store(max_size), self.backend("wh2").webhook_store(
            max_size
        )

    async def aclose(self) -> None:
        for b in self.backends:
            await b.aclose()

    async def raw_publish(self, name: str, data: bytes) -> None:
        """Publish `data` on bus channel `name` as a stranger would."""
        await self.backends[0].bus_client.publish(name, data)

    async def pause_bus(self, topic: str, ms: int, mode: str = "ALL") -> None:
        """The server carrying `topic` answers nobody for `ms` (or until unpaused); with mode
        WRITE, nobody's writes (scripts, publishes), subscribes still."""
        await self.backends[0].bus_client.execute_command("CLIENT", "PAUSE", str(ms), mode)

    async def unpause_bus(self, topic: str) -> None:
        await self.backends[0].bus_client.execute_command("CLIENT", "UNPAUSE")

    async def kill_pubsub(self) -> int:
        """Kill every pub/sub connection of the bus; returns how many."""
        return int(await self.backends[0].bus_client.client_kill_filter(_type="pubsub"))


class ShardedCluster(RedisCluster):
    """Nodes over a Redis Cluster (`redis+cluster://`): sharded pub/sub, hash-tagged keys."""

    kind = "redis-cluster"

    def __init__(self, servers: Any) -> None:
        super().__init__(servers.url())
        self.servers = servers

    def backend(self, name: str) -> Any:
        target = parse_redis_url(self.url)
        backend = RedisClusterBackend(target, self.prefix, name, REDIS_NODE_TIMEOUT)
        self.backends.append(backend)
        return backend

    async def raw_publish(self, name: str, data: bytes) -> None:
        await self.backends[0].bus_client.execute_command("SPUBLISH", name, data)

    def bus_port(self, topic: str) -> int:
        """The primary that carries `topic`'s bus channel."""
        return int(self.servers.owner_of(self.backends[0].keys.bus(topic)))

    async def _on(self, port: int, *args: Any) -> Any:
        client = redis_client(f"redis://127.0.0.1:{port}")
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    async def pause_bus(self, topic: str, ms: int, mode: str = "ALL") -> None:
        await self._on(self.bus_port(topic), "CLIENT", "PAUSE", str(ms), mode)

    async def unpause_bus(self, topic: str) -> None:
        await self._on(self.bus_port(topic), "CLIENT", "UNPAUSE")

    async def kill_pubsub(self) -> int:
        killed = 0
        for port in self.servers.primary_ports():
            killed += int(await self._on(port, "CLIENT", "KILL", "TYPE", "pubsub"))
        return killed


@pytest.fixture(params=["memory", "redis", "redis-split", "redis-cluster"])
async def backend_factory(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    cluster: Cluster
    if request.param == "memory":
        cluster = MemoryCluster()
    elif request.param == "redis-cluster":
        cluster = ShardedCluster(request.getfixturevalue("shared_redis_cluster"))
    else:
        state = ""
        if request.param == "redis-split":  # bus and state on two servers
            state = request.getfixturevalue("redis_state_server").url
        cluster = RedisCluster(request.getfixturevalue("redis_server").url, state)
    try:
        yield cluster
    finally:
        await cluster.aclose()


# Connections --------------------------------------------------------------------------------
@bounded()
async def test_connect_quota_is_atomic(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    nodes = (a, b)
    admitted = await asyncio.gather(*(nodes[i % 2].state.connect(APP, 10) for i in range(30)))
    assert sum(admitted) == 10
    assert await a.state.connection_count(APP) == 10
    assert await b.state.connect(APP, 10) is False
    holder = a if any(admitted[0::2]) else b
    await holder.state.disconnect(APP)
    assert await b.state.connection_count(APP) == 9
    assert await b.state.connect(APP, 10) is True
    assert await a.state.connect(APP, 10) is False
    assert await a.state.connect(APP, 0) is True  # no limit
    assert await b.state.connection_count(APP) == 11
    assert await b.state.connection_count(APP2) == 0


# Channels -----------------------------------------------------------------------------------
@bounded()
async def test_channel_counts_occupied_vacated(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.subscribe(APP, "ch", None, 0) == Joined(1, True, False)
    assert await b.state.subscribe(APP, "ch", None, 0) == Joined(2, False, False)
    assert (await a.state.subscribe(APP, "ch", None, 0)).count == 3
    await b.state.subscribe(APP, "private-x", None, 0)
    await b.state.subscribe(APP2, "ch", None, 0)
    assert await b.state.channel_stats(APP, "ch") == ChannelStats(3, None)
    assert await a.state.channels(APP, "") == {
        "ch": ChannelStats(3, None),
        "private-x": ChannelStats(1, None),
    }
    assert await a.state.channels(APP, "private-") == {"private-x": ChannelStats(1, None)}
    assert await a.state.unsubscribe(APP, "ch", None) == Left(2, False, False)
    assert await a.state.unsubscribe(APP, "ch", None) == Left(1, False, False)
    assert await a.state.unsubscribe(APP, "ch", None) == Left(1, False, False)  # a has none
    assert await b.state.unsubscribe(APP, "ch", None) == Left(0, True, False)
    assert await b.state.unsubscribe(APP, "ch", None) == Left(0, False, False)
    assert await a.state.channel_stats(APP, "ch") is None
    assert await a.state.channels(APP, "") == {"private-x": ChannelStats(1, None)}
    assert await a.state.channel_stats(APP2, "ch") == ChannelStats(1, None)

    nodes = (a, b)
    joins = await asyncio.gather(
        *(nodes[i % 2].state.subscribe(APP, "busy", None, 0) for i in range(20))
    )
    assert sum(j.occupied for j in joins) == 1
    assert sorted(j.count for j in joins) == list(range(1, 21))
    lefts = await asyncio.gather(
        *(nodes[i % 2].state.unsubscribe(APP, "busy", None) for i in range(20))
    )
    assert sum(left.vacated for left in lefts) == 1
    assert sorted(left.count for left in lefts) == list(range(20))


# Presence -----------------------------------------------------------------------------------
@bounded()
async def test_presence_first_and_last_socket_across_nodes(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    ch = "presence-room"
    j1 = await a.state.subscribe(APP, ch, ("u1", {"name": "one"}), 100)
    assert (j1.count, j1.occupied, j1.member_added) == (1, True, True)
    assert j1.version > 0
    assert j1.members == {"u1": {"name": "one"}}
    j2 = await b.state.subscribe(APP, ch, ("u1", {"name": "one"}), 100)  # same user, node b
    assert (j2.count, j2.occupied, j2.member_added) == (2, False, False)
    assert j2.version >= j1.version
    assert j2.members == {"u1": {"name": "one"}}
    j3 = await a.state.subscribe(APP, ch, ("u2", [1, 2]), 100)
    assert j3.member_added and j3.version > j1.version
    assert j3.members == {"u1": {"name": "one"}, "u2": [1, 2]}
    assert await b.state.channel_stats(APP, ch) == ChannelStats(3, 2)
    assert await b.state.channels(APP, "presence-") == {ch: ChannelStats(3, 2)}
    assert await b.state.members(APP, ch) == {"u1": {"name": "one"}, "u2": [1, 2]}

    assert await a.state.unsubscribe(APP, ch, "u1") == Left(2, False, False)  # b still has u1
    l2 = await b.state.unsubscribe(APP, ch, "u1")
    assert (l2.count, l2.vacated, l2.member_removed) == (1, False, True)
    assert l2.version > j3.version
    assert await a.state.members(APP, ch) == {"u2": [1, 2]}
    assert await b.state.unsubscribe(APP, ch, "nobody") == Left(1, False, False)  # b has none

    j4 = await a.state.subscribe(APP, ch, ("u2", [1, 2]), 100)  # u2's second socket on a
    assert not j4.member_added
    l3 = await a.state.unsubscribe(APP, ch, "u2")
    assert (l3.count, l3.member_removed) == (1, False)
    l4 = await a.state.unsubscribe(APP, ch, "u2")
    assert (l4.count, l4.vacated, l4.member_removed) == (0, True, True)
    assert l4.version > l2.version
    assert await a.state.members(APP, ch) == {}
    assert await a.state.channel_stats(APP, ch) is None


@bounded()
async def test_presence_limit_refusal_changes_nothing(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    ch = "presence-small"
    await a.state.subscribe(APP, ch, ("u1", 1), 2)
    await b.state.subscribe(APP, ch, ("u2", 2), 2)
    with pytest.raises(PresenceLimit, match=r"presence-small is full \(2 members\)"):
        await a.state.subscribe(APP, ch, ("u3", 3), 2)
    assert await b.state.members(APP, ch) == {"u1": 1, "u2": 2}
    assert await b.state.channel_stats(APP, ch) == ChannelStats(2, 2)
    joined = await b.state.subscribe(APP, ch, ("u1", 1), 2)  # a member's next socket is fine
    assert (joined.count, joined.member_added) == (3, False)
    assert (await b.state.unsubscribe(APP, ch, "u2")).member_removed
    assert (await a.state.subscribe(APP, ch, ("u3", 3), 2)).member_added


@bounded()
async def test_presence_concurrent_joins_decide_once(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    nodes, ch = (a, b), "presence-crowd"
    joins = await asyncio.gather(
        *(nodes[i % 2].state.subscribe(APP, ch, (f"u{i}", {"i": i}), 100) for i in range(50))
    )
    assert all(j.member_added for j in joins)
    assert all(j.members is not None and f"u{i}" in j.members for i, j in enumerate(joins))
    assert len({j.version for j in joins}) == 50
    by_version = sorted(joins, key=lambda j: j.version)
    # versions order the decisions: each one saw exactly the members decided before it
    assert [len(j.members or {}) for j in by_version] == list(range(1, 51))
    assert sum(j.occupied for j in joins) == 1
    members = await a.state.members(APP, ch)
    assert members == {f"u{i}": {"i": i} for i in range(50)}

    lefts = await asyncio.gather(
        *(nodes[i % 2].state.unsubscribe(APP, ch, f"u{i}") for i in range(50))
    )
    assert all(left.member_removed for left in lefts)
    assert len({left.version for left in lefts}) == 50
    assert min(left.version for left in lefts) > by_version[-1].version
    assert sum(left.vacated for left in lefts) == 1
    assert await b.state.members(APP, ch) == {}


# Users --------------------------------------------------------------------------------------
@bounded()
async def test_sign_in_sign_out_first_and_last(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.sign_in(APP, "u1") is True
    assert await b.state.sign_in(APP, "u1") is False
    assert await a.state.sign_in(APP, "u1") is False
    assert await b.state.online_users(APP, ("u1", "u2")) == ["u1"]
    assert await b.state.online_users(APP2, ("u1",)) == []
    assert await a.state.sign_out(APP, "u1") is False
    assert await a.state.sign_out(APP, "u1") is False
    assert await a.state.sign_out(APP, "u1") is False  # a has no socket of u1 left
    assert await b.state.sign_out(APP, "u1") is True
    assert await b.state.sign_out(APP, "u1") is False
    assert await a.state.online_users(APP, ("u1", "u2")) == []

    nodes = (a, b)
    ins = await asyncio.gather(*(nodes[i % 2].state.sign_in(APP, "busy") for i in range(20)))
    assert sum(ins) == 1
    outs = await asyncio.gather(*(nodes[i % 2].state.sign_out(APP, "busy") for i in range(20)))
    assert sum(outs) == 1


# Cache and claims ---------------------------------------------------------------------------
@bounded()
async def test_cache_and_claim_once(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    assert await a.state.cache_get(APP, "cache-x") is None
    await a.state.cache_set(APP, "cache-x", b"\x00payload\n", 5.0)
    got = await b.state.cache_get(APP, "cache-x")
    assert got is not None
    assert got[0] == b"\x00payload\n"
    assert 4.0 < got[1] <= 5.0
    assert await b.state.cache_get(APP2, "cache-x") is None
    await a.state.cache_set(APP, "cache-y", b"short", 0.3)
    await backend_factory.advance(0.5)
    assert await b.state.cache_get(APP, "cache-y") is None

    nodes = (a, b)
    claims = await asyncio.gather(*(nodes[i % 2].state.claim_once("k", 0.4) for i in range(10)))
    assert sum(claims) == 1
    assert await a.state.claim_once("other", 0.4) is True
    await backend_factory.advance(0.6)
    assert await b.state.claim_once("k", 5.0) is True
    assert await a.state.claim_once("k", 5.0) is False


# Reaping and resync -------------------------------------------------------------------------
@bounded()
async def test_reap_dead_node_once_then_resync(backend_factory: Cluster) -> None:
    cluster = backend_factory
    a, b, c = await cluster.add("a"), await cluster.add("b"), await cluster.add("c")
    p = "presence-r"
    await a.state.connect(APP, 0)
    await a.state.subscribe(APP, "only-a", None, 0)
    await a.state.subscribe(APP, "shared", None, 0)
    await b.state.subscribe(APP, "shared", None, 0)
    await a.state.subscribe(APP, p, ("ghost", {"g": 1}), 100)
    await a.state.subscribe(APP, p, ("both", {"b": 1}), 100)
    last_join = await b.state.subscribe(APP, p, ("both", {"b": 1}), 100)
    await a.state.sign_in(APP, "ua")
    await a.state.sign_in(APP, "ub")
    await b.state.sign_in(APP, "ub")
    await a.state.subscribe(APP2, "x", None, 0)

    await cluster.expire()  # a stops beating; b and c beat again
    await c.liveness.beat()
    await b.liveness.beat()
    hb = await b.liveness.beat()
    assert hb.registered and hb.dead == ("a",)
    assert hb.alive == frozenset({"b", "c"})

    first, second = await asyncio.gather(b.state.reap("a"), c.state.reap("a"))
    assert bool(first) != bool(second)  # exactly one reaper
    changes = first or second
    assert sorted(changes.vacated) == [(APP, "only-a"), (APP2, "x")]
    assert [r[:3] for r in changes.removed] == [(APP, p, "ghost")]
    assert changes.removed[0][3] > last_join.version
    assert changes.offline == [(APP, "ua")]
    assert not (changes.occupied or changes.added or changes.online)
    assert not await b.state.reap("a")  # once only
    assert not await c.state.reap("nobody")

    assert await b.state.connection_count(APP) == 0
    assert await b.state.channel_stats(APP, "shared") == ChannelStats(1, None)
    assert await b.state.channel_stats(APP, "only-a") is None
    assert await c.state.members(APP, p) == {"both": {"b": 1}}
    assert await c.state.channel_stats(APP, p) == ChannelStats(1, 1)
    assert await c.state.online_users(APP, ("ua", "ub")) == ["ub"]
    assert (await b.liveness.beat()).dead == ()

    # the reaped node: not registered, every state op and publish refused
    assert not (await a.liveness.beat()).registered
    refused: list[Callable[[], Awaitable[Any]]] = [
        lambda: a.state.connect(APP, 0),
        lambda: a.state.disconnect(APP),
        lambda: a.state.subscribe(APP, "z", None, 0),
        lambda: a.state.unsubscribe(APP, "z", None),
        lambda: a.state.sign_in(APP, "q"),
        lambda: a.state.members(APP, p),
        lambda: a.state.channels(APP, ""),
        lambda: a.state.connection_count(APP),
        lambda: a.state.online_users(APP, ("q",)),
        lambda: a.state.cache_set(APP, "c", b"", 1.0),
        lambda: a.state.cache_get(APP, "c"),
        lambda: a.state.claim_once("q", 1.0),
        lambda: a.broker.publish(app_topic(APP), chmsg("z")),
    ]
    for op in refused:
        with pytest.raises(Unavailable, match="not registered"):
            await op()

    snapshot = {
        APP: AppSnapshot(
            connections=1,
            channels={"only-a": 1, "shared": 1, p: 2},
            members={p: {"ghost": ({"g": 1}, 1), "both": ({"b": 1}, 1)}},
            users={"ua": 1, "ub": 1},
        ),
        APP2: AppSnapshot(channels={"x": 1}),
    }
    back = await a.state.resync(snapshot)
    assert sorted(back.occupied) == [(APP, "only-a"), (APP2, "x")]
    assert [x[:4] for x in back.added] == [(APP, p, "ghost", {"g": 1})]
    assert back.added[0][4] > changes.removed[0][3]
    assert back.online == [(APP, "ua")]
    assert not (back.vacated or back.removed or back.offline)
    await a.liveness.register()
    assert (await a.liveness.beat()).registered
    assert await a.state.connection_count(APP) == 1
    assert await b.state.channel_stats(APP, p) == ChannelStats(3, 2)
    assert await b.state.channel_stats(APP, "shared") == ChannelStats(2, None)
    assert await b.state.online_users(APP, ("ua", "ub")) == ["ua", "ub"]


@bounded()
async def test_reap_spares_renewed_lease_and_reap_self_is_clean_stop(
    backend_factory: Cluster,
) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    await a.state.subscribe(APP, "mine", None, 0)
    await a.state.subscribe(APP, "presence-m", ("u", None), 10)
    await a.state.sign_in(APP, "u")
    await a.state.connect(APP, 0)
    await backend_factory.expire()
    await a.liveness.beat()  # a is late, but beats before anybody reaps it
    await b.liveness.beat()
    assert not await b.state.reap("a")
    assert (await a.liveness.beat()).registered
    assert await b.state.channel_stats(APP, "mine") == ChannelStats(1, None)

    stop = await a.state.reap("a")  # a clean stop
    assert sorted(stop.vacated) == [(APP, "mine"), (APP, "presence-m")]
    assert [r[:3] for r in stop.removed] == [(APP, "presence-m", "u")]
    assert stop.offline == [(APP, "u")]
    assert not (await a.liveness.beat()).registered
    assert "a" not in (await b.liveness.beat()).alive
    with pytest.raises(Unavailable):
        await a.state.connect(APP, 0)
    assert await b.state.channel_stats(APP, "mine") is None
    assert await b.state.connection_count(APP) == 0
    assert not await a.state.reap("a")


@bounded()
async def test_resync_is_idempotent_and_clears_missing_apps(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    p = "presence-p"
    snap = {
        APP: AppSnapshot(
            connections=2,
            channels={"c1": 2, p: 1},
            members={p: {"u1": ({"x": 1}, 1)}},
            users={"u1": 1},
        ),
        APP2: AppSnapshot(channels={"c2": 1}),
    }
    first = await a.state.resync(snap)
    assert sorted(first.occupied) == [(APP, "c1"), (APP, p), (APP2, "c2")]
    assert [x[:4] for x in first.added] == [(APP, p, "u1", {"x": 1})]
    assert first.online == [(APP, "u1")]
    assert not (first.vacated or first.removed or first.offline)
    assert await a.state.resync(snap) == Changes()  # twice: nothing changes
    assert not await a.state.resync(snap)
    assert await b.state.connection_count(APP) == 2
    assert await b.state.channel_stats(APP, "c1") == ChannelStats(2, None)
    assert await b.state.members(APP, p) == {"u1": {"x": 1}}

    await b.state.subscribe(APP, p, ("u1", {"x": 1}), 100)
    await b.state.sign_in(APP, "u1")
    changed = await a.state.resync({APP2: AppSnapshot(channels={"c2": 1})})  # APP is gone
    assert changed.vacated == [(APP, "c1")]  # p keeps b's subscriber, u1 b's sockets
    assert not (changed.occupied or changed.added or changed.removed or changed.offline)
    assert await b.state.connection_count(APP) == 0
    assert await b.state.channel_stats(APP, p) == ChannelStats(1, 1)
    assert await b.state.online_users(APP, ("u1",)) == ["u1"]

    counts = await a.state.resync({APP2: AppSnapshot(channels={"c2": 3})})  # a count moves
    assert counts == Changes()
    assert await b.state.channel_stats(APP2, "c2") == ChannelStats(3, None)
    assert await a.state.resync({}) == Changes(vacated=[(APP2, "c2")])
    assert await a.state.resync({}) == Changes()
    no_sockets = {APP: AppSnapshot(members={"presence-z": {"u": (None, 0)}})}
    assert await a.state.resync(no_sockets) == Changes()  # a member without sockets is not held
    assert await b.state.members(APP, "presence-z") == {}

    await a.liveness.deregister()  # resync works when not registered
    alone = await a.state.resync({APP: AppSnapshot(channels={"c9": 1})})
    assert alone == Changes(occupied=[(APP, "c9")])
    with pytest.raises(Unavailable):
        await a.state.channel_stats(APP, "c9")
    assert await b.state.channel_stats(APP, "c9") == ChannelStats(1, None)


# Broker -------------------------------------------------------------------------------------
@bounded()
async def test_broker_delivers_with_origin_without_echo(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "news")
    await a.broker.subscribe(topic)
    await b.broker.subscribe(topic)
    assert a.broker.healthy and b.broker.healthy
    msg = BusMessage(
        BusKind.MEMBER,
        app=APP,
        channel="news",
        user="u:1",
        except_socket="1.2",
        version=1_790_000_000_000_001,
        payload=b'{"event":"x"}\n\x00',
    )
    await b.broker.publish(topic, msg)
    got = await a.recv()
    assert dataclasses.replace(got, ident="") == dataclasses.replace(msg, origin="b")
    await a.broker.publish(topic, chmsg("news", b"marker"))  # no echo: b's next is a's marker
    assert (await b.recv()).payload == b"marker"
    for topic2 in (NODES_TOPIC, user_topic(APP, "u:2"), app_topic(APP)):
        await a.broker.subscribe(topic2)
        await b.broker.publish(topic2, BusMessage(BusKind.INTERNAL, tag="k", payload=b"{}"))
        got = await a.recv()
        assert (got.kind, got.tag, got.origin) == (BusKind.INTERNAL, "k", "b")
    await a.broker.publish(app_topic(APP2), chmsg("nobody"))  # nobody listens: no error


@bounded()
async def test_broker_keeps_per_topic_order(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "ordered")
    await a.broker.subscribe(topic)
    for i in range(200):
        await b.broker.publish(topic, chmsg("ordered", str(i).encode()))
    assert [(await a.recv()).payload for _ in range(200)] == [str(i).encode() for i in range(200)]
    # overlapping publishes of one node keep their call order too
    await asyncio.gather(*(b.broker.publish(topic, chmsg("o", b"%d" % i)) for i in range(200)))
    assert [(await a.recv()).payload for _ in range(200)] == [b"%d" % i for i in range(200)]


@bounded()
async def test_history_publish_echoes_with_positions_in_store_order(
    backend_factory: Cluster,
) -> None:
    """History publishes of two nodes interleave; every subscribed node, the publisher too,
    gets all of them with consecutive offsets of one epoch, in offset order."""
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    policy = HistoryPolicy(size=1000, ttl=60)
    topic = channel_topic(APP, "hist")
    await a.broker.subscribe(topic)
    await b.broker.publish(topic, chmsg("hist", b"{}"))  # no history: no position, no echo
    assert (await a.recv()).position is None
    sends = [(a if i % 2 else b).broker.publish(topic, chmsg("hist", b"%d" % i), policy)
             for i in range(100)]
    positions = await asyncio.gather(*sends)
    assert sorted(p.offset for p in positions) == list(range(1, 101))  # type: ignore[union-attr]
    assert len({p.epoch for p in positions}) == 1  # type: ignore[union-attr]
    got = [await a.recv() for _ in range(100)]
    assert [m.position.offset for m in got] == list(range(1, 101))  # type: ignore[union-attr]
    by_offset = {p.offset: i for i, p in enumerate(positions)}  # type: ignore[union-attr]
    assert [m.payload for m in got] == [b"%d" % by_offset[o] for o in range(1, 101)]
    assert {m.origin for m in got} == {"a", "b"}
    await b.nothing(0.2)  # b is not subscribed: it gets nothing, not even its own


@bounded()
async def test_history_read(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    policy = HistoryPolicy(size=5, ttl=60)
    topic = channel_topic(APP, "h2")
    empty = await b.broker.history(topic, None, 10, policy)
    assert empty.top.offset == 0 and empty.events == [] and empty.complete
    for i in range(8):
        pos = await a.broker.publish(topic, chmsg("h2", b"p%d" % i), policy)
    assert pos is not None and pos.epoch == empty.top.epoch  # the epoch a reader was told
    last = await b.broker.history(topic, None, 3, policy)
    assert [(e.offset, e.payload) for e in last.events] == [(6, b"p5"), (7, b"p6"), (8, b"p7")]
    assert last.top == pos
    since = await b.broker.history(topic, 5, 2, policy)
    assert [e.offset for e in since.events] == [6, 7] and since.complete
    assert (await b.broker.history(topic, 3, 10, policy)).complete  # 4..8 kept (size 5)
    trimmed = await b.broker.history(topic, 2, 10, policy)
    assert not trimmed.complete and [e.offset for e in trimmed.events] == [4, 5, 6, 7, 8]
    assert (await b.broker.history(topic, 8, 10, policy)).complete  # nothing missed
    assert not (await b.broker.history(topic, 9, 10, policy)).complete  # from the future
    assert all(abs(e.time - last.events[0].time) < 60 for e in last.events)


@bounded()
async def test_history_read_stops_at_max_bytes(backend_factory: Cluster) -> None:
    a = await backend_factory.add("a")
    policy = HistoryPolicy(size=100, ttl=60)
    topic = channel_topic(APP, "h4")
    for i in range(10):
        await a.broker.publish(topic, chmsg("h4", b"%03d" % i), policy)  # 3 bytes each
    page = await a.broker.history(topic, 0, 100, policy, max_bytes=10)
    assert [e.payload for e in page.events] == [b"000", b"001", b"002"] and not page.complete
    full = await a.broker.history(topic, 0, 100, policy, max_bytes=30)
    assert len(full.events) == 10 and full.complete
    latest = await a.broker.history(topic, None, 100, policy, max_bytes=10)
    assert [e.payload for e in latest.events] == [b"007", b"008", b"009"]


@bounded()
async def test_history_expires(backend_factory: Cluster) -> None:
    a = await backend_factory.add("a")
    policy = HistoryPolicy(size=5, ttl=0.3, meta_ttl=30)
    topic = channel_topic(APP, "h3")
    first = await a.broker.publish(topic, chmsg("h3", b"x"), policy)
    await backend_factory.advance(0.5)
    page = await a.broker.history(topic, 0, 10, policy)
    assert page.events == [] and not page.complete and page.top == first
    assert (await a.broker.history(topic, 1, 10, policy)).complete
    second = await a.broker.publish(topic, chmsg("h3", b"y"), policy)
    assert second is not None and first is not None
    assert (second.epoch, second.offset) == (first.epoch, 2)
    short = HistoryPolicy(size=5, ttl=0.2, meta_ttl=0.2)
    await a.broker.publish(topic, chmsg("h3", b"z"), short)
    await backend_factory.advance(0.5)
    fresh = await a.broker.history(topic, None, 10, short)
    assert fresh.top.epoch != first.epoch and fresh.top.offset == 0


@bounded()
async def test_broker_unsubscribe_stops_delivery(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "leaving")
    await a.broker.subscribe(topic)
    await a.broker.subscribe(topic)  # twice is once
    await b.broker.publish(topic, chmsg("leaving", b"1"))
    assert (await a.recv()).payload == b"1"
    await a.broker.unsubscribe(topic)
    await b.broker.publish(topic, chmsg("leaving", b"2"))  # not delivered: "3" comes next
    await a.broker.subscribe(topic)
    await b.broker.publish(topic, chmsg("leaving", b"3"))
    assert (await a.recv()).payload == b"3"


@bounded()
async def test_publish_refused_when_not_registered(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    await b.broker.subscribe(app_topic(APP))
    await a.liveness.deregister()
    with pytest.raises(Unavailable, match="not registered"):
        await a.broker.publish(app_topic(APP), chmsg("x"))
    assert not (await a.liveness.beat()).registered  # beat never registers
    await a.liveness.register()
    await a.broker.publish(app_topic(APP), chmsg("x", b"after"))  # the refused one never comes
    got = await b.recv()
    assert (got.origin, got.payload) == ("a", b"after")


# Webhook store ------------------------------------------------------------------------------
@bounded()
async def test_webhook_store(backend_factory: Cluster) -> None:
    s1, s2 = backend_factory.webhook_stores(3)
    assert await s1.add("j1", b"one", 10.0)
    assert await s2.add("j2", b"two", 20.0)
    assert await s1.add("j3", b"three", 30.0)
    assert not await s2.add("j4", b"four", 5.0)  # full
    assert await s2.add("j1", b"one-later", 40.0)  # replacing a job is not adding one
    assert await s1.size() == 3
    assert await s2.cancel("j2")
    assert not await s1.cancel("j2")
    assert await s1.size() == 2
    assert await s1.take_due(25.0, 10) == []
    assert await s2.take_due(35.0, 10) == [b"three"]
    assert await s1.take_due(50.0, 10) == [b"one-later"]
    assert await s2.size() == 0

    t1, t2 = backend_factory.webhook_stores(1000)
    jobs = {f"job-{i:03d}": b"%d" % i for i in range(100)}
    for i, (job_id, job) in enumerate(jobs.items()):
        assert await (t1, t2)[i % 2].add(job_id, job, float(i % 10))
    assert await t1.take_due(0.5, 3) == [b"0", b"10", b"20"]  # due time, then id order
    taken: list[bytes] = [b"0", b"10", b"20"]

    async def taker(store: WebhookStore) -> None:
        while batch := await store.take_due(100.0, 7):
            taken.extend(batch)
            await asyncio.sleep(0)

    await asyncio.gather(taker(t1), taker(t2))
    assert len(taken) == 100
    assert sorted(taken) == sorted(jobs.values())
    assert await t2.size() == 0


# Redis only ---------------------------------------------------------------------------------
def redis_only(cluster: Cluster, single: bool = False) -> None:
    if cluster.kind != "redis" and (single or cluster.kind != "redis-cluster"):
        pytest.skip("Redis backend only" + (", one server" if single else ""))


@bounded()
async def test_publish_fails_when_a_listed_node_is_not_subscribed(
    backend_factory: Cluster,
) -> None:
    """A node listed for a channel (or user) whose bus subscription is gone (its connection
    dropped, say) did not get the publish: refused, also when the count was reused."""
    redis_only(backend_factory)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "gap")
    await a.state.subscribe(APP, "gap", None, 0)
    await a.broker.subscribe(topic)
    await a.broker.publish(topic, chmsg("gap", b"0"))  # a itself does not count
    await b.broker.publish(topic, chmsg("gap", b"1"))
    assert (await a.recv()).payload == b"1"

    user = "user:with:colons"
    utopic = user_topic(APP, user)
    await b.broker.subscribe(topic)  # b joins as the engine does: the bus first
    await b.state.subscribe(APP, "gap", None, 0)
    await b.broker.subscribe(utopic)
    await b.state.sign_in(APP, user)
    for t, payload in ((topic, b"2"), (utopic, b"3")):
        await a.broker.publish(t, chmsg("gap", payload))  # b counted (the count remembered)
        assert (await b.recv()).payload == payload
        await b.broker.unsubscribe(t)  # b still listed, its bus subscription gone
        await asyncio.sleep(0.05)  # (the UNSUBSCRIBE went over b's own connection)
        with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
            await a.broker.publish(t, chmsg("gap", b"lost"))
        await b.broker.subscribe(t)
        await a.broker.publish(t, chmsg("gap", payload + b"+"))
        assert (await b.recv()).payload == payload + b"+"


@bounded()
async def test_a_node_listed_after_a_count_is_counted(backend_factory: Cluster) -> None:
    """c subscribes on the bus, loses that subscription, and is listed: a publish must not
    answer on a count taken before c was listed (bus and state apart: the join mark)."""
    redis_only(backend_factory)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "late")
    await a.broker.subscribe(topic)
    await a.state.subscribe(APP, "late", None, 0)
    for i in range(3):  # counted, and the count reused
        await b.broker.publish(topic, chmsg("late", b"%d" % i))
        assert (await a.recv()).payload == b"%d" % i
    c = await backend_factory.add("c")
    await c.broker.subscribe(topic)
    await c.broker.unsubscribe(topic)
    await asyncio.sleep(0.05)
    await c.state.subscribe(APP, "late", None, 0)
    with pytest.raises(Unavailable, match="published to 1 of 2 nodes"):
        await b.broker.publish(topic, chmsg("late", b"missed by c"))
    assert (await a.recv()).payload == b"missed by c"  # (sent: a got it)


@bounded()
async def test_a_node_that_left_costs_no_refusal(backend_factory: Cluster) -> None:
    """b leaves a channel (bus, then state) right after a publish counted it: the next
    publish is answered (counted afresh), not refused."""
    redis_only(backend_factory)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "left")
    for n in (a, b):
        await n.broker.subscribe(topic)
        await n.state.subscribe(APP, "left", None, 0)
    for _ in range(20):
        await a.broker.publish(topic, chmsg("left", b"both"))
        assert (await b.recv()).payload == b"both"
        await b.broker.unsubscribe(topic)
        await b.state.unsubscribe(APP, "left", None)
        await a.broker.publish(topic, chmsg("left", b"a alone"))  # not refused
        await b.broker.subscribe(topic)
        await b.state.subscribe(APP, "left", None, 0)


@bounded()
async def test_publish_refused_while_a_listed_node_has_no_lease(backend_factory: Cluster) -> None:
    """A node cut off (or paused) past its lease cannot vouch for its subscribers, although
    the bus may still count its subscription: publishes that need it are refused until it
    beats again or is reaped."""
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "lease")
    for n in (a, b):
        await n.state.subscribe(APP, "lease", None, 0)
        await n.broker.subscribe(topic)
    await a.broker.publish(topic, chmsg("lease", b"1"))
    assert (await b.recv()).payload == b"1"
    await backend_factory.expire()
    assert (await a.liveness.beat()).registered  # a renews; b is silent
    with pytest.raises(Unavailable, match="node b lost its lease"):
        await a.broker.publish(topic, chmsg("lease", b"2"))
    await a.state.reap("b")  # b's records go: nothing to count on any more
    await a.broker.publish(topic, chmsg("lease", b"3"))
    await a.nothing(0.05)


@bounded(20)
async def test_bus_and_state_apart_keep_to_their_roles(
    redis_server: Any, redis_state_server: Any
) -> None:
    """With bus and state on two servers, the state server never carries pub/sub and the bus
    server holds nothing but history."""
    cluster = RedisCluster(redis_server.url, redis_state_server.url)
    try:
        a, b = await cluster.add("a"), await cluster.add("b")
        topic = channel_topic(APP, "roles")
        for n in (a, b):
            await n.state.connect(APP, 0)
            await n.state.subscribe(APP, "roles", ("u-" + n.name, {}), 10)
            await n.state.sign_in(APP, "u-" + n.name)
            await n.broker.subscribe(topic)
        policy = HistoryPolicy(10, 60)
        await a.broker.publish(topic, chmsg("roles", b"1"), history=policy)
        assert (await b.recv()).payload == b"1"
        await a.broker.publish(topic, chmsg("roles", b"2"))
        assert (await b.recv()).payload == b"2"
        await a.state.cache_set(APP, "cache-roles", b"x", 10)
        await a.state.hit("r", 1, 5)
        await a.liveness.beat()
    finally:
        await cluster.aclose()
    state = redis_client(redis_state_server.url)
    bus = redis_client(redis_server.url)
    try:
        stats = await state.info("commandstats")
        pubsub = [k for k in stats if "publish" in k or "subscribe" in k or "pubsub" in k]
        assert pubsub == []
        assert "cmdstat_evalsha" in stats  # (the state did work)
        bus_keys = [k.decode() async for k in bus.scan_iter(f"{cluster.prefix}:*")]
        # history, and what publishes need: join marks (bus:T:joined), held pipelines
        publish = ("hist", "histm", "hid", "bus", "held")
        assert bus_keys and all(k.split(":")[1] in publish for k in bus_keys)
        state_keys = [k.decode() async for k in state.scan_iter(f"{cluster.prefix}:*")]
        assert not [k for k in state_keys if k.split(":")[1] in ("hist", "histm", "hid")]
    finally:
        await state.aclose()
        await bus.aclose()


@bounded()
async def test_apart_a_steady_stream_costs_the_state_no_round_trip(
    redis_server: Any, redis_state_server: Any
) -> None:
    """Bus and state apart: the receivers counted for a channel are reused (within their
    leases), so 100 publishes to one channel ask the state a few times, not 100."""
    cluster = RedisCluster(redis_server.url, redis_state_server.url)
    state = redis_client(redis_state_server.url)
    try:
        a, b = await cluster.add("a"), await cluster.add("b")
        topic = channel_topic(APP, "steady")
        await b.broker.subscribe(topic)
        await b.state.subscribe(APP, "steady", None, 0)

        async def asked() -> int:
            stats = await state.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

        before = await asked()
        for i in range(100):
            await a.broker.publish(topic, chmsg("steady", b"%d" % i))
        assert [(await b.recv()).payload for _ in range(100)] == [b"%d" % i for i in range(100)]
        assert await asked() - before <= 10
    finally:
        await state.aclose()
        await cluster.aclose()


@bounded(20)
async def test_a_publish_whose_answer_was_lost_is_delivered_once(
    redis_server: Any, blackhole: Callable[[int], BlackholeProxy]
) -> None:
    """a's publish runs, but its connection breaks before the answer: redis-py sends it again
    on a fresh connection. b gets it once (its inbox drops the second by the publish id)."""
    proxy = blackhole(redis_server.port)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    via_proxy, direct = parse_redis_url(proxy.url), parse_redis_url(redis_server.url)
    backends = [
        RedisBackend(via_proxy, via_proxy, prefix, "a", REDIS_NODE_TIMEOUT),
        RedisBackend(direct, direct, prefix, "b", REDIS_NODE_TIMEOUT),
    ]
    try:
        a, b = (Node(x.node, x.broker, x.state, x.liveness) for x in backends)
        for n in (a, b):
            await n.liveness.register()
            await n.broker.start(n.inbox.put_nowait)
        topic = channel_topic(APP, "once")
        await b.broker.subscribe(topic)
        await b.state.subscribe(APP, "once", None, 0)
        await a.broker.publish(topic, chmsg("once", b"0"))
        proxy.lose_reply(b"EVALSHA")
        await a.broker.publish(topic, chmsg("once", b"1"))  # ran twice, answered once
        await a.broker.publish(topic, chmsg("once", b"2"))
        assert [(await b.recv()).payload for _ in range(3)] == [b"0", b"1", b"2"]
        await b.nothing(0.1)
        assert backends[1].broker.duplicates == 1
    finally:
        for x in backends:
            await x.aclose()


@bounded()
async def test_webhook_jobs_survive_a_primary_that_lost_them(backend_factory: Cluster) -> None:
    """A new primary may lack the last jobs added (and have cancelled ones back): the node
    that added them does it again there, once; a job taken already is not queued again."""
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    store, other = backend_factory.webhook_stores(100)
    now = 1000.0
    assert await store.add("kept", b"1", now)
    assert await store.add("lost", b"2", now)
    assert await store.add("cancelled", b"3", now)
    assert await store.cancel("cancelled")
    assert await store.add("taken", b"4", now + 5)
    assert await other.take_due(now + 5, 10) == [b"1", b"2", b"4"]
    assert await store.add("later", b"5", now)
    # what the failover left: the promoted replica missed "later" and still had "cancelled"
    client = backend_factory.backends[0].client
    keys = backend_factory.backends[0].keys
    await client.hdel(keys.wh_jobs(), "later")
    await client.zrem(keys.wh_due(), "later")
    await client.hset(keys.wh_jobs(), "cancelled", b"3")
    await client.zadd(keys.wh_due(), {"cancelled": now})
    assert sorted(await other.take_due(now, 10)) == [b"3"]  # (the other node cannot know)
    await client.hset(keys.wh_jobs(), "cancelled", b"3")
    await client.zadd(keys.wh_due(), {"cancelled": now})
    store.scripts.watch.changes += 1  # as PrimaryWatch.seen does on a new primary
    assert await store.take_due(now, 10) == [b"5"]  # back, once; "cancelled" cancelled again
    assert await store.take_due(now + 10, 10) == []
    assert store.replayed == 1


@bounded()
async def test_bus_drops_malformed_and_foreign_messages(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a = await backend_factory.add("a")
    topic = channel_topic(APP, "junk")
    await a.broker.subscribe(topic)
    name = backend_factory.backends[0].keys.bus(topic)
    other_version = b'{"v":1,"n":"x","k":"pub"}\n{}'
    for junk in (b"", b"no header", b"[1]\n", b'{"v":2,"k":"bogus"}\n', other_version):
        await backend_factory.raw_publish(name, junk)
    await backend_factory.raw_publish(name, encode(chmsg("junk", b"fine"), "x"))
    got = await a.recv()
    assert (got.payload, got.origin) == (b"fine", "x")
    await a.nothing(0.1)
    assert a.broker.healthy


@bounded()
async def test_subscribe_waits_for_the_confirmation(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "paused")
    a.broker.confirm_timeout = 0.3
    await backend_factory.pause_bus(topic, 800)  # Redis answers nobody
    try:
        with pytest.raises(Unavailable, match="not confirmed"):
            await a.broker.subscribe(topic)
    finally:
        await backend_factory.unpause_bus(topic)
    a.broker.confirm_timeout = 3.0
    await a.broker.resubscribed()  # the topic stayed wanted
    await b.broker.publish(topic, chmsg("paused", b"1"))
    assert (await a.recv()).payload == b"1"


@bounded(20)
async def test_own_subscription_made_while_a_publish_waits_counts_as_own(
    backend_factory: Cluster,
) -> None:
    """a's bus connection is lost; a publish of a waits (the bus holds writes) while a
    subscribes again: when it runs, Redis counts a's new subscription, which must not pass
    for b's (b is listed, not subscribed): refused."""
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "wait")
    await a.broker.subscribe(topic)
    await a.state.subscribe(APP, "wait", None, 0)
    await b.state.subscribe(APP, "wait", None, 0)  # b listed, its bus subscription gone
    with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
        await a.broker.publish(topic, chmsg("wait", b"0"))
    await backend_factory.pause_bus(topic, 1500, "WRITE")
    try:
        assert await backend_factory.kill_pubsub() >= 1
        async with asyncio.timeout(2):
            while a.broker.healthy:
                await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(a.broker.publish(topic, chmsg("wait", b"1")))
        async with asyncio.timeout(3):
            while not a.broker.healthy:  # subscribed again (a subscribe is no write)
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    finally:
        await backend_factory.unpause_bus(topic)
    with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
        await waiting


@bounded()
async def test_bus_reconnects_and_subscribes_again(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "kill")
    await a.state.subscribe(APP, "kill", None, 0)
    await a.broker.subscribe(topic)
    await a.broker.subscribe(NODES_TOPIC)
    assert await backend_factory.kill_pubsub() >= 1  # a is the only subscriber
    async with asyncio.timeout(2):
        while a.broker.healthy:
            await asyncio.sleep(0.01)
    await a.broker.resubscribed()
    assert a.broker.healthy
    await b.broker.publish(topic, chmsg("kill", b"1"))  # receiver check: a is subscribed again
    await b.broker.publish(NODES_TOPIC, chmsg("kill", b"2"))
    assert [(await a.recv()).payload for _ in range(2)] == [b"1", b"2"]


@bounded()
async def test_redis_restart(backend_factory: Cluster) -> None:
    redis_only(backend_factory, single=True)
    server = start_redis()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    target = parse_redis_url(server.url)
    backends = [RedisBackend(target, target, prefix, n, 2.0) for n in ("a", "b")]
    a, b = (Node(x.node, x.broker, x.state, x.liveness) for x in backends)
    try:
        for n in (a, b):
            await n.liveness.register()
            await n.broker.start(n.inbox.put_nowait)
        topic = channel_topic(APP, "r")
        await a.state.subscribe(APP, "r", None, 0)
        await a.broker.subscribe(topic)
        await b.broker.publish(topic, chmsg("r", b"before"))
        assert (await a.recv()).payload == b"before"

        server.restart()  # comes back empty: the first publish must not pass silently
        with pytest.raises(Unavailable, match="not registered"):
            await b.broker.publish(topic, chmsg("r", b"lost"))
        # state calls are not retried (a script must not run twice): the first one may fail
        # on its stale connection; either way it fails, and then says why
        with contextlib.suppress(Unavailable):
            await a.state.connect(APP, 0)
            raise AssertionError("a state call succeeded on a Redis that lost this node")
        with pytest.raises(Unavailable, match="not registered"):
            await a.state.connect(APP, 0)
        for x in backends:  # the other stale pooled connections would each fail once too
            await x.client.connection_pool.disconnect()
        assert not (await b.liveness.beat()).registered
        back = await a.state.resync({APP: AppSnapshot(channels={"r": 1})})
        assert back == Changes(occupied=[(APP, "r")])
        assert await b.state.resync({}) == Changes()
        for n in (a, b):
            await n.liveness.register()
            await n.broker.resubscribed()
        assert a.broker.healthy
        await b.broker.publish(topic, chmsg("r", b"after"))
        assert (await a.recv()).payload == b"after"

        server.stop()  # unreachable: every failure is Unavailable
        with pytest.raises(Unavailable):
            await b.state.connect(APP, 0)
        with pytest.raises(Unavailable):
            await b.broker.publish(topic, chmsg("r", b"down"))
        with pytest.raises(Unavailable):
            await b.liveness.beat()
        async with asyncio.timeout(5):
            while a.broker.healthy:
                await asyncio.sleep(0.05)
        a.broker.confirm_timeout = 0.5
        later = channel_topic(APP, "later")
        with pytest.raises(Unavailable):
            await a.broker.subscribe(later)  # stays wanted: subscribed when Redis returns
        a.broker.confirm_timeout = 5.0

        server.restart()
        for x in backends:  # as a node would after its calls failed: fresh connections
            await x.client.connection_pool.disconnect()
        for n in (a, b):
            await n.state.resync({})
            await n.liveness.register()
            await n.broker.resubscribed()
        await b.broker.publish(later, chmsg("later", b"again"))
        assert (await a.recv()).payload == b"again"
        await a.nothing(0.1)
    finally:
        for x in backends:
            await x.aclose()
        server.stop()
