"""`Listener`: one dedicated pub/sub connection of the bus and the channels subscribed on it.

`RedisBroker` has one (the server's, plain SUBSCRIBE); the Redis Cluster broker has one per
shard primary (sharded SSUBSCRIBE: `SHARDED`). A listener is one task that reads every reply
on its connection: messages, and the confirmations Redis sends for every (S)SUBSCRIBE and
(S)UNSUBSCRIBE, one per channel and in order. Per channel it counts what it sent on the
current connection and what Redis confirmed (`Sub`), so a caller can wait until Redis has
confirmed a subscription that no later unsubscribe can undo (`confirm`). On a lost connection
(an error) it reconnects with capped backoff (`backoff_min` doubling to `backoff_max`) and
subscribes again every channel its owner still wants; meanwhile it is not `up`. `hurry()`
(someone waits for it: a resync) cuts the current wait short, to `backoff_min` after the last
attempt.

Silence: the listener pings the connection when it is idle. Unanswered past `ping_timeout`,
the connection is not healthy but is kept: a network cut that heals lets TCP deliver what
Redis sent meanwhile (late, nothing lost). Unanswered past `silence_limit`, it is given up,
and with it whatever Redis sent on it since: `on_lost` is called so that the engine does not
leave its sockets silently deaf.

Sharded pub/sub only: a channel whose slot the server does not own is answered with MOVED
(a stale slot map), and a server that gives a slot away (a migration finished) unsubscribes
its clients from that slot's channels (an `sunsubscribe` nobody asked for); both are handed
to `on_moved`, which routes the channels again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from ...aio import cancel_and_wait
from .clients import failure

log = logging.getLogger("pushwire.cluster.redis")


@dataclass(slots=True)
class Sub:
    """One channel on a listener's current connection."""

    last_sub: bool = False  # the last command sent for it was a subscribe
    subs: int = 0  # subscribes sent, not confirmed yet
    unsubs: int = 0  # unsubscribes sent, not confirmed yet
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


@dataclass(frozen=True, slots=True)
class Dialect:
    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes
    sharded: bool


PLAIN = Dialect("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe", False)
SHARDED = Dialect("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe", True)


class Timing(Protocol):
    """The broker's settings a listener reads (at each use: tests and the backend set them)."""

    ping_interval: float
    ping_timeout: float
    silence_limit: float
    backoff_min: float
    backoff_max: float
    chunk: int


def follow_node_timeout(timing: Timing, node_timeout: float) -> None:
    """A silent bus connection is given up (and its sockets told) before this node's lease
    runs out, i.e. before other nodes stop counting on its subscriptions: from the cut,
    within ping_interval + silence_limit + ping_interval (5 s at node_timeout 6)."""
    timing.ping_interval = min(1.0, node_timeout / 6)
    timing.ping_timeout = node_timeout / 4
    timing.silence_limit = node_timeout / 2


class Wakeups:
    """Futures woken when a channel's state changes (key None: woken by any change)."""

    def __init__(self) -> None:
        self._waiters: dict[bytes | None, list[asyncio.Future[None]]] = {}

    async def wait(self, key: bytes | None) -> None:
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

    def wake(self, key: bytes | None = None) -> None:
        """Wake the waiters of `key` and those of any change; None: everyone."""
        for k in list(self._waiters) if key is None else (key, None):
            for fut in self._waiters.pop(k, ()):
                if not fut.done():
                    fut.set_result(None)


class SubscribeLog:
    """When a subscribe to each channel was last sent by one of a broker's listeners, as a
    number that grows with every subscribe sent (`sent`). A publish tells its script whether
    this node's own connection may be among the channel's subscribers (`Listener.may_count`);
    a subscribe sent after that may still be counted by Redis before the script runs (it
    waits for its connection, or behind a busy or paused server): `since` tells the
    publisher, which then does not vouch for the delivery."""

    LIMIT = 100_000  # channels remembered at most (past it, all are forgotten)

    def __init__(self) -> None:
        self.sent = 0
        self._last: dict[bytes, int] = {}  # channel -> `sent` when its last subscribe went
        self._floor = 0  # the forgotten channels' last subscribes went at `sent` <= this

    def note(self, names: Iterable[bytes]) -> None:
        """Subscribes to `names` are sent now."""
        self.sent += 1
        if len(self._last) >= self.LIMIT:
            self._last.clear()
            self._floor = self.sent - 1
        for name in names:
            self._last[name] = self.sent

    def since(self, name: bytes, mark: int) -> bool:
        """Whether a subscribe to `name` may have been sent since `sent` was `mark`."""
        return self._last.get(name, self._floor) > mark


class Silent(RedisConnectionError):
    """The pub/sub connection did not answer within `silence_limit`: given up."""


def _nothing() -> None:
    pass


class Listener:
    def __init__(
        self,
        label: str,
        connect: Callable[[], AbstractConnection],
        wanted: Callable[[], list[bytes]],
        on_message: Callable[[bytes, bytes], None],
        timing: Timing,
        wakeups: Wakeups,
        subscribes: SubscribeLog,
        dialect: Dialect = PLAIN,
        on_lost: Callable[[], None] = _nothing,
        on_moved: Callable[[list[bytes]], None] | None = None,
        on_down: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`connect()` makes a new (unconnected) connection; `wanted()`: the channels this
        listener must hold (subscribed again on each new connection); `subscribes`: told of
        every subscribe before it is sent (shared by the broker's listeners); `on_down`:
        awaited after each lost connection, before the next attempt (the cluster routes
        again)."""
        self.label = label
        self.dialect = dialect
        self.channels: dict[bytes, Sub] = {}  # of the current connection
        self.losses = 0  # connections given up while silent (see silence_limit)
        self._connect = connect
        self._wanted = wanted
        self._on_message = on_message
        self._timing = timing
        self._wakeups = wakeups
        self._subscribes = subscribes
        self._on_lost = on_lost
        self._on_moved = on_moved
        self._on_down = on_down
        self._conn: AbstractConnection | None = None
        self._up = False
        self._silent = False  # the connection has not answered a PING for ping_timeout
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._down_logged = False
        self._hurried = asyncio.Event()

    @property
    def up(self) -> bool:
        return self._up

    @property
    def healthy(self) -> bool:
        return self._up and not self._silent

    def may_count(self, name: bytes) -> bool:
        """Whether Redis may count this listener's connection among `name`'s subscribers
        right now: also while the subscribes of a new connection are still being sent (the
        listener is not `up` yet, but Redis may have run them)."""
        sub = self.channels.get(name)
        return sub is not None and sub.maybe_counted

    def hurry(self) -> None:
        """Down: try to connect again now (`backoff_min` after the last attempt at the
        earliest)."""
        self._hurried.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"pushwire-bus {self.label}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)  # a cancel can be lost in redis-py's read timeout
        if self._conn is not None:  # the task never ran
            await self._detach(self._conn)

    def _groups(self, names: Iterable[bytes]) -> list[list[bytes]]:
        """`names` in commands of at most `chunk` channels (sharded: of one slot each)."""
        by_slot: dict[int, list[bytes]] = {}
        for name in names:
            by_slot.setdefault(key_slot(name) if self.dialect.sharded else 0, []).append(name)
        n = self._timing.chunk
        return [group[i : i + n] for group in by_slot.values() for i in range(0, len(group), n)]

    async def send(self, command: str, names: list[bytes]) -> bool:
        """Send a (un)subscribe or PING on the current connection. False when it is down (the
        listener then reconnects and subscribes every wanted channel)."""
        async with self._send_lock:
            conn = self._conn
            if conn is None or not self._up or not conn.is_connected:
                return False
            if command == self.dialect.subscribe:
                self._subscribes.note(names)
            for name in names:
                sub = self.channels.get(name)
                if sub is None:
                    sub = self.channels[name] = Sub()
                if command == self.dialect.subscribe:
                    sub.last_sub = True
                    sub.subs += 1
                elif command == self.dialect.unsubscribe:
                    sub.last_sub = False
                    sub.unsubs += 1
            try:
                for group in self._groups(names) if names else [[]]:
                    await conn.send_command(command, *group, check_health=False)
            except (RedisError, OSError) as exc:
                log.debug("bus %s: %s failed: %s", self.label, command, exc)
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)  # the listener sees it and reconnects
                return False
            return True

    # The connection ------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = self._timing.backoff_min
        while not self._stopping:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await self._attach(conn)
                if self._down_logged:
                    log.warning("bus connection of %s restored", self.label)
                    self._down_logged = False
                backoff = self._timing.backoff_min
                await self._listen(conn)
            except Silent as exc:
                self.losses += 1
                log.error(
                    "bus connection of %s silent for %.1f s: given up, its messages "
                    "meanwhile may be lost (%s)",
                    self.label,
                    self._timing.silence_limit,
                    exc,
                )
                self._down_logged = True
                try:
                    self._on_lost()
                except Exception:
                    log.exception("bus: the lost-messages handler failed")
            except (RedisError, OSError) as exc:
                if not self._down_logged:
                    log.error(
                        "bus connection of %s lost (%s): reconnecting", self.label, failure(exc)
                    )
                    self._down_logged = True
            except Exception:
                log.exception("bus listener of %s failed: reconnecting", self.label)
            finally:
                await self._detach(conn)
            if self._stopping:
                break
            if self._on_down is not None:
                try:
                    await self._on_down()
                except Exception as exc:
                    log.debug("bus %s: routing again failed: %s", self.label, exc)
            await self._pause(backoff)
            backoff = min(backoff * 2, self._timing.backoff_max)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` before the next attempt, or `backoff_min` if hurried meanwhile."""
        self._hurried.clear()
        shortest = min(seconds, self._timing.backoff_min)
        await asyncio.sleep(shortest)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds - shortest):
                await self._hurried.wait()

    async def _attach(self, conn: AbstractConnection) -> None:
        async with self._send_lock:
            self._conn = conn
            self.channels = {}
            names = self._wanted()
            for name in names:
                self.channels[name] = Sub(last_sub=True, subs=1)
            self._subscribes.note(names)
            for group in self._groups(names):
                await conn.send_command(self.dialect.subscribe, *group, check_health=False)
            self._up = True
        self._wakeups.wake()

    async def _detach(self, conn: AbstractConnection) -> None:
        if self._conn is conn:
            self._conn = None
            self._up = False
            self._silent = False
            self.channels = {}
            self._wakeups.wake()
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def _listen(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        pinged: float | None = None
        timing = self._timing
        while not self._stopping:
            try:
                # push_request: should the connection speak RESP3, pub/sub replies are push
                # messages, which the parser would otherwise skip
                reply = await conn.read_response(timeout=timing.ping_interval, push_request=True)
            except (MovedError, AskError) as exc:
                self._on_redirect(exc)
                continue
            except ResponseError as exc:
                log.warning("bus %s: Redis refused a command: %s", self.label, exc)
                continue
            now = loop.time()
            if reply is None:  # nothing within ping_interval
                if pinged is not None:
                    # A silent connection is kept, not dropped: TCP delivers what was sent
                    # once the path is back (a short cut costs latency, nothing else). Only
                    # past silence_limit is it given up, and with it what it still owed.
                    if now - pinged > timing.silence_limit:
                        raise Silent("no answer to PING")
                    if now - pinged > timing.ping_timeout and not self._silent:
                        self._silent = True
                        log.warning("bus connection of %s does not answer", self.label)
                elif now - last >= timing.ping_interval:
                    pinged = now
                    await self.send("PING", [])
                continue
            last, pinged = now, None
            if self._silent:
                self._silent = False
                log.warning("bus connection of %s answers again", self.label)
            self._on_reply(reply)

    def _on_reply(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind, d = reply[0], self.dialect
        if kind == d.message and len(reply) >= 3:
            self._on_message(reply[1], reply[2])
        elif kind == d.subscribed:
            sub = self.channels.get(reply[1])
            if sub is not None:
                sub.subs = max(0, sub.subs - 1)
                sub.active = True
                self._wakeups.wake(reply[1])
        elif kind == d.unsubscribed:
            name = reply[1]
            sub = self.channels.get(name)
            if sub is None:
                return
            moved = d.sharded and sub.unsubs == 0  # not asked for: the slot went elsewhere
            sub.unsubs = max(0, sub.unsubs - 1)
            sub.active = False
            if moved:
                sub.last_sub, sub.subs = False, 0
            if sub.idle:
                del self.channels[name]
            self._wakeups.wake(name)
            if moved and self._on_moved is not None:
                self._on_moved([name])

    def _on_redirect(self, exc: MovedError | AskError) -> None:
        """A subscribe or unsubscribe answered with MOVED / ASK: this server does not own
        the slot (our slot map is stale, or the slot left). Nothing of that slot is in
        effect here; its channels are handed back for routing."""
        names = [
            n
            for n, s in self.channels.items()
            if (s.subs or s.unsubs) and key_slot(n) == exc.slot_id
        ]
        moved = [n for n in names if self.channels[n].subs]  # a subscribe was refused
        for name in names:
            del self.channels[name]
            self._wakeups.wake(name)
        if moved and self._on_moved is not None:
            self._on_moved(moved)


async def confirm(
    names: Callable[[], Iterable[bytes]],
    route: Callable[[bytes], Listener | None],
    wakeups: Wakeups,
    key: bytes | None,
) -> None:
    """Return once every channel in `names()` is confirmed on the listener `route` gives it,
    sending a subscribe where none is in flight; meanwhile wait for changes (of `key`, or of
    anything when None). Unbounded: the caller sets the timeout."""
    while True:
        unsent: dict[Listener, list[bytes]] = {}
        missing = False
        for name in names():
            lis = route(name)
            if lis is None or not lis.up:
                missing = True
                continue
            sub = lis.channels.get(name)
            if sub is not None and sub.confirmed:
                continue
            missing = True
            if sub is None or not sub.last_sub:
                unsent.setdefault(lis, []).append(name)
        if not missing:
            return
        sent = False
        for lis, batch in unsent.items():
            sent = await lis.send(lis.dialect.subscribe, batch) or sent
        if not sent:
            await wakeups.wait(key)
