"""Channel history and recovery: the kept events of a channel, and what a socket that opted
in to history positions gets when it subscribes.

Guarantees:
- `history` reads the broker's kept events of a channel whose app keeps history for it;
  None when it keeps none; `Unavailable` (and the link marked unhealthy) when the store
  cannot answer.
- `recover` never sends a partial recovery: either every event after the socket's position
  (each with its position, then `recovered: true`), or none and `recovered: false` (another
  epoch, trimmed, expired, more than half of `max_pending_bytes`, store down, no history).
  It reads after the socket's bus subscription, so anything published later is held for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..apps.model import App
from ..cluster.base import Broker, HistoryPage, Position, Unavailable, channel_topic
from ..metrics import Metrics
from ..protocol import messages
from ..protocol.frames import Outbound
from .link import ClusterLink


@dataclass(frozen=True, slots=True)
class Recovery:
    """A socket opted in to history positions on a channel it subscribes to. `since`: the
    last position it saw (recover what came after it), or None (nothing to recover)."""

    since: Position | None = None


class History:
    def __init__(
        self, broker: Broker, link: ClusterLink, metrics: Metrics, max_pending_bytes: int
    ) -> None:
        self.broker = broker
        self.link = link
        self.metrics = metrics
        self.max_pending_bytes = max_pending_bytes

    async def history(
        self, app: App, channel: str, since: int | None, limit: int, max_bytes: int = 0
    ) -> HistoryPage | None:
        """The kept events of `channel` (see Broker.history); None when it keeps no history.
        Raises Unavailable."""
        policy = app.history_policy(channel)
        if policy is None:
            return None
        topic = channel_topic(app.id, channel)
        try:
            return await self.broker.history(topic, since, limit, policy, max_bytes)
        except Unavailable as exc:
            self.link.unavailable("history", exc)
            raise

    async def recover(
        self, app: App, name: str, recovery: Recovery, succeeded: Outbound
    ) -> tuple[list[Outbound], Position | None]:
        """The frames a joiner that opted in to positions gets before it is a subscriber: the
        events after `recovery.since` (each with its position), then `succeeded` carrying the
        channel's last position and, when it asked to recover, `recovered`: true when every
        event after its position is among them, false when some are gone (another epoch,
        trimmed, expired, more than half of `max_pending_bytes`) or the channel keeps no
        history; then none are sent and the app should fetch its state again. Also returns
        that last position (None: unknown)."""
        since = recovery.since
        page: HistoryPage | None = None
        with contextlib.suppress(Unavailable):  # the store is down: cannot recover
            if since is None:
                page = await self.history(app, name, None, 0)
            else:
                # more than half of what a socket may hold unsent would close it as a slow
                # consumer: not read at all (a subscribe must not make the server read MBs)
                budget = self.max_pending_bytes // 2
                page = await self.history(app, name, since.offset, app.history_size, budget)
        if page is None:
            asked = None if since is None else False  # no history here, or the store is down
            return [messages.recovery_receipt(succeeded, None, asked)], None
        top = page.top
        if since is None:
            return [messages.recovery_receipt(succeeded, top, None)], top
        recovered = (
            page.complete
            and top.epoch == since.epoch
            and len(page.events) == top.offset - since.offset
        )
        frames = []
        if recovered:
            frames = [
                messages.positioned(Outbound(e.payload), Position(top.epoch, e.offset))
                for e in page.events
            ]
        self.metrics.recoveries["recovered" if recovered else "failed"] += 1
        frames.append(messages.recovery_receipt(succeeded, top, recovered))
        return frames, top
