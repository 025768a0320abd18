"""The traffic monitor: what clients send and what the server answers, for extensions and
for `pushwire tap`. Costs nothing while nobody listens (`active` is False).

Listeners added with `cluster=True` see every node's traffic: while one exists, its node says
so on the bus every heartbeat (the engine), and every node that heard it within the last few
heartbeats forwards its own events over the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from .cluster.base import NODES_TOPIC, Broker, BusKind, BusMessage, Unavailable
from .connection import Connection
from .protocol.frames import Outbound

log = logging.getLogger("pushwire.monitor")

Listener = Callable[[dict[str, Any]], None]


class TrafficMonitor:
    def __init__(
        self,
        node: str,
        broker: Broker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.broker = broker
        self.clock = clock
        self.local: list[Listener] = []  # want this node's traffic
        self.cluster: list[Listener] = []  # want every node's traffic
        self.cluster_wanted_until = 0.0  # some node of the cluster has cluster listeners
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def cluster_wanted(self) -> bool:
        until = self.cluster_wanted_until
        # 0.0 until some node asks: no clock read on every publish of a node nobody taps
        return bool(until) and self.broker is not None and until > self.clock()

    @property
    def active(self) -> bool:
        return bool(self.local or self.cluster or self.cluster_wanted)

    def add(self, fn: Listener, cluster: bool = False) -> None:
        (self.cluster if cluster else self.local).append(fn)

    def remove(self, fn: Listener) -> None:
        for group in (self.local, self.cluster):
            if fn in group:
                group.remove(fn)

    def emit(self, kind: str, app_id: str, **fields: Any) -> None:
        event = {
            "time_ms": int(time.time() * 1000),
            "node": self.node,
            "kind": kind,
            "app": app_id,
            **fields,
        }
        self.deliver(event, remote=False)
        if self.cluster_wanted:
            self._forward(event)

    def _forward(self, event: dict[str, Any]) -> None:
        assert self.broker is not None
        try:
            payload = orjson.dumps(event)
        except TypeError:  # not serialisable (e.g. nested too deep): this event stays local
            return
        task = asyncio.ensure_future(self._send(BusMessage(BusKind.TAP, payload=payload)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, bm: BusMessage) -> None:
        assert self.broker is not None
        with contextlib.suppress(Unavailable):  # traffic is best effort
            await self.broker.publish(NODES_TOPIC, bm)

    def out(self, conn: Connection, msg: Outbound) -> None:
        """Show a receipt sent to one client."""
        if self.active:
            self.emit("out", conn.app.id, socket_id=conn.socket_id, raw=msg.payload.decode())

    def reply(self, conn: Connection, msg: Outbound) -> None:
        """Send a receipt to one client and show it."""
        conn.send(msg)
        self.out(conn, msg)

    def deliver(self, event: dict[str, Any], remote: bool) -> None:
        targets = self.cluster if remote else self.local + self.cluster
        for fn in targets:
            try:
                fn(event)
            except Exception:
                log.exception("traffic monitor listener failed")
