"""The Redis Cluster backend: `Broker`, `ClusterState` and `Liveness` over a Redis Cluster
(`redis+cluster://` / `rediss+cluster://` URLs), through redis-py's asyncio `RedisCluster`.

Every decision that matters is one Lua script in one slot: a channel's topic, history and
records share the channel's slot (`{c:A:C}`), a user's records the user's (`{u:A:U}`),
the connection quota and the channel index the app's (`{a:A}`), the registry and leases
one slot (`{reg}`). What one server checked inside each script is split (`membership.py`):
registration is checked locally (as of the last heartbeat) and, for writes, per group
through the node's incarnation; a publish's lease check uses the nodes the publisher saw
dead at its last heartbeat; resync and reaping go group by group (`records.py`); the app's
channel index is written after each channel's own step (`state.ChannelIndex`). Events go
over sharded pub/sub (`bus.py`), to one shard. A shard's failover is found per shard
(`client.ShardWatch`): the node resyncs; a history written on the replaced primary starts
a new epoch.

Modules: keys (names and hash tags, Lua prelude), client (the RedisCluster client,
ShardWatch), scripts (routes: the keys each script declares), membership, index (the node
index), state (the three parts), records (resync, reap), liveness, bus (sharded pub/sub).
Shared with the one-server backend: the publisher, the webhook store, the pub/sub listener,
and the scripts that touch one key or one group either way (`scripts.SHARED`).

Bus and state are one cluster (a second cluster for the state is not supported).
"""

from __future__ import annotations

from ..base import AppSnapshot, Changes
from ..redis.listener import follow_node_timeout
from ..redis.state import RedisCacheState
from ..redis.urls import RedisTarget
from ..redis.webhooks import RedisWebhookStore
from .bus import ClusterBroker
from .client import ShardWatch, make_cluster_client
from .index import NodeIndex
from .keys import ClusterKeys
from .liveness import ClusterLiveness
from .membership import Membership
from .records import Records
from .scripts import ClusterScripts
from .state import ChannelIndex, ClusterAppState, ClusterChannelState


class ClusterState(ClusterChannelState, ClusterAppState, RedisCacheState):
    """The whole `ClusterState` over Redis Cluster: the three parts, and a node's records as
    a whole (`records.Records`)."""

    def __init__(
        self,
        scripts: ClusterScripts,
        index: NodeIndex,
        channels: ChannelIndex,
        records: Records,
    ) -> None:
        super().__init__(scripts, index, channels)
        self._records = records

    async def resync(self, snapshot: dict[str, AppSnapshot]) -> Changes:
        return await self._records.resync(snapshot)

    async def reap(self, node: str) -> Changes:
        return await self._records.reap(node)


class RedisClusterBackend:
    def __init__(self, target: RedisTarget, prefix: str, node: str, node_timeout: float) -> None:
        if not node or any(c in node for c in ":\n\r"):
            raise ValueError(f"node id {node!r} must be non-empty, without ':' or newlines")
        self.node = node
        self.keys = keys = ClusterKeys(prefix)
        self.membership = membership = Membership(node)
        self.watch = ShardWatch(membership)
        # state scripts are never sent twice (a script that ran before its connection broke
        # would run twice); publishes are (a receiver drops the copy by its publish id; a
        # history publish is appended once)
        self.client = make_cluster_client(target, self.watch, retries=0)
        self.bus_client = make_cluster_client(target, self.watch, retries=2)
        self.scripts = scripts = ClusterScripts(self.client, keys, membership, self.watch)
        index = NodeIndex(scripts)
        channels = ChannelIndex(scripts)
        self.broker = ClusterBroker(ClusterScripts(self.bus_client, keys, membership, self.watch))
        follow_node_timeout(self.broker, node_timeout)
        records = Records(scripts, index, channels, claim_ttl=max(node_timeout, 2.0))
        self.state = ClusterState(scripts, index, channels, records)
        self.liveness = ClusterLiveness(scripts, index, channels, self.watch, node_timeout)

    def webhook_store(self, max_size: int) -> RedisWebhookStore:
        return RedisWebhookStore(self.scripts, max_size)

    def primaries(self) -> list[tuple[str, str, int]]:
        """For the metrics: ("cluster", the shard primaries of the slot map as last loaded,
        new primaries found)."""
        shards = sorted(node.name for node in self.client.get_primaries())
        return [("cluster", ",".join(shards), self.watch.changes)]

    async def aclose(self) -> None:
        """Stop the broker (its listeners) and close the clients."""
        try:
            await self.broker.stop()
        finally:
            await self.client.aclose()
            await self.bus_client.aclose()


__all__ = ["ClusterBroker", "ClusterLiveness", "ClusterState", "RedisClusterBackend"]
