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
counted, which can only make the check stricter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...protocol.history import HistoryPolicy
from ..base import (
    BusMessage,
    HistoryPage,
    Position,
    Unavailable,
    decode,
)
from .clients import new_connection
from .listener import Listener, Wakeups, confirm
from .publisher import Publisher
from .scripts import Scripts

log = logging.getLogger("pushwire.cluster.redis")


def _ignore(msg: BusMessage) -> None:
    pass


def _nothing() -> None:
    pass


class RedisBroker:
    confirm_timeout = 3.0  # subscribe / resubscribed give up after this many seconds
    ping_interval = 1.0  # an idle pub/sub connection is pinged after this many seconds
    ping_timeout = 3.0  # ... and is not healthy while the PING is unanswered for longer
    # ... and is given up after this long without an answer: what Redis sent it meanwhile
    # may never arrive, so `lost` is called (RedisBackend sets it from node_timeout)
    silence_limit = 4.0
    backoff_min = 0.1
    backoff_max = 2.0
    chunk = 500  # channels per SUBSCRIBE when subscribing everything again

    def __init__(self, scripts: Scripts, state: Scripts | None = None) -> None:
        """`scripts` run on the bus; `state`: the state's scripts when the state is another
        server (then each publish first asks it who must receive it: `_receivers`)."""
        self.node = scripts.node
        self._client = scripts.client
        self._keys = keys = scripts.keys
        self._bus_prefix = keys.bus("").encode()
        self._wanted: set[str] = set()
        self._wakeups = Wakeups()
        self._inbox = Inbox(self.node)
        self._lost: Callable[[], None] = _nothing
        self._listener = Listener(
            f"node {self.node}",
            self._new_connection,
            lambda: [self._name(t) for t in self._wanted],
            self._on_message,
            self,
            self._wakeups,
            on_lost=lambda: self._lost(),
        )
        self._publisher = Publisher(scripts, state, self._listening)

    # Lifecycle ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._listener.healthy

    @property
    def losses(self) -> int:
        """Connections given up while silent (see silence_limit)."""
        return self._listener.losses

    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._inbox.deliver = deliver
        self._lost = lost or _nothing
        self._listener.start()

    async def stop(self) -> None:
        await self._publisher.drain(2.0)  # what was published goes out first
        self._wanted.clear()
        await self._listener.stop()

    # Subscriptions ------------------------------------------------------------------------
    def _name(self, topic: str) -> bytes:
        return self._keys.bus(topic).encode()

    def _route(self, name: bytes) -> Listener:
        return self._listener

    async def subscribe(self, topic: str) -> None:
        self._wanted.add(topic)
        name = self._name(topic)
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await confirm(
                    lambda: [name] if topic in self._wanted else [],
                    self._route,
                    self._wakeups,
                    name,
                )
        except TimeoutError:
            raise Unavailable(
                f"bus subscription to {topic!r} not confirmed within {self.confirm_timeout} s"
            ) from None

    async def unsubscribe(self, topic: str) -> None:
        self._wanted.discard(topic)
        name = self._name(topic)
        sub = self._listener.channels.get(name)
        if self._listener.up and sub is not None and sub.last_sub:
            await self._listener.send("UNSUBSCRIBE", [name])

    async def resubscribed(self) -> None:
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await confirm(
                    lambda: [self._name(t) for t in self._wanted],
                    self._route,
                    self._wakeups,
                    None,
                )
        except TimeoutError:
            state = "not subscribed again" if self._listener.up else "unreachable"
            raise Unavailable(f"bus {state} after {self.confirm_timeout} s") from None

    # Receiving ----------------------------------------------------------------------------
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

    def _on_message(self, name: Any, data: Any) -> None:
        if not isinstance(name, bytes) or not name.startswith(self._bus_prefix):
            return
        topic = name[len(self._bus_prefix) :].decode("utf-8", "replace")
        if topic in self._wanted:
            self._inbox.receive(topic, data)

    # Publishing (publisher.py) --------------------------------------------------------------
    def _listening(self, topic: str) -> bool:
        """Whether Redis may count this node's pub/sub connection among `topic`'s
        subscribers right now."""
        sub = self._listener.channels.get(self._name(topic)) if self._listener.up else None
        return sub is not None and sub.maybe_counted

    async def publish(
        self, topic: str, msg: BusMessage, history: HistoryPolicy | None = None
    ) -> Position | None:
        return await self._publisher.publish(topic, msg, history)

    async def history(
        self,
        topic: str,
        since: int | None,
        limit: int,
        policy: HistoryPolicy,
        max_bytes: int = 0,
    ) -> HistoryPage:
        return await self._publisher.history(topic, since, limit, policy, max_bytes)



class Inbox:
    """Decodes what a broker receives and hands it to `deliver`, in order; drops this node's
    own echo (history publishes echo on purpose), other wire versions, and malformed
    messages (counted, logged at most every 10 s)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.deliver: Callable[[BusMessage], None] = _ignore
        self._malformed = 0
        self._malformed_logged = float("-inf")

    def receive(self, topic: str, data: Any) -> None:
        try:
            msg = decode(bytes(data))
        except Exception as exc:  # BadBusMessage, or anything else a stranger could send
            self._on_malformed(topic, exc)
            return
        if msg is None:  # another wire version
            return
        if msg.origin == self.node and msg.position is None:  # our own echo
            return
        try:
            self.deliver(msg)
        except Exception:
            log.exception("bus: delivering a message of %r failed", topic)

    def _on_malformed(self, topic: str, exc: Exception) -> None:
        self._malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged >= 10.0:
            log.debug(
                "bus: dropped %d malformed message(s); the last on %r: %s",
                self._malformed,
                topic,
                exc,
            )
            self._malformed = 0
            self._malformed_logged = now
