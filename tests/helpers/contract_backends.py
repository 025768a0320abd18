"""The cluster backends the contract tests (tests/cluster/test_contract_*.py) run against,
each as a `Cluster` of nodes that share one backplane:

- `MemoryCluster`: memory nodes on one `Backplane`, with a fake clock; every call yields to
  the loop a random number of times (as over a network), so that concurrent calls interleave.
- `RedisCluster`: `RedisBackend`s with their own node ids and one key prefix, over one real
  redis-server, or with bus and state on two (`state_url`).
- `ShardedCluster`: `RedisClusterBackend`s over a Redis Cluster (sharded pub/sub).

`Cluster.add(name)` gives a registered `Node` (its broker started, what it delivers in
`Node.inbox`), `expire()` lets every lease run out, `advance(seconds)` lets time pass,
`webhook_stores(max_size)` gives two nodes' views of one webhook store, `start_afresh()` closes
every node and makes it a new cluster (a race test's next try: a new key prefix, or plane).
The Redis ones can also publish raw bytes on the bus, pause the server carrying a topic, and
kill the bus connections.
The fixture `backend_factory` (tests/cluster/conftest.py) makes one of each, per test.

Also: `bounded(seconds)` (a test's time limit), `chmsg()` (a channel message of `APP`),
`redis_only()` (skips the memory backend), `redis_client(url)`.
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushwire.cluster.base import BusKind, BusMessage
from pushwire.cluster.memory import Backplane, MemoryBroker, MemoryLiveness, MemoryState
from pushwire.cluster.redis import RedisBackend
from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.cluster.rediscluster import RedisClusterBackend
from pushwire.webhooks import MemoryWebhookStore, WebhookStore

APP = "app-1"
APP2 = "app-2"
REDIS_NODE_TIMEOUT = 0.5
RACE_TRIES = 20  # how many times a race test runs its race over Redis (`Cluster.race_tries`)


def redis_client(url: str) -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(url)


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
    race_tries = RACE_TRIES  # a race test's tries on this backend

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

    async def start_afresh(self) -> None:
        """Close every node and begin again as a new cluster of the same backend, for the next
        try of a race test: the same node and channel names name other nodes and channels."""
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class MemoryCluster(Cluster):
    kind = "memory"
    race_tries = 10 * RACE_TRIES  # a try costs milliseconds

    def __init__(self) -> None:
        self.now = 1000.0
        # calls yield to the loop a random number of times, as over a network, so that
        # concurrent calls interleave (one generator for every plane: each try of a race
        # interleaves differently, the same on every run)
        self.interleaving = random.Random(1)
        self.plane = self._new_plane()

    def _new_plane(self) -> Backplane:
        plane = Backplane(lambda: self.now, node_timeout=6.0)
        plane.round_trip = self.interleaving
        return plane

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

    async def start_afresh(self) -> None:
        self.plane = self._new_plane()


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

    async def start_afresh(self) -> None:
        await self.aclose()
        self.backends = []
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"

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


def redis_only(cluster: Cluster, single: bool = False) -> None:
    """Skip the test on the memory backend (`single`: on a Redis Cluster too)."""
    if cluster.kind != "redis" and (single or cluster.kind != "redis-cluster"):
        pytest.skip("Redis backend only" + (", one server" if single else ""))
