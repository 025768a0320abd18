"""`PubSubBroker`: what the one-server broker (`bus.py`) and the Redis Cluster broker
(`rediscluster/bus.py`) share: the wanted topics, subscriptions confirmed on the listener a
topic is routed to (`listener.confirm`), receiving (`Inbox`) and publishing (`Publisher`).
A subclass says where a topic is subscribed (`_route`) and which listeners it has."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...protocol.history import HistoryPolicy
from ..base import BusMessage, HistoryPage, Position, Unavailable, decode
from .listener import Listener, SubscribeLog, Wakeups, confirm
from .publisher import Publisher
from .scripts import Runner

log = logging.getLogger("pushwire.cluster.redis")


def _ignore(msg: BusMessage) -> None:
    pass


def _nothing() -> None:
    pass


class PubSubBroker:
    confirm_timeout = 3.0  # subscribe / resubscribed give up after this many seconds
    ping_interval = 1.0  # an idle pub/sub connection is pinged after this many seconds
    ping_timeout = 3.0  # ... and is not healthy while the PING is unanswered for longer
    # ... and is given up after this long without an answer: what Redis sent it meanwhile
    # may never arrive, so `lost` is called (set from node_timeout: follow_node_timeout)
    silence_limit = 4.0
    backoff_min = 0.1
    # a lost listener tries again at least twice a second: after a failover it is on the new
    # primary within half a second of the switch (a node that publishes nothing finds the
    # new primary through it: `Liveness.on_new_primary`)
    backoff_max = 0.5
    chunk = 500  # channels per subscribe command when subscribing everything again

    def __init__(self, scripts: Runner, state: Runner | None = None) -> None:
        """`scripts` run on the bus; `state`: the state's scripts when the state is another
        server (then each publish first asks it who must receive it)."""
        self.node = scripts.node
        self._keys = scripts.keys
        self._wanted: dict[bytes, str] = {}  # bus channel -> topic
        self._wakeups = Wakeups()
        self._subscribes = SubscribeLog()  # the listeners' subscribes, for the publisher
        self._inbox = Inbox(self.node)
        self._lost: Callable[[], None] = _nothing
        self._publisher = Publisher(scripts, state, self._listening, self._subscribes)

    def _route(self, name: bytes) -> Listener | None:
        """The listener that must hold bus channel `name` (None: none can right now)."""
        raise NotImplementedError

    def _listeners(self) -> list[Listener]:
        raise NotImplementedError

    @property
    def losses(self) -> int:
        """Connections given up while silent (see silence_limit)."""
        return sum(lis.losses for lis in self._listeners())

    @property
    def duplicates(self) -> int:
        """Publishes received twice (a sender's retry), delivered once."""
        return self._inbox.duplicates

    def _name(self, topic: str) -> bytes:
        return self._keys.bus(topic).encode()

    async def subscribe(self, topic: str) -> None:
        name = self._name(topic)
        self._wanted[name] = topic
        try:
            async with asyncio.timeout(self.confirm_timeout):
                # first the join mark (bus and state apart): a publisher's reused receiver
                # count is given up from now on, also if the subscription is not confirmed
                # (this node is listed by the state all the same; a fresh count sees it)
                await self._publisher.joined(topic)
                await confirm(
                    lambda: [name] if name in self._wanted else [],
                    self._route,
                    self._wakeups,
                    name,
                )
        except TimeoutError:
            raise Unavailable(
                f"bus subscription to {topic!r} not confirmed within {self.confirm_timeout} s"
            ) from None

    async def unsubscribe(self, topic: str) -> None:
        name = self._name(topic)
        self._wanted.pop(name, None)
        for lis in self._listeners():
            sub = lis.channels.get(name)
            if lis.up and sub is not None and sub.last_sub:
                await lis.send(lis.dialect.unsubscribe, [name])

    async def resubscribed(self) -> None:
        for lis in self._listeners():
            if not lis.up:
                lis.hurry()  # a resync waits for it: no backoff
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await confirm(lambda: list(self._wanted), self._route, self._wakeups, None)
                await self._publisher.joined(*self._wanted.values())
        except TimeoutError:
            up = any(lis.up for lis in self._listeners())
            state = "not subscribed again" if up else "unreachable"
            raise Unavailable(f"bus {state} after {self.confirm_timeout} s") from None

    def _on_message(self, name: Any, data: Any) -> None:
        topic = self._wanted.get(name)
        if topic is not None:
            self._inbox.receive(topic, data)

    # Publishing (publisher.py) --------------------------------------------------------------
    def _listening(self, topic: str) -> bool:
        """Whether Redis may count this node's own subscription among `topic`'s subscribers
        when the publish runs (a doubt only makes the receiver check stricter): while this
        node wants the topic at all, also when no connection holds it right now (a publish
        retried on a new connection, or sent behind a slow pipeline, may run after the
        listener subscribed again: its own subscription must not pass for another node's);
        and while any listener's connection may still be counted (an unsubscribe not yet
        confirmed). A topic this node starts to want while such a publish waits: see
        `SubscribeLog`."""
        name = self._name(topic)
        return name in self._wanted or any(lis.may_count(name) for lis in self._listeners())

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


class Recent:
    """The publish ids received lately (with their sender): a publish sent again after its
    connection broke (the publisher's one retry; the first may have gone out) is recognised.

    A retry comes at most a reply timeout and a reconnect after its first attempt, so ids
    are kept for `keep` seconds (more than the clients' 5 s reply timeout plus their 2 s
    connect timeout): a count alone (the last 8,192) forgot a first attempt within 5 s on a
    node receiving over 1,600 publishes a second. `most` bounds the memory (~25 MB; past it
    the oldest go first: at over 13,000 publishes a second the window is shorter than
    `keep`, still over 7 s below 18,000); the last `least` are kept even when older. Ids
    are held as 64-bit hashes (a false match, a publish dropped, has odds of ~1e-14)."""

    def __init__(
        self,
        keep: float = 10.0,
        most: int = 131_072,
        least: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ids: set[int] = set()
        self._order: deque[tuple[float, int]] = deque()
        self._keep, self._most, self._least = keep, most, least
        self._clock = clock

    def __len__(self) -> int:
        return len(self._order)

    def seen(self, origin: str, ident: str) -> bool:
        """Whether this publish arrived already (it is remembered if not)."""
        key = hash((origin, ident))  # an int: a quarter of the memory of the strings
        if key in self._ids:
            return True
        now = self._clock()
        self._ids.add(key)
        self._order.append((now, key))
        order, oldest = self._order, now - self._keep
        while len(order) > self._most or (len(order) > self._least and order[0][0] < oldest):
            self._ids.discard(order.popleft()[1])
        return False


class Inbox:
    """Decodes what a broker receives and hands it to `deliver`, in order; drops this node's
    own echo (history publishes echo on purpose), a publish that arrives twice (`Recent`),
    other wire versions, and malformed messages (counted, logged at most every 10 s)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.deliver: Callable[[BusMessage], None] = _ignore
        self.duplicates = 0  # publishes dropped because they arrived twice
        self._recent = Recent()
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
        if msg.ident and self._recent.seen(msg.origin, msg.ident):
            self.duplicates += 1
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
