"""`RedisBroker`: the bus over Redis pub/sub.

Receiving: one dedicated pub/sub connection (not from the pool), owned by one listener task
that reads every reply on it: messages, and the confirmations Redis sends for every SUBSCRIBE
and UNSUBSCRIBE, one per channel and in order. Per Redis channel the broker counts what it
sent on the current connection and what Redis confirmed (`_Channel`), so `subscribe` returns
only once Redis has confirmed a SUBSCRIBE that no later UNSUBSCRIBE can undo. On a lost
connection (an error) the listener reconnects with capped backoff (0.1 s doubling to 2 s)
and subscribes every wanted topic again; meanwhile `healthy` is False.

Silence: the listener pings the connection when it is idle. Unanswered past `ping_timeout`,
the connection is not healthy but is kept: a network cut that heals lets TCP deliver what
Redis sent meanwhile (late, nothing lost). Unanswered past `silence_limit`, it is given up,
and with it whatever Redis sent on it since: `lost` (given to `start`) is called so that the
engine does not leave its sockets silently deaf.

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
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ...aio import cancel_and_wait
from ...protocol.history import HistoryPolicy
from ..base import (
    BusMessage,
    HistoryPage,
    Position,
    Unavailable,
    decode,
)
from .clients import new_connection
from .publisher import Publisher
from .scripts import Scripts

log = logging.getLogger("pushwire.cluster.redis")


@dataclass(slots=True)
class _Channel:
    """One Redis channel on the current pub/sub connection."""

    last_sub: bool = False  # the last command sent for it was SUBSCRIBE
    subs: int = 0  # SUBSCRIBEs sent, not confirmed yet
    unsubs: int = 0  # UNSUBSCRIBEs sent, not confirmed yet
    active: bool = False  # subscribed, as of the last confirmation

    @property
    def confirmed(self) -> bool:
        """Subscribed, and nothing in flight can end that."""
        return self.active and self.last_sub and self.unsubs == 0

    @property
    def maybe_counted(self) -> bool:
        """Redis may count this connection as a subscriber right now."""
        return self.active or self.subs > 0

    @property
    def idle(self) -> bool:
        return not (self.active or self.last_sub or self.subs or self.unsubs)


def _ignore(msg: BusMessage) -> None:
    pass


def _nothing() -> None:
    pass


class _Silent(RedisConnectionError):
    """The pub/sub connection did not answer within `silence_limit`: given up."""


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
        self._channels: dict[bytes, _Channel] = {}  # of the current connection
        self._conn: AbstractConnection | None = None
        self._up = False
        # futures woken when a channel's state changes (key None: on any change)
        self._waiters: dict[bytes | None, list[asyncio.Future[None]]] = {}
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._deliver: Callable[[BusMessage], None] = _ignore
        self._down_logged = False
        self._silent = False  # the connection has not answered a PING for ping_timeout
        self._lost: Callable[[], None] = _nothing
        self.losses = 0  # connections given up while silent (see silence_limit)
        self._malformed = 0
        self._malformed_logged = float("-inf")
        self._publisher = Publisher(scripts, state, self._listening)

    # Lifecycle ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._up and not self._silent

    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._deliver = deliver
        self._lost = lost or _nothing
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"pushwire-bus-{self.node}")

    async def stop(self) -> None:
        await self._publisher.drain(2.0)  # what was published goes out first
        self._stopping = True
        self._wanted.clear()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)  # a cancel can be lost in redis-py's read timeout
        if self._conn is not None:  # the task never ran
            await self._detach(self._conn)

    # Subscriptions ------------------------------------------------------------------------
    def _name(self, topic: str) -> bytes:
        return self._keys.bus(topic).encode()

    async def subscribe(self, topic: str) -> None:
        self._wanted.add(topic)
        name = self._name(topic)
        try:
            async with asyncio.timeout(self.confirm_timeout):
                while True:
                    if self._up:
                        if topic not in self._wanted:
                            return  # unsubscribed meanwhile
                        ch = self._channels.get(name)
                        if ch is not None and ch.confirmed:
                            return
                        if (ch is None or not ch.last_sub) and await self._send(
                            "SUBSCRIBE", [name]
                        ):
                            continue
                    await self._wait(name)
        except TimeoutError:
            raise Unavailable(
                f"bus subscription to {topic!r} not confirmed within {self.confirm_timeout} s"
            ) from None

    async def unsubscribe(self, topic: str) -> None:
        self._wanted.discard(topic)
        name = self._name(topic)
        ch = self._channels.get(name)
        if self._up and ch is not None and ch.last_sub:
            await self._send("UNSUBSCRIBE", [name])

    async def resubscribed(self) -> None:
        try:
            async with asyncio.timeout(self.confirm_timeout):
                while True:
                    if self._up:
                        channels = self._channels
                        missing = [
                            n
                            for n in map(self._name, self._wanted)
                            if n not in channels or not channels[n].confirmed
                        ]
                        if not missing:
                            return
                        unsent = [
                            n for n in missing if n not in channels or not channels[n].last_sub
                        ]
                        if unsent and await self._send("SUBSCRIBE", unsent):
                            continue
                    await self._wait(None)
        except TimeoutError:
            state = "not subscribed again" if self._up else "unreachable"
            raise Unavailable(f"bus {state} after {self.confirm_timeout} s") from None

    async def _wait(self, key: bytes | None) -> None:
        """Until channel `key` changes state on the bus (None: until anything changes); the
        connection going up or down wakes everyone."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            await fut
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]

    def _wake(self, key: bytes | None = None) -> None:
        for k in list(self._waiters) if key is None else (key, None):
            for fut in self._waiters.pop(k, ()):
                if not fut.done():
                    fut.set_result(None)

    async def _send(self, command: str, names: list[bytes]) -> bool:
        """Send SUBSCRIBE / UNSUBSCRIBE / PING on the current connection. False when it is
        down (the listener then reconnects and subscribes every wanted topic)."""
        async with self._send_lock:
            conn = self._conn
            if conn is None or not self._up or not conn.is_connected:
                return False
            for name in names:
                ch = self._channels.get(name)
                if ch is None:
                    ch = self._channels[name] = _Channel()
                if command == "SUBSCRIBE":
                    ch.last_sub = True
                    ch.subs += 1
                elif command == "UNSUBSCRIBE":
                    ch.last_sub = False
                    ch.unsubs += 1
            try:
                await conn.send_command(command, *names, check_health=False)
            except (RedisError, OSError) as exc:
                log.debug("bus: %s failed: %s", command, exc)
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)  # the listener sees it and reconnects
                return False
            return True

    # The listener -------------------------------------------------------------------------
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

    async def _run(self) -> None:
        backoff = self.backoff_min
        while not self._stopping:
            conn = self._new_connection()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await self._attach(conn)
                if self._down_logged:
                    log.warning("bus connection of node %s restored", self.node)
                    self._down_logged = False
                backoff = self.backoff_min
                await self._listen(conn)
            except _Silent as exc:
                self.losses += 1
                log.error(
                    "bus connection of node %s silent for %.1f s: given up, its messages "
                    "meanwhile may be lost (%s)",
                    self.node,
                    self.silence_limit,
                    exc,
                )
                self._down_logged = True
                try:
                    self._lost()
                except Exception:
                    log.exception("bus: the lost-messages handler failed")
            except (RedisError, OSError) as exc:
                if not self._down_logged:
                    log.error("bus connection of node %s lost (%s): reconnecting", self.node, exc)
                    self._down_logged = True
            except Exception:
                log.exception("bus listener of node %s failed: reconnecting", self.node)
            finally:
                await self._detach(conn)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _attach(self, conn: AbstractConnection) -> None:
        async with self._send_lock:
            self._conn = conn
            self._channels = {}
            names = [self._name(t) for t in self._wanted]
            for name in names:
                self._channels[name] = _Channel(last_sub=True, subs=1)
            for i in range(0, len(names), self.chunk):
                await conn.send_command("SUBSCRIBE", *names[i : i + self.chunk], check_health=False)
            self._up = True
        self._wake()

    async def _detach(self, conn: AbstractConnection) -> None:
        if self._conn is conn:
            self._conn = None
            self._up = False
            self._silent = False
            self._channels = {}
            self._wake()
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def _listen(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        pinged: float | None = None
        while not self._stopping:
            # push_request: should the connection speak RESP3, pub/sub replies are push
            # messages, which the parser would otherwise skip
            reply = await conn.read_response(timeout=self.ping_interval, push_request=True)
            now = loop.time()
            if reply is None:  # nothing within ping_interval
                if pinged is not None:
                    # A silent connection is kept, not dropped: TCP delivers what was sent
                    # once the path is back (a short cut costs latency, nothing else). Only
                    # past silence_limit is it given up, and with it what it still owed.
                    if now - pinged > self.silence_limit:
                        raise _Silent("no answer to PING")
                    if now - pinged > self.ping_timeout and not self._silent:
                        self._silent = True
                        log.warning("bus connection of node %s does not answer", self.node)
                elif now - last >= self.ping_interval:
                    pinged = now
                    await self._send("PING", [])
                continue
            last, pinged = now, None
            if self._silent:
                self._silent = False
                log.warning("bus connection of node %s answers again", self.node)
            self._on_reply(reply)

    def _on_reply(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message" and len(reply) >= 3:
            self._on_message(reply[1], reply[2])
        elif kind == b"subscribe":
            ch = self._channels.get(reply[1])
            if ch is not None:
                ch.subs = max(0, ch.subs - 1)
                ch.active = True
                self._wake(reply[1])
        elif kind == b"unsubscribe":
            ch = self._channels.get(reply[1])
            if ch is not None:
                ch.unsubs = max(0, ch.unsubs - 1)
                ch.active = False
                if ch.idle:
                    del self._channels[reply[1]]
                self._wake(reply[1])

    def _on_message(self, name: Any, data: Any) -> None:
        if not isinstance(name, bytes) or not name.startswith(self._bus_prefix):
            return
        topic = name[len(self._bus_prefix) :].decode("utf-8", "replace")
        if topic not in self._wanted:
            return
        try:
            msg = decode(bytes(data))
        except Exception as exc:  # BadBusMessage, or anything else a stranger could send
            self._on_malformed(topic, exc)
            return
        if msg is None:  # another wire version
            return
        if msg.origin == self.node and msg.position is None:  # our own echo (history echoes)
            return
        try:
            self._deliver(msg)
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

    # Publishing ---------------------------------------------------------------------------

    # Publishing (publisher.py) --------------------------------------------------------------
    def _listening(self, topic: str) -> bool:
        """Whether Redis may count this node's pub/sub connection among `topic`'s
        subscribers right now."""
        ch = self._channels.get(self._name(topic)) if self._up else None
        return ch is not None and ch.maybe_counted

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
