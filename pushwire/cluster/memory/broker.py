"""`MemoryBroker`: the bus between the nodes of one process (see `plane.Backplane`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ...protocol.history import HistoryPolicy
from ..base import (
    BusMessage,
    HistoryPage,
    PartialDelivery,
    Position,
    decode,
    encode,
)
from .plane import Backplane, _network, _round_trip


class MemoryBroker:
    def __init__(self, plane: Backplane, node: str) -> None:
        self.plane = plane
        self.node = node
        self.wanted: set[str] = set()
        self._deliver: Callable[[BusMessage], None] = lambda m: None

    @property
    def healthy(self) -> bool:
        return self.node not in self.plane.unreachable


    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._deliver = deliver
        self.plane.lost[self.node] = lost or (lambda: None)

    async def stop(self) -> None:
        for topic in list(self.wanted):
            await self.unsubscribe(topic)

    @_round_trip
    async def subscribe(self, topic: str) -> None:
        self.wanted.add(topic)
        self.plane.check(self.node, registered=False)
        self.plane.topics.setdefault(topic, {})[self.node] = self._on_message

    @_round_trip
    async def unsubscribe(self, topic: str) -> None:
        self.wanted.discard(topic)
        subs = self.plane.topics.get(topic)
        if subs is not None:
            subs.pop(self.node, None)
            if not subs:
                del self.plane.topics[topic]

    @_round_trip
    async def resubscribed(self) -> None:
        self.plane.check(self.node, registered=False)
        for topic in self.wanted:
            self.plane.topics.setdefault(topic, {})[self.node] = self._on_message

    def _on_message(self, wire: bytes) -> None:
        if self.node in self.plane.unreachable:
            return  # a cut-off node misses what is published meanwhile, as over a network
        msg = decode(wire)
        if msg is not None:
            self._deliver(msg)

    async def publish(
        self, topic: str, msg: BusMessage, history: HistoryPolicy | None = None
    ) -> Position | None:
        plane = self.plane
        plane.check(self.node)
        now = plane.clock()
        for node in plane.topics.get(topic, ()):  # (as publish.lua: see `receivers`)
            if node != self.node and plane.nodes.get(node, now) < now:
                raise PartialDelivery(
                    f"node {node} lost its lease: its subscribers cannot be counted on"
                )
        position = None
        if history is not None:
            position = plane.append_history(topic, msg.payload, history)
        subs = plane.topics.get(topic)
        if subs and (position is not None or len(subs) > 1 or self.node not in subs):
            # the bytes Redis would carry (the position line is the store's, as publish.lua
            # writes it), so in-process tests exercise the wire format
            wire = encode(msg, self.node)
            if position is not None:
                wire = b"@%d %s\n" % (position.offset, position.epoch.encode()) + wire
            loop = asyncio.get_running_loop()
            for node, deliver in subs.items():
                if node != self.node or position is not None:  # history echoes (see Broker)
                    loop.call_soon(deliver, wire)  # FIFO: per-topic order holds
        await _network(plane)  # only the reply waits: the send kept the call order
        return position

    @_round_trip
    async def history(
        self,
        topic: str,
        since: int | None,
        limit: int,
        policy: HistoryPolicy,
        max_bytes: int = 0,
    ) -> HistoryPage:
        self.plane.check(self.node)
        return self.plane.history_page(topic, since, limit, policy, max_bytes)
