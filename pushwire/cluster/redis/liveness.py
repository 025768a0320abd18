"""`RedisLiveness`: leases in Redis (`{p}:lease:{node}`, PX = node_timeout)."""

from __future__ import annotations

from ..base import Heartbeat
from .scripts import Scripts, as_str, to_ms


class RedisLiveness:
    def __init__(self, scripts: Scripts, node_timeout: float) -> None:
        self.node = scripts.node
        self.node_timeout = node_timeout
        self.scripts = scripts

    async def beat(self) -> Heartbeat:
        """Renew this node's lease if it is registered (one atomic step); never registers."""
        registered, alive, dead = await self.scripts.run("beat", to_ms(self.node_timeout))
        return Heartbeat(
            bool(registered),
            frozenset(as_str(n) for n in alive),
            tuple(sorted(as_str(n) for n in dead)),
        )

    async def register(self) -> None:
        await self.scripts.run("register", to_ms(self.node_timeout))

    async def deregister(self) -> None:
        await self.scripts.run("deregister")
