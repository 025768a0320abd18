"""`RedisLiveness`: leases in Redis (`{p}:lease:{node}`, PX = node_timeout); a new primary
of the bus or the state (`clients.PrimaryWatch`) wakes the node's heartbeat."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..base import Heartbeat, NotRegistered
from .clients import PrimaryWatch
from .scripts import Scripts, as_str, to_ms


class RedisLiveness:
    def __init__(
        self, scripts: Scripts, node_timeout: float, watches: Iterable[PrimaryWatch]
    ) -> None:
        """`watches`: the roles' primary watches (the bus's and the state's), each of which
        finds a new primary on the first new connection to it."""
        self.node = scripts.node
        self.node_timeout = node_timeout
        self.scripts = scripts
        self._watches = tuple(watches)

    async def beat(self) -> Heartbeat:
        """Renew this node's lease if it is registered (one atomic step); never registers.
        A beat that met a new primary (`Scripts` raises NotRegistered: the generation changed
        during the call) answers "not registered" with nobody alive or dead (its answer is not
        trusted), so that the node resyncs on the new primary now."""
        try:
            registered, alive, dead = await self.scripts.run("beat", to_ms(self.node_timeout))
        except NotRegistered:
            return Heartbeat(False, frozenset(), ())
        return Heartbeat(
            bool(registered),
            frozenset(as_str(n) for n in alive),
            tuple(sorted(as_str(n) for n in dead)),
        )

    async def register(self) -> None:
        await self.scripts.run("register", to_ms(self.node_timeout))

    async def deregister(self) -> None:
        await self.scripts.run("deregister")

    def on_new_primary(self, wake: Callable[[], None]) -> None:
        for watch in self._watches:
            watch.listeners.append(wake)
