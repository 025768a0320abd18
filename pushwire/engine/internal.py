"""Extensions' internal messages: a small RPC over the bus. `publish` runs the handlers of a
message kind on every node, this one first (awaited), the others when the bus delivers it
(an announcement: kept and sent again after an outage only for member/watch kinds, so an
internal message the bus cannot take is lost; handlers must tolerate that). A failing
handler is logged and does not stop the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ..cluster.base import NODES_TOPIC, BusKind, BusMessage
from .link import ClusterLink

log = logging.getLogger(__name__)
InternalHandler = Callable[[dict[str, Any], str], Any]


class InternalMessages:
    def __init__(self, link: ClusterLink) -> None:
        self.link = link
        self.handlers: dict[str, list[InternalHandler]] = {}

    def on(self, kind: str, fn: InternalHandler) -> None:
        """Run `fn(payload, origin_node)` for every internal message `kind`."""
        self.handlers.setdefault(kind, []).append(fn)

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Run the handlers of internal message `kind` on every node (this one first)."""
        body = orjson.dumps(payload)
        await self.run(kind, orjson.loads(body), self.link.node)
        await self.link.publish(NODES_TOPIC, BusMessage(BusKind.INTERNAL, tag=kind, payload=body))

    async def run(self, kind: str, payload: dict[str, Any], origin: str) -> None:
        for fn in self.handlers.get(kind, []):
            try:
                result = fn(payload, origin)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("internal message handler for %r failed", kind)
