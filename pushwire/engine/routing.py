"""Topic tracking and bus routing: which bus topics this node listens to, and what a message
from another node means for this node's sockets.

Guarantees:
- `subscribe_topic` subscribes to a topic once; every caller returns only once the broker
  confirmed it (a second joiner of a channel waits for the first one's subscription).
- Subscribes and unsubscribes of one topic reach the broker one after the other, in order,
  so a channel left and joined again at once ends subscribed. A failed one stays wanted by
  the broker and marks the link dirty (the resync waits for it).
- `on_bus` runs synchronously in the broker's delivery callback: frames go straight to the
  hub (no task, no await on the fan-out path); extension messages run as background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson

from ..apps.model import App
from ..cluster.base import Broker, BusKind, BusMessage, Unavailable
from ..hub import Hub, WatchStatus
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol.errors import ConnectionUnauthorized
from ..protocol.frames import Outbound
from .internal import InternalMessages
from .link import ClusterLink

log = logging.getLogger(__name__)

TERMINATED = "Connection terminated by the app (terminate_connections)"


def terminate_local(hub: Hub, app: App, user_id: str) -> int:
    """Close this node's sockets signed in as `user_id` (4009); returns how many."""
    return hub.close_user(app, user_id, ConnectionUnauthorized(TERMINATED))


class BusRouter:
    def __init__(
        self,
        broker: Broker,
        link: ClusterLink,
        hub: Hub,
        app_by_id: Callable[[str], App | None],
        internal: InternalMessages,
        monitor: TrafficMonitor,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.broker = broker
        self.link = link
        self.hub = hub
        self.app_by_id = app_by_id
        self.internal = internal
        self.monitor = monitor
        self.metrics = metrics
        self.clock = clock
        self._topics: set[str] = set()  # bus topics wanted (subscribing or subscribed)
        self._topic_ops: dict[str, asyncio.Future[None]] = {}  # each topic's last bus call

    # Topics ------------------------------------------------------------------------------
    async def subscribe_topic(self, topic: str) -> None:
        """Subscribe to `topic` once; return once the broker confirmed it (see above)."""
        if topic not in self._topics:
            self._topics.add(topic)
            self._chain(topic, self.broker.subscribe)
        await asyncio.shield(self._topic_ops[topic])

    async def unsubscribe_topic(self, topic: str) -> None:
        if topic not in self._topics:
            return
        self._topics.discard(topic)
        task = self._chain(topic, self.broker.unsubscribe)
        await asyncio.shield(task)
        if self._topic_ops.get(topic) is task:
            del self._topic_ops[topic]

    def _chain(self, topic: str, op: Callable[[str], Awaitable[None]]) -> asyncio.Future[None]:
        prev = self._topic_ops.get(topic)

        async def run() -> None:
            if prev is not None:
                await asyncio.wait([prev])
            try:
                await op(topic)
            except Unavailable as exc:  # the broker keeps it wanted; the resync waits for it
                log.debug("bus %s of %s failed: %s", op.__name__, topic, exc)
                self.link.dirty = True

        task = self._topic_ops[topic] = asyncio.ensure_future(run())
        return task

    # Routing -----------------------------------------------------------------------------
    def on_bus(self, m: BusMessage) -> None:
        """A message from another node: deliver it to this node's sockets."""
        self.metrics.bus_received += 1
        kind = m.kind
        if kind is BusKind.INTERNAL:
            try:
                payload = orjson.loads(m.payload)
            except orjson.JSONDecodeError:
                return
            if isinstance(payload, dict):
                self.link.spawn(self.internal.run(m.tag, payload, m.origin))
            return
        if kind is BusKind.TAP:
            if m.tag == "want":
                self.monitor.cluster_wanted_until = self.clock() + 3 * self.link.interval + 1
            else:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.monitor.deliver(orjson.loads(m.payload), remote=True)
            return
        app = self.app_by_id(m.app)
        if app is None:
            return
        if kind is BusKind.CHANNEL:
            self.hub.broadcast(app, m.channel, Outbound(m.payload), m.except_socket, m.position)
        elif kind is BusKind.MEMBER:
            self.hub.member_event(app, m.channel, m.user, m.version, Outbound(m.payload))
        elif kind is BusKind.USER:
            self.hub.send_to_user(app, m.user, Outbound(m.payload), m.except_socket)
        elif kind is BusKind.TERMINATE:
            terminate_local(self.hub, app, m.user)
        elif kind is BusKind.WATCH:
            with contextlib.suppress(ValueError):
                self.hub.notify_watchers(app, m.user, WatchStatus(m.tag))
