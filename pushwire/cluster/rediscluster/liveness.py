"""`ClusterLiveness`: leases in the registry's slot (`p:{reg}:lease:N`, PX = node_timeout),
and a node's housekeeping at each heartbeat (see `beat`)."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio.cluster import RedisCluster

from ..base import Heartbeat
from ..redis.scripts import as_str, to_ms
from .client import ShardWatch
from .index import NodeIndex
from .scripts import ClusterScripts
from .state import ChannelIndex


class ClusterLiveness:
    def __init__(
        self,
        scripts: ClusterScripts,
        index: NodeIndex,
        channels: ChannelIndex,
        watch: ShardWatch,
        node_timeout: float,
    ) -> None:
        self.node = scripts.node
        self.node_timeout = node_timeout
        self._scripts = scripts
        self._membership = scripts.membership
        self._index = index
        self._channels = channels
        self._watch = watch

    async def beat(self) -> Heartbeat:
        """Renew this node's lease if it is registered under its incarnation (one atomic
        step in the registry's slot; never registers). Then, this node's housekeeping, which
        never fails the beat: read every shard primary's replication ids (a failover makes
        this node stale: it answers as not registered, so the engine resyncs), drop index
        entries of groups it left, write the channel-index marks that failed before."""
        client: RedisCluster = self._scripts.client
        await self._watch.sweep(client)
        registered, alive, dead = await self._scripts.run("beat", to_ms(self.node_timeout))
        m = self._membership
        m.registered = bool(registered)
        m.dead = tuple(sorted(as_str(n) for n in dead))
        if m.valid:
            await self._index.flush()
            await self._channels.retry()
        return Heartbeat(m.valid, frozenset(as_str(n) for n in alive), m.dead)

    async def register(self) -> None:
        """Register under a new incarnation: the index first (open to it), then the
        registry."""
        m = self._membership
        inc = m.renew()
        flat = await self._scripts.run("index", "open", self.node, inc)
        self._index.reset({as_str(flat[i]): as_str(flat[i + 1]) for i in range(0, len(flat), 2)})
        await self._scripts.run("register", to_ms(self.node_timeout))
        m.registered = True

    async def deregister(self) -> None:
        await self._scripts.run("deregister")
        self._membership.registered = False

    def on_new_primary(self, wake: Callable[[], None]) -> None:
        """`wake` when a shard's primary may have changed (`ShardWatch.suspect`)."""
        self._watch.listeners.append(wake)
