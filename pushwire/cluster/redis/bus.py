"""`RedisBroker`: the bus over Redis pub/sub.

Receiving: one dedicated pub/sub connection (not from the pool), its `Listener`
(`listener.py`: confirmations, reconnection, silence). `subscribe` returns only once Redis
has confirmed a SUBSCRIBE that no later UNSUBSCRIBE can undo; while the connection is lost,
`healthy` is False and every wanted topic is subscribed again when it is back. A connection
silent past `silence_limit` is given up and `lost` (given to `start`) is called.

Publishing: `publisher.py`. Order: the receiving side reads one connection in order; the
publishing side sends messages to one topic in `publish` order.

Limits of the receiver check: it counts subscriptions, it cannot name them. A node subscribed
on the bus without a record (between its bus subscribe and its state write) can hide a listed
node that is not subscribed. Whether this node's own pub/sub connection is counted is known
from what it sent and Redis confirmed; while a SUBSCRIBE of its own is in flight it is assumed
counted, which can only make the check stricter, and a publish that a SUBSCRIBE of its own to
its channel may have overtaken (sent after the publish read that state) is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..base import BusMessage
from .clients import new_connection
from .listener import Listener
from .pubsub import PubSubBroker
from .scripts import Scripts


class RedisBroker(PubSubBroker):
    def __init__(self, scripts: Scripts, state: Scripts | None = None) -> None:
        super().__init__(scripts, state)
        self._client = scripts.client
        self._listener = Listener(
            f"node {self.node}",
            self._new_connection,
            lambda: list(self._wanted),
            self._on_message,
            self,
            self._wakeups,
            self._subscribes,
            on_lost=lambda: self._lost(),
        )

    @property
    def healthy(self) -> bool:
        return self._listener.healthy

    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._inbox.deliver = deliver
        self._lost = lost or (lambda: None)
        self._listener.start()

    async def stop(self) -> None:
        await self._publisher.drain(2.0)  # what was published goes out first
        self._wanted.clear()
        await self._listener.stop()

    def _route(self, name: bytes) -> Listener:
        return self._listener

    def _listeners(self) -> list[Listener]:
        return [self._listener]

    def _new_connection(self) -> AbstractConnection:
        # The listener pings by itself; a failure is handled by reconnecting, not retrying.
        # RESP2: pub/sub replies are plain arrays (with RESP3, redis-py's default, they are
        # push messages that its parser logs one by one).
        return new_connection(
            self._client,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            protocol=2,
        )
