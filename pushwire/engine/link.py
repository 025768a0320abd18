"""The cluster link: this node's standing with the shared store and the bus.

Its job: know whether the store answers (health), make every call to it through one wrapper
that turns an outage into "decide locally" (`call`) or a caller's error, send on the bus
(`publish`), keep the operation gate that lets a resync write a consistent snapshot, and run
the heartbeat: renew the lease, resync after an outage, reap dead nodes, send again what the
bus could not take.

Guarantees:
- After a failed call the node is marked dirty and unhealthy; the next heartbeat (every
  `heartbeat_interval`, every 0.5 s at most while unhealthy) resyncs it: bus subscriptions
  first (confirmed), then the state from the hub's snapshot, then the registration. What
  the resync or a reaping finds changed deployment-wide is handed to `announce` once.
- When the node learns that the store may no longer hold its registration (a call refused
  with `NotRegistered`, or the backend found a new primary: `Liveness.on_new_primary`), the
  heartbeat runs at once, not at its next tick; so does it every `URGENT_SPACING` while
  nodes are awaited after a lost registration (see below). Heartbeats start at least
  `URGENT_SPACING` apart (or `heartbeat_interval`, if shorter): a store that keeps refusing
  cannot make the node spin.
- A resync waits at most `node_timeout / 3` for the bus subscriptions, so that the heartbeat
  keeps renewing the lease while only the bus is down (bus and state apart).
- A resync runs while no operation is half done: `operation()` waits while one runs, and
  the resync waits (up to 5 s) for running operations to finish. Operations do not nest.
- A node reaps others only after it has been in touch with the store for a whole
  `node_timeout` (a node that was cut off sees every lease run out).
- After this node lost its registration, strict publishes raise `Resyncing` until the nodes
  alive before are back or dead (`node_timeout` at most).
- When the bus may have dropped messages for this node (`Broker.start`'s `lost`), the node
  is `deaf` until the next resync has made its bus subscriptions again: not ready, and the
  engine has closed its sockets (4200) and refuses new ones (4100) meanwhile.
- Announcements (member and watchlist changes) the bus could not take are kept (at most
  `REDO_LIMIT`) and sent again at the first heartbeat with no node awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..aio import cancel_and_wait
from ..cluster.base import (
    NODES_TOPIC,
    AppSnapshot,
    Broker,
    BusKind,
    BusMessage,
    Changes,
    ClusterState,
    Liveness,
    NotRegistered,
    PartialDelivery,
    Unavailable,
)
from ..config import ClusterConfig
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol.history import HistoryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")
REDO_LIMIT = 10_000  # announcements kept to publish again after an outage
UNHEALTHY_INTERVAL = 0.5  # seconds between heartbeats at most while the store does not answer
URGENT_SPACING = 0.2  # seconds between heartbeats at least, however urgent


class Resyncing(PartialDelivery):
    """Not published at all: the cluster waits for nodes to come back after its shared state
    was lost."""


class ClusterLink:
    def __init__(
        self,
        cluster: ClusterConfig,
        broker: Broker,
        state: ClusterState,
        liveness: Liveness,
        snapshot: Callable[[], dict[str, AppSnapshot]],
        announce: Callable[[Changes], Awaitable[None]],
        monitor: TrafficMonitor,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.broker = broker
        self.state = state
        self.liveness = liveness
        self.snapshot = snapshot  # this node's local truth, as the state records it
        self.announce = announce  # deployment-wide changes a resync or reaping found
        self.monitor = monitor
        self.metrics = metrics
        self.clock = clock
        self.node = broker.node
        self.interval = cluster.heartbeat_interval
        self.node_timeout = cluster.node_timeout
        self.healthy = True  # the shared store answered the last time it was asked
        self.dirty = False  # a decision was taken locally: resync when the store is back
        # the bus may have dropped messages for this node (a silent connection given up):
        # its sockets were told to reconnect, and new ones are refused until it resubscribed
        self.deaf = False
        self.ops = 0  # operations in flight
        self.stopping = False
        self._unannounced: list[Changes] = []  # found by a resync, to tell once registered
        self._healthy_since = float("inf")  # reaping waits until this node is sure of itself
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._resyncing: asyncio.Event | None = None
        self._redo: list[tuple[str, BusMessage]] = []
        self._known: frozenset[str] = frozenset()  # nodes alive at the last heartbeat
        self._waiting: dict[str, float] = {}  # nodes expected back after the store lost state
        self._task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()  # the heartbeat loop's wait is to be computed again
        self._urgent = False  # ... and the next heartbeat is due now (spacing aside)
        self._last_beat = float("-inf")  # loop time the last heartbeat started
        liveness.on_new_primary(self.wake)

    # Lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Write this node's state and register (or mark it for the heartbeat to do), then
        start the heartbeat."""
        try:
            await self.state.resync(self.snapshot())
            await self.liveness.register()
            self._healthy_since = self.clock()
        except Unavailable as exc:
            self.unavailable("start", exc)
        self._task = asyncio.create_task(self._heartbeat_loop())

    async def stop_heartbeat(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def leave(self) -> None:
        """Remove this node's records (unregistering it: nothing more to say), let background
        work finish (2 s at most)."""
        self.stopping = True
        try:
            leftover = await self.state.reap(self.node)
            if leftover:
                log.warning("stop: removed state this node had not cleaned up: %s", leftover)
        except Unavailable as exc:
            log.warning("could not remove this node's state on stop: %s", exc)
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=2.0)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background; `leave` waits for it."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # Health ------------------------------------------------------------------------------
    def wake(self) -> None:
        """The store may no longer hold this node's registration (a new primary): heartbeat
        (and so resync) now rather than at the next tick, `URGENT_SPACING` after the last
        heartbeat at the earliest."""
        self._urgent = True
        self._wake.set()

    def unavailable(self, what: str, exc: Exception) -> None:
        """The store did not answer `what`: decide locally and resync later (at once when it
        answered that this node is not registered)."""
        self.dirty = True
        self._healthy_since = float("inf")
        if isinstance(exc, NotRegistered):
            self.wake()
        elif self.healthy:
            self._wake.set()  # the next heartbeat is due sooner while unhealthy
        if self.healthy and not self.stopping:
            self.healthy = False
            log.error(
                "shared state unreachable (%s: %s): serving local clients with local "
                "knowledge until it returns",
                what,
                exc,
            )

    @property
    def ready(self) -> bool:
        return self.healthy and self.broker.healthy and not self.deaf

    def bus_lost(self) -> None:
        """The bus may have dropped messages for this node: deaf until the next resync has
        made the bus subscriptions again (the heartbeat runs it: the node is dirty)."""
        self.deaf = self.dirty = True

    async def call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """One state call; None when the store cannot answer (decide locally)."""
        if not self.healthy:
            self.dirty = True
            return None
        try:
            return await fn(*args)
        except Unavailable as exc:
            self.unavailable(what, exc)
            return None

    async def publish(
        self,
        topic: str,
        bm: BusMessage,
        strict: bool = False,
        history: HistoryPolicy | None = None,
    ) -> None:
        """Send to the other nodes (with `history`: to every node, this one too, see Broker).
        `strict`: the caller reports success, so raise `Unavailable` unless every subscribed
        node is known to have it. Otherwise (an announcement) a failed send is kept and sent
        again after the resync."""
        try:
            if self._waiting:
                raise Resyncing(
                    "the cluster is resynchronising after losing its shared state (waiting "
                    f"for {len(self._waiting)} node(s) to come back)"
                )
            await self.broker.publish(topic, bm, history)
            self.metrics.bus_published += 1
        except Unavailable as exc:
            self.metrics.bus_publish_failures += 1
            if isinstance(exc, PartialDelivery):
                log.debug("publish to %s not confirmed: %s", topic, exc)  # a peer reconnects
            else:
                self.unavailable("publish", exc)
            if strict:
                raise
            if len(self._redo) < REDO_LIMIT and bm.kind in (BusKind.MEMBER, BusKind.WATCH):
                self._redo.append((topic, bm))

    # The operation gate ------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """One client action (its hub change and its state call together). A resync waits
        for running ones and holds new ones back, so its snapshot never contains a change
        whose state call is still to come (that call would count it twice). Operations do not
        nest: one that needs another's steps calls its inner function (`disconnect` calls
        `_unsubscribe`), so a task started inside an operation passes the gate like any."""
        while self._resyncing is not None:
            await self._resyncing.wait()
        self.ops += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self.ops -= 1
            if not self.ops:
                self._quiet.set()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """No client action runs meanwhile (a resync writes a consistent snapshot)."""
        gate = self._resyncing = asyncio.Event()
        try:
            try:
                async with asyncio.timeout(5.0):
                    await self._quiet.wait()
            except TimeoutError:
                self.dirty = True  # an operation hangs: write again next time
            yield
        finally:
            self._resyncing = None
            gate.set()

    # Heartbeat, resync, reaping ----------------------------------------------------------
    def _period(self) -> float:
        """Seconds from one heartbeat's start to the next one's."""
        period = self.interval if self.healthy else min(self.interval, UNHEALTHY_INTERVAL)
        return min(period, URGENT_SPACING) if self._urgent or self._waiting else period

    async def _next_beat(self) -> None:
        """Wait until the next heartbeat is due (`_period`, computed again at each wake)."""
        loop = asyncio.get_running_loop()
        while (left := self._last_beat + self._period() - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
        self._urgent = False
        self._last_beat = loop.time()

    async def _heartbeat_loop(self) -> None:
        self._last_beat = asyncio.get_running_loop().time()
        while True:
            await self._next_beat()
            try:
                await self.heartbeat()
            except Unavailable as exc:
                self.unavailable("heartbeat", exc)
            except Exception:
                log.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        beat = await self.liveness.beat()
        if not beat.registered or self.dirty or not self.healthy:
            await self.resync(lost=not beat.registered)
            beat = await self.liveness.beat()
        now = self.clock()
        if self._waiting:
            self._waiting = {
                n: t for n, t in self._waiting.items() if n not in beat.alive and t > now
            }
        self._known = beat.alive
        if self._redo and not self._waiting:  # announcements the bus could not take before
            redo, self._redo = self._redo, []
            for topic, bm in redo:
                await self.publish(topic, bm)
        # a node that was itself cut off sees every lease run out: it reaps others only once
        # it has been in touch with the store for a whole node_timeout
        sure = now - self._healthy_since >= self.node_timeout
        for dead in beat.dead if sure else ():
            if dead != self.node:
                changes = await self.state.reap(dead)
                if changes:
                    log.warning("node %s missed its lease: its state was removed", dead)
                await self.announce(changes)
        if self.monitor.cluster:
            self.spawn(self.publish(NODES_TOPIC, BusMessage(BusKind.TAP, tag="want")))

    async def resync(self, lost: bool) -> None:
        """Write this node's local truth again: bus subscriptions first (confirmed), then the
        state, then the registration; then announce what the deployment had lost."""
        self.metrics.resyncs["lost" if lost else "store_back"] += 1
        # bounded well within node_timeout: while the bus is down (the state up, when they
        # are apart) the heartbeat must go on renewing this node's lease, or the others reap
        # it (its clients still connected) and answer 2xx without it
        try:
            async with asyncio.timeout(self.node_timeout / 3):
                await self.broker.resubscribed()
        except TimeoutError:
            raise Unavailable("bus: not subscribed again yet") from None
        if self.deaf:
            log.warning("bus subscriptions made again: this node takes clients again")
            self.deaf = False
        async with self._exclusive():
            self._unannounced.append(await self.state.resync(self.snapshot()))
            await self.liveness.register()
            self.dirty = False
            if not self.healthy:
                log.warning("shared state is back: this node's state was written again")
                self._healthy_since = self.clock()
            self.healthy = True
        if lost:
            log.warning("this node was not registered (reaped, or the store lost its data)")
            self._healthy_since = self.clock()
            # nodes alive before must be back (or dead) before strict publishes succeed
            until = self.clock() + self.node_timeout
            self._waiting = {n: until for n in self._known if n != self.node}
        pending, self._unannounced = self._unannounced, []
        for changes in pending:  # what the bus cannot take yet goes out next beat
            await self.announce(changes)
