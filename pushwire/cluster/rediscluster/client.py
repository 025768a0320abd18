"""The Redis Cluster client (redis-py's asyncio `RedisCluster`) and `ShardWatch`, which finds
a shard whose primary changed.

redis-py follows MOVED and ASK (and TRYAGAIN, 16 redirections at most) and reloads the slot
map after a connection error or a MOVED; every connection it makes is checked here once, when
it connects (`INFO replication`), like `redis/clients.PrimaryWatch` for one server:

- A promoted replica has a new replication id, and as its *second* id the id of the primary
  it replaced. A server reached whose second id is an id this node saw on a primary, or an
  address this node knew under another id (a primary restarted without its data), means: a
  shard may lack this node's last writes (replication is asynchronous).
- A shard never seen before (first contact, or a primary we never wrote to) is not a change.

The watch tells `Membership` (stale: resync), counts the changes and calls its `listeners`
(the node heartbeats at once). `ShardWatch.sweep`, run at every heartbeat, reads every
primary's ids, so a failover of a shard this node does not talk to otherwise is found within
a heartbeat; a primary that does not answer makes it reload the slot map and read at once the
primaries the map names now. `suspect()` (the bus found a primary it did not know in a
reloaded slot map) calls the listeners too: the heartbeat's sweep then reads it.

Client settings: connect timeout 2 s, reply timeout 5 s; at most `POOL_SIZE` commands in
flight per client (`Scripts` waits for a turn: redis-py's cluster pools fail past their size
instead of waiting); slots not all covered (a shard down) leave the others usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ..redis.clients import Replication, replication_ids
from ..redis.urls import RedisTarget
from .membership import Membership

log = logging.getLogger("pushwire.cluster.rediscluster")

POOL_SIZE = 64  # commands in flight per client; more wait their turn


class ShardWatch:
    """The primaries this node reached and their replication ids (see the module doc)."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.primaries: dict[str, str] = {}  # address -> replication id, as last seen
        self.changes = 0  # new primaries found after the first contact (failovers, restarts)
        self.changed_at = 0.0  # monotonic time of the last change
        self._ids: set[str] = set()  # every replication id seen on a primary
        self.listeners: list[Callable[[], None]] = []  # called when a primary may be new

    def suspect(self) -> None:
        """A primary may have been replaced: tell the listeners (the heartbeat sweeps)."""
        for listener in self.listeners:
            listener()

    def seen(self, address: str, replication: Replication) -> None:
        """Note what the server at `address` said of itself when reached; a replica (a seed,
        or a node the slot map lists before it learns of a promotion) is not a primary."""
        role, replid, replid2 = replication
        if role != "master" or not replid:
            return
        before = self.primaries.get(address)
        changed = (before is not None and before != replid) or replid2 in self._ids
        self.primaries[address] = replid
        if replid in self._ids:
            return
        self._ids.add(replid)
        if changed:
            self.changes += 1
            self.changed_at = time.monotonic()
            self.membership.primaries_changed += 1
            log.warning(
                "redis cluster: a new primary at %s (a failover, or a restart without data): "
                "this node resyncs its records",
                address,
            )
            self.suspect()

    async def sweep(self, client: RedisCluster, timeout: float = 1.0) -> None:
        """Read every primary's replication ids; one that does not answer makes the slot map
        reload, and the primaries the new map names that were not read yet are read at once
        (a replica promoted meanwhile is found in this sweep). Errors are not raised: the
        heartbeat goes on."""
        answered: set[str] = set()

        async def one(node: ClusterNode) -> None:
            try:
                async with asyncio.timeout(timeout):
                    info = await node.execute_command("INFO", "replication")
            except (RedisError, RedisClusterException, OSError, TimeoutError):
                return
            answered.add(node.name)
            self.seen(node.name, replication_ids(info))

        primaries = client.get_primaries()
        await asyncio.gather(*(one(n) for n in primaries))
        if len(answered) == len(primaries):
            return
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await client.nodes_manager.initialize()
        await asyncio.gather(*(one(n) for n in client.get_primaries() if n.name not in answered))


class _WatchedCluster(RedisCluster):
    """`RedisCluster` whose new connections report the server's replication ids."""

    shard_watch: ShardWatch

    async def on_connect(self, connection: Connection) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "replication", check_health=False)
        info = await connection.read_response()
        address = f"{connection.host}:{connection.port}"
        self.shard_watch.seen(address, replication_ids(info))


def make_cluster_client(target: RedisTarget, watch: ShardWatch, retries: int) -> RedisCluster:
    """A client of the cluster `target` names (its hosts are seeds), reporting to `watch`.
    `retries`: how often a command is sent again after a connection error, the slot map
    reloaded (0 for scripts that must not run twice)."""
    client = _WatchedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        socket_connect_timeout=2,
        socket_timeout=5,
        require_full_coverage=False,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
        if retries
        else Retry(NoBackoff(), 0),
        max_connections=POOL_SIZE * 2,
    )
    client.shard_watch = watch
    # redis-py calls `on_connect` only when reading from replicas: set it for every node
    # made from now on (the shared kwargs) and for the seeds (made already)
    client.connection_kwargs["redis_connect_func"] = client.on_connect
    for node in client.startup_nodes:
        node.connection_kwargs["redis_connect_func"] = client.on_connect
    return client


def connection_to(client: RedisCluster, address: str, **overrides: Any) -> Connection:
    """A connection to the cluster node at `address` ("host:port"), outside any pool (a bus
    listener), with the client's settings and `overrides`."""
    node = client.get_node(node_name=address) or client.get_nodes()[0]
    cls, kwargs = node.connection_class, dict(node.connection_kwargs)
    host, _, port = address.rpartition(":")
    kwargs.update(host=host, port=int(port))
    kwargs.pop("redis_connect_func", None)  # no INFO: a listener reports nothing
    kwargs.update(overrides)
    conn: Connection = cls(**kwargs)
    return conn
