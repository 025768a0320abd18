"""Helpers that tests and users share: a connection that records frames, a fake clock, and
nodes on the memory backend: one alone, or several sharing one backplane (an in-process
cluster: the same engine and decisions as over Redis, deterministic and without sockets)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from .apps.base import AppStore
from .apps.model import App
from .cluster.memory import Backplane
from .config import Config
from .connection import Connection
from .handler import PusherHandler, new_socket_id
from .protocol.frames import Outbound
from .server import Node, build_node, memory_backends


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConnection(Connection):
    """Records every message sent to it (`sent`) and its close (`close_code`)."""

    __slots__ = ("close_code", "close_reason", "sent")

    def __init__(self, app: App, socket_id: str | None = None, now: float = 0.0) -> None:
        super().__init__(app, socket_id or new_socket_id(), now)
        self.sent: list[Outbound] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def send(self, msg: Outbound) -> None:
        if not self.closed:
            self.sent.append(msg)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.close_reason = reason

    def wire(self) -> list[str]:
        """The exact JSON strings sent, in order."""
        return [m.payload.decode() for m in self.sent]

    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sent]

    def take(self) -> list[dict[str, Any]]:
        out = self.events()
        self.sent.clear()
        return out


_ids = itertools.count(1)


def make_node(
    config: Config,
    clock: FakeClock | None = None,
    plane: Backplane | None = None,
    node_id: str | None = None,
    store: AppStore | None = None,
) -> Node:
    """A node on the memory backend, registered at once (no need to start it); its app
    registry loads `store` (default: the config's apps) when the node starts."""
    clock = clock or FakeClock()
    plane = plane or Backplane(clock, config.cluster.node_timeout)
    node_id = node_id or f"node-{next(_ids)}"
    plane.nodes[node_id] = clock() + config.cluster.node_timeout
    return build_node(config, memory_backends(config, node_id, plane), clock, node_id, store)


def make_handler(config: Config, clock: FakeClock | None = None) -> PusherHandler:
    return make_node(config, clock).handler


class InProcessCluster:
    """`n` nodes in one process over one shared memory backplane."""

    def __init__(self, config: Config, n: int = 2, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.plane = Backplane(self.clock, config.cluster.node_timeout)
        self.nodes = [
            make_node(config, self.clock, self.plane, f"n{i}") for i in range(n)
        ]

    @property
    def handlers(self) -> list[PusherHandler]:
        return [n.handler for n in self.nodes]

    async def start(self) -> None:
        for node in self.nodes:
            await node.engine.start()

    async def stop(self) -> None:
        for node in self.nodes:
            await node.engine.stop()

    async def __aenter__(self) -> InProcessCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def settle(self) -> None:
        """Let bus deliveries (scheduled with call_soon) run."""
        for _ in range(5):
            await asyncio.sleep(0)
