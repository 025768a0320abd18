"""`ClusterBroker`: the bus over Redis Cluster's sharded pub/sub (Redis >= 7).

A topic's bus channel (`p:{T}:bus`) hashes to the topic's slot, the slot of its channel's
records and history: a publish is one script on one shard, which SPUBLISHes there only (not
to every node of the cluster, as PUBLISH would).

Receiving: one `Listener` (`redis/listener.py`: confirmations, reconnection, silence) per
shard primary this node has topics on, each on a dedicated connection doing SSUBSCRIBE for
the topics whose slot that primary owns, per redis-py's slot map. The layer over redis-py
(whose `ClusterPubSub` neither confirms SSUBSCRIBE before returning nor tells a caller which
subscriptions are in effect, and follows slot moves only when its own commands meet them)
is this module and the sharded dialect of the listener; it follows the cluster:
- a listener whose connection is lost (its primary died, or the network) reloads the slot
  map before each new attempt; once the slot has a new owner (a promoted replica), the
  topics go to that primary's listener, which subscribes them, and the node's heartbeat is
  woken (`ShardWatch.suspect`: it reads the new primary's ids and resyncs);
- a slot migrated away (the server unsubscribes its channels: an `sunsubscribe` nobody
  asked for) or an SSUBSCRIBE answered with MOVED (a stale slot map) reloads the map and
  subscribes the topics on their new owner.
Meanwhile `healthy` is False, `resubscribed` waits, and a publish on the topic's shard is
refused (its receiver check counts SSUBSCRIBE on that shard only: a node not subscribed
there yet is missing), so nothing is answered 2xx that a subscribed node may miss.

Publishing: `redis/publisher.py` over `ClusterScripts` (the shared publish script with the
cluster's prelude: SHARDNUMSUB, SPUBLISH). Order: as for one server, per topic (one slot,
one shard, one connection per pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from ..base import BusMessage
from ..redis.listener import SHARDED, Listener
from ..redis.pubsub import PubSubBroker
from .client import connection_to
from .scripts import ClusterScripts

log = logging.getLogger("pushwire.cluster.rediscluster")


class ClusterBroker(PubSubBroker):
    def __init__(self, scripts: ClusterScripts) -> None:
        super().__init__(scripts)
        self._client = scripts.client
        self._watch = scripts.watch
        self._by_address: dict[str, Listener] = {}  # by primary address
        self._refresh_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # Lifecycle ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """Every listener this node needs is up and answers (no topic: True)."""
        for name in self._wanted:
            address = self._owner(name)
            lis = self._by_address.get(address) if address is not None else None
            if lis is None or not lis.healthy:
                return False
        return True

    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._inbox.deliver = deliver
        self._lost = lost or (lambda: None)
        self._stopping = False
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self._client.initialize()  # else on first use

    async def stop(self) -> None:
        await self._publisher.drain(2.0)  # what was published goes out first
        self._stopping = True
        self._wanted.clear()
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
        listeners, self._by_address = list(self._by_address.values()), {}
        for lis in listeners:
            await lis.stop()
        if self._bg:
            await asyncio.wait(list(self._bg))

    # Routing ------------------------------------------------------------------------------
    def _owner(self, name: bytes) -> str | None:
        try:
            return str(self._client.nodes_manager.get_node_from_slot(key_slot(name)).name)
        except (RedisClusterException, KeyError, IndexError, TypeError):
            return None  # the slot map is not loaded, or the slot has no owner right now

    def _listeners(self) -> list[Listener]:
        return list(self._by_address.values())

    def _route(self, name: bytes) -> Listener | None:
        """The listener of the primary that owns `name`'s slot (made and started here)."""
        address = self._owner(name)
        if address is None or self._stopping:
            return None
        lis = self._by_address.get(address)
        if lis is None:
            lis = self._by_address[address] = self._listener(address)
            lis.start()
        return lis

    def _listener(self, address: str) -> Listener:
        def connect() -> AbstractConnection:
            # see RedisBroker._new_connection
            return connection_to(
                self._client,
                address,
                health_check_interval=0,
                retry=Retry(NoBackoff(), 0),
                retry_on_error=[],
                protocol=2,
            )

        return Listener(
            f"node {self.node} at {address}",
            connect,
            lambda: [n for n in self._wanted if self._owner(n) == address],
            self._on_message,
            self,
            self._wakeups,
            self._subscribes,
            SHARDED,
            on_lost=lambda: self._lost(),
            on_moved=lambda names: self._spawn(self._refresh()),
            on_down=self._refresh,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _refresh(self) -> None:
        """Reload the slot map (one reload at a time; callers meanwhile share it), then
        move every wanted topic to its owner's listener."""
        if self._stopping:
            return
        task = self._refresh_task
        if task is None or task.done():
            task = self._refresh_task = asyncio.ensure_future(self._reload())
        await asyncio.shield(task)

    async def _reload(self) -> None:
        before = self._primaries()
        try:
            await self._client.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            log.debug("bus: the slot map was not reloaded: %s", exc)
        if self._primaries() - before:  # a replica promoted? the heartbeat reads it now
            self._watch.suspect()
        await self._reconcile()

    def _primaries(self) -> set[str]:
        return {node.name for node in self._client.get_primaries()}

    async def _reconcile(self) -> None:
        """Subscribe each wanted topic on its owner; unsubscribe it elsewhere; stop the
        listeners left with nothing (not from their own task: in the background)."""
        subscribe: dict[Listener, list[bytes]] = {}
        unsubscribe: dict[Listener, list[bytes]] = {}
        owners: set[Listener] = set()
        for name in list(self._wanted):
            owner = self._route(name)
            if owner is not None:
                owners.add(owner)
                sub = owner.channels.get(name)
                if owner.up and (sub is None or not sub.last_sub):
                    subscribe.setdefault(owner, []).append(name)
            for lis in self._by_address.values():
                sub = lis.channels.get(name)
                if lis is not owner and lis.up and sub is not None and sub.last_sub:
                    unsubscribe.setdefault(lis, []).append(name)
        for lis, names in unsubscribe.items():
            await lis.send(lis.dialect.unsubscribe, names)
        for lis, names in subscribe.items():
            await lis.send(lis.dialect.subscribe, names)
        for address, lis in list(self._by_address.items()):
            if lis not in owners and not any(s.last_sub for s in lis.channels.values()):
                del self._by_address[address]
                self._spawn(lis.stop())
        self._wakeups.wake()
