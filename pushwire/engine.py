"""The engine: the one decision path, the same for one node and for a cluster.

Every action a client or the REST API takes goes through here. The hub records it locally and
says what changed on this node; the engine asks the cluster state what it means for the
deployment (first/last member, occupied/vacated, online/offline, quota), then announces it
once: frames to local sockets, the same frames on the bus for the other nodes, happenings to
the webhooks. A single node is the case where the broker, state and liveness are the memory
backend; nothing here knows which backend it has.

Order rules that make it correct under races:
- A node subscribes to a channel's topic, confirmed, before it asks the state about a joining
  socket: whatever another node decides after that reaches this node. The joiner waits in the
  hub (held messages) until its `subscription_succeeded` is sent.
- On leave, the state is told first and the topic is dropped after.
- Membership frames carry the state's version; the hub drops stale ones.

When the state or the bus cannot be reached, decisions are taken with local knowledge, the
node is marked dirty, and the heartbeat resyncs it (bus first, then state, then registration)
once the store is back: after a Redis restart or after this node was paused and reaped.
Publishing for a caller that will be told "accepted" (REST, sendToUser) is strict: if the bus
cannot confirm delivery to every subscribed node, `Unavailable` reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from .aio import cancel_and_wait
from .apps.registry import AppChangeKind, AppChanges
from .cluster.base import (
    NODES_TOPIC,
    Broker,
    BusKind,
    BusMessage,
    Changes,
    ChannelStats,
    ClusterState,
    HistoryPage,
    HistoryPolicy,
    Joined,
    Left,
    Liveness,
    NotRegistered,
    PartialDelivery,
    Position,
    Unavailable,
    app_topic,
    channel_topic,
    user_topic,
)
from .config import App, Config
from .connection import Connection
from .happenings import Happening, HappeningSink
from .hub import Hub, WatchStatus
from .metrics import Metrics
from .monitor import TrafficMonitor
from .protocol import messages
from .protocol.channels import channel_type, server_to_user_id
from .protocol.errors import (
    AppDisabled,
    AppNotFound,
    ConnectionUnauthorized,
    OverConnectionQuota,
    PresenceLimit,
    PusherError,
)
from .protocol.frames import Outbound

log = logging.getLogger("pushwire.engine")
T = TypeVar("T")
InternalHandler = Callable[[dict[str, Any], str], Any]
REDO_LIMIT = 10_000  # announcements kept to publish again after an outage


class Resyncing(PartialDelivery):
    """Not published at all: the cluster waits for nodes to come back after its shared state
    was lost."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """A socket opted in to history positions on a channel it subscribes to. `since`: the
    last position it saw (recover what came after it), or None (nothing to recover)."""

    since: Position | None = None


class RateKind(enum.StrEnum):
    BACKEND_EVENTS = "backend_events"
    READ_REQUESTS = "read_requests"
    CLIENT_EVENTS = "client_events"


class CountThrottle:
    """Pusher's subscription_count rule, for the event and the webhook alike: on every change,
    but above 100 subscribers at most every 5 seconds per channel."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.sent: dict[tuple[str, str], float] = {}

    def allow(self, app_id: str, channel: str, count: int) -> bool:
        now = self.clock()
        key = (app_id, channel)
        if count > 100 and now - self.sent.get(key, float("-inf")) < 5.0:
            return False
        if len(self.sent) > 100_000:
            self.sent.clear()
        self.sent[key] = now
        return True


class Engine:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        broker: Broker,
        state: ClusterState,
        liveness: Liveness,
        sink: HappeningSink,
        monitor: TrafficMonitor,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.hub = hub
        self.broker = broker
        self.state = state
        self.liveness = liveness
        self.sink = sink
        self.monitor = monitor
        self.metrics = metrics
        self.clock = clock
        self.node = broker.node
        self.throttle = CountThrottle(clock)
        self.internal: dict[str, list[InternalHandler]] = {}
        self.healthy = True  # the shared store answered the last time it was asked
        self._dirty = False  # a decision was taken locally: resync when the store is back
        self._topics: set[str] = set()  # bus topics wanted (subscribing or subscribed)
        self._topic_ops: dict[str, asyncio.Future[None]] = {}  # each topic's last bus call
        self._unannounced: list[Changes] = []  # found by a resync, to tell once registered
        self._healthy_since = float("inf")  # reaping waits until this node is sure of itself
        self._local_rates: dict[str, int] = {}
        self._ops = 0  # state operations in flight
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._resyncing: asyncio.Event | None = None
        self._redo: list[tuple[str, BusMessage]] = []
        self._known: frozenset[str] = frozenset()  # nodes alive at the last heartbeat
        self._waiting: dict[str, float] = {}  # nodes expected back after the store lost state
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._bg: set[asyncio.Task[Any]] = set()
        c = config.cluster
        self.interval = c.heartbeat_interval
        self.node_timeout = c.node_timeout

    # Lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.broker.start(self._on_bus)
        await self._subscribe_topic(NODES_TOPIC)
        try:
            await self.state.resync(self.hub.snapshot())
            await self.liveness.register()
            self._healthy_since = self.clock()
        except Unavailable as exc:
            self._unavailable("start", exc)
        self._task = asyncio.create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        """Leave the deployment at once: our records go and their changes are announced
        (normally nothing is left: the server closed its sockets through the usual path)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        # sockets still open leave through the usual path, announced while registered
        try:
            async with asyncio.timeout(5.0):
                for conn in list(self.connections()):
                    conn.closed = True
                    await self.disconnect(conn)
        except TimeoutError:
            log.warning("stop: some connections were not removed in time")
        self._stopping = True
        try:
            leftover = await self.state.reap(self.node)  # unregisters: nothing more to say
            if leftover:
                log.warning("stop: removed state this node had not cleaned up: %s", leftover)
        except Unavailable as exc:
            log.warning("could not remove this node's state on stop: %s", exc)
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=2.0)
        await self.broker.stop()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # Health ------------------------------------------------------------------------------
    def _unavailable(self, what: str, exc: Exception) -> None:
        self._dirty = True
        self._healthy_since = float("inf")
        if self.healthy and not self._stopping:
            self.healthy = False
            log.error(
                "shared state unreachable (%s: %s): serving local clients with local "
                "knowledge until it returns",
                what,
                exc,
            )

    @property
    def ready(self) -> bool:
        return self.healthy and self.broker.healthy

    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """One state call; None when the store cannot answer (decide locally)."""
        if not self.healthy:
            self._dirty = True
            return None
        try:
            return await fn(*args)
        except Unavailable as exc:
            self._unavailable(what, exc)
            return None

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """One client action (its hub change and its state call together). A resync waits
        for running ones and holds new ones back, so its snapshot never contains a change
        whose state call is still to come (that call would count it twice). Operations do not
        nest: one that needs another's steps calls its inner function (`disconnect` calls
        `_unsubscribe`), so a task started inside an operation passes the gate like any."""
        while self._resyncing is not None:
            await self._resyncing.wait()
        self._ops += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._ops -= 1
            if not self._ops:
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
                self._dirty = True  # an operation hangs: write again next time
            yield
        finally:
            self._resyncing = None
            gate.set()

    # Heartbeat, resync, reaping ----------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval if self.healthy else min(self.interval, 0.5))
            try:
                await self.heartbeat()
            except Unavailable as exc:
                self._unavailable("heartbeat", exc)
            except Exception:
                log.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        beat = await self.liveness.beat()
        if not beat.registered or self._dirty or not self.healthy:
            await self._resync(lost=not beat.registered)
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
                await self._publish(topic, bm)
        # a node that was itself cut off sees every lease run out: it reaps others only once
        # it has been in touch with the store for a whole node_timeout
        sure = now - self._healthy_since >= self.node_timeout
        for dead in beat.dead if sure else ():
            if dead != self.node:
                changes = await self.state.reap(dead)
                if changes:
                    log.warning("node %s missed its lease: its state was removed", dead)
                await self._announce(changes)
        if self.monitor.cluster:
            self.spawn(self._publish(NODES_TOPIC, BusMessage(BusKind.TAP, tag="want")))

    async def _resync(self, lost: bool) -> None:
        """Write this node's local truth again: bus subscriptions first (confirmed), then the
        state, then the registration; then announce what the deployment had lost."""
        await self.broker.resubscribed()
        async with self._exclusive():
            self._unannounced.append(await self.state.resync(self.hub.snapshot()))
            await self.liveness.register()
            self._dirty = False
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
            await self._announce(changes)

    async def _announce(self, changes: Changes) -> None:
        """Announce deployment-wide transitions found by resync or reaping."""
        for app_id, uid in changes.online:
            app = self.config.app_by_id(app_id)
            if app is not None:
                await self._announce_status(app, uid, WatchStatus.ONLINE)
        for app_id, name in changes.occupied:
            app = self.config.app_by_id(app_id)
            if app is not None:
                self.sink.emit(app, Happening.CHANNEL_OCCUPIED, name)
        for app_id, name, uid, info, version in changes.added:
            app = self.config.app_by_id(app_id)
            if app is not None:
                msg = messages.member_added(name, uid, info)
                await self._announce_member(app, name, uid, version, msg, Happening.MEMBER_ADDED)
        for app_id, name, uid, version in changes.removed:
            app = self.config.app_by_id(app_id)
            if app is not None:
                msg = messages.member_removed(name, uid)
                await self._announce_member(
                    app, name, uid, version, msg, Happening.MEMBER_REMOVED
                )
        for app_id, name in changes.vacated:
            app = self.config.app_by_id(app_id)
            if app is not None:
                self.sink.emit(app, Happening.CHANNEL_VACATED, name)
        for app_id, uid in changes.offline:
            app = self.config.app_by_id(app_id)
            if app is not None:
                await self._announce_status(app, uid, WatchStatus.OFFLINE)

    # Bus ---------------------------------------------------------------------------------
    async def _subscribe_topic(self, topic: str) -> None:
        """Subscribe to `topic` once; every caller returns only once the broker confirmed it
        (a second joiner of a channel waits for the first one's subscription). Subscribes
        and unsubscribes of one topic reach the broker one after the other, in order, so a
        channel left and joined again at once ends subscribed."""
        if topic not in self._topics:
            self._topics.add(topic)
            self._chain(topic, self.broker.subscribe)
        await asyncio.shield(self._topic_ops[topic])

    async def _unsubscribe_topic(self, topic: str) -> None:
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
                self._dirty = True

        task = self._topic_ops[topic] = asyncio.ensure_future(run())
        return task

    async def _publish(
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
                self._unavailable("publish", exc)
            if strict:
                raise
            if len(self._redo) < REDO_LIMIT and bm.kind in (BusKind.MEMBER, BusKind.WATCH):
                self._redo.append((topic, bm))

    def _on_bus(self, m: BusMessage) -> None:
        """A message from another node: deliver it to this node's sockets."""
        self.metrics.bus_received += 1
        kind = m.kind
        if kind is BusKind.INTERNAL:
            try:
                payload = orjson.loads(m.payload)
            except orjson.JSONDecodeError:
                return
            if isinstance(payload, dict):
                self.spawn(self.run_internal(m.tag, payload, m.origin))
            return
        if kind is BusKind.TAP:
            if m.tag == "want":
                self.monitor.cluster_wanted_until = self.clock() + 3 * self.interval + 1
            else:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.monitor.deliver(orjson.loads(m.payload), remote=True)
            return
        app = self.config.app_by_id(m.app)
        if app is None:
            return
        if kind is BusKind.CHANNEL:
            self.hub.broadcast(app, m.channel, Outbound(m.payload), m.except_socket, m.position)
        elif kind is BusKind.MEMBER:
            self.hub.member_event(app, m.channel, m.user, m.version, Outbound(m.payload))
        elif kind is BusKind.USER:
            self.hub.send_to_user(app, m.user, Outbound(m.payload), m.except_socket)
        elif kind is BusKind.TERMINATE:
            self._terminate_local(app, m.user)
        elif kind is BusKind.WATCH:
            with contextlib.suppress(ValueError):
                self.hub.notify_watchers(app, m.user, WatchStatus(m.tag))

    # Connections -------------------------------------------------------------------------
    def connections(self) -> Iterable[Connection]:
        """This node's open connections."""
        return self.hub.connections()

    async def connect(self, conn: Connection) -> None:
        """Admit a connection; raises OverConnectionQuota past the app's (deployment) quota."""
        async with self._operation():
            app = conn.app
            limit = app.max_connections
            ok = await self._call("connect", self.state.connect, app.id, limit)
            if ok is None:
                ok = not limit or self.hub.connection_count(app) < limit
            if not ok:
                raise OverConnectionQuota(f"Application is over its connection quota ({limit})")
            self.hub.add_connection(conn)
            current = self.config.app_by_id(app.id)  # changed while we waited for the state?
            if current is None or not current.enabled:
                self.hub.remove_connection(conn)
                await self._call("disconnect", self.state.disconnect, app.id)
                if current is None:
                    raise AppNotFound("Application deleted")
                raise AppDisabled("Application disabled")
            if current is not app:
                conn.app = current

    async def disconnect(self, conn: Connection) -> list[str]:
        """Forget a closed connection; returns the channels it was in."""
        async with self._operation():
            channels = list(conn.channels)
            for name in channels:
                await self._unsubscribe(conn, name)
            await self._sign_out(conn)
            self.hub.remove_connection(conn)
            await self._call("disconnect", self.state.disconnect, conn.app.id)
            return channels

    # Channels ----------------------------------------------------------------------------
    async def subscribe(
        self,
        conn: Connection,
        name: str,
        member: tuple[str, Any] | None,
        recovery: Recovery | None = None,
    ) -> None:
        """Join `conn` to `name` and send its subscription_succeeded (with the presence
        snapshot, and the count where enabled), then what was published meanwhile.
        With `recovery`, the socket gets history positions: first the events it missed
        since its last position, then a subscription_succeeded that says where the channel
        is and whether it recovered (see `_recover`).
        Raises PresenceLimit when a new member would exceed the app's limit."""
        async with self._operation():
            await self._subscribe(conn, name, member, recovery)

    async def _subscribe(
        self,
        conn: Connection,
        name: str,
        member: tuple[str, Any] | None,
        recovery: Recovery | None,
    ) -> None:
        app = conn.app
        if name in conn.channels:  # subscribed already: answer again, change nothing
            await self._resend_succeeded(conn, name)
            return
        uid = member[0] if member is not None else None
        topic = channel_topic(app.id, name)
        self.hub.begin_subscribe(conn, name, uid)
        await self._subscribe_topic(topic)  # every joiner waits for the confirmation
        try:
            joined = await self._call(
                "subscribe", self.state.subscribe, app.id, name, member, app.max_presence_members
            )
            local = joined is None
            if joined is None:
                joined = self._local_join(conn, name, member)
        except PresenceLimit:
            if self.hub.unsubscribe(conn, name):
                await self._unsubscribe_topic(topic)
            raise
        ctype = channel_type(name)
        succeeded = (
            messages.presence_subscription_succeeded(name, joined.members)
            if ctype.presence and joined.members is not None
            else messages.subscription_succeeded(name)
        )
        top: Position | None = None
        if recovery is None:
            receipts = [succeeded]
        else:  # after the bus subscription: anything published later is held for it
            receipts, top = await self._recover(app, name, recovery, succeeded)
        if app.enable_subscription_count and not ctype.presence:
            receipts.append(messages.subscription_count(name, joined.count))
        self.hub.activate(
            conn,
            name,
            receipts,
            joined.version,
            member[1] if member else None,
            after=top,
            positioned=recovery is not None,
        )
        if self.monitor.active:
            for msg in receipts:
                self.monitor.out(conn, msg)
        if joined.occupied and not local:
            self.sink.emit(app, Happening.CHANNEL_OCCUPIED, name)
        if joined.member_added and member is not None:
            msg = messages.member_added(name, member[0], member[1])
            await self._announce_member(
                app, name, member[0], joined.version, msg, Happening.MEMBER_ADDED, local
            )
        await self._count_changed(app, name, joined.count, conn.socket_id, local)

    async def _recover(
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
                budget = self.config.server.max_pending_bytes // 2
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

    async def _resend_succeeded(self, conn: Connection, name: str) -> None:
        app = conn.app
        if channel_type(name).presence:
            members = await self.members(app, name)
            msg = messages.presence_subscription_succeeded(name, members)
        else:
            msg = messages.subscription_succeeded(name)
        self.monitor.reply(conn, msg)

    def _local_join(self, conn: Connection, name: str, member: tuple[str, Any] | None) -> Joined:
        """What a subscribe means when the shared state cannot be asked: local knowledge,
        told to this node's sockets only (version 0: it orders nothing). The other nodes and
        the webhooks learn the deployment-wide result from the resync."""
        ch = self.hub.channel(conn.app, name)
        assert ch is not None
        count = len(ch.subscribers) + 1
        if member is None:
            return Joined(count, count == 1, False)
        uid, info = member
        members = {u: m.user_info for u, m in ch.members.items()}
        new = uid not in members
        if new and len(members) >= conn.app.max_presence_members:
            raise PresenceLimit(f"Presence channel {name} is full")
        members[uid] = info
        return Joined(count, count == 1, new, 0, members)

    async def unsubscribe(self, conn: Connection, name: str) -> None:
        async with self._operation():
            await self._unsubscribe(conn, name)

    async def _unsubscribe(self, conn: Connection, name: str) -> None:
        if name not in conn.channels:
            return
        app = conn.app
        uid = conn.channels[name]
        last_local = self.hub.unsubscribe(conn, name)
        left = await self._call("unsubscribe", self.state.unsubscribe, app.id, name, uid)
        local = left is None
        if left is None:
            ch = self.hub.channel(app, name)
            count = 0 if ch is None else len(ch.subscribers)
            gone = uid is not None and (ch is None or uid not in ch.members)
            left = Left(count, last_local, gone, 0)
        # after the state, so a publish never expects us once we stop listening; and only if
        # no socket started joining meanwhile
        if last_local and self.hub.channel(app, name) is None:
            await self._unsubscribe_topic(channel_topic(app.id, name))
        if left.member_removed and uid is not None:
            msg = messages.member_removed(name, uid)
            await self._announce_member(
                app, name, uid, left.version, msg, Happening.MEMBER_REMOVED, local
            )
        if left.vacated and not local:
            self.sink.emit(app, Happening.CHANNEL_VACATED, name)
        await self._count_changed(app, name, left.count, None, local)

    async def _announce_member(
        self,
        app: App,
        name: str,
        uid: str,
        version: int,
        msg: Outbound,
        kind: Happening,
        local: bool = False,
    ) -> None:
        """A member joined or left: this node's sockets, the other nodes, the webhooks. A
        decision taken locally (store unreachable) reaches this node's sockets only."""
        self.hub.member_event(app, name, uid, version, msg)
        if local:
            return
        bm = BusMessage(
            BusKind.MEMBER, app.id, name, user=uid, version=version, payload=msg.payload
        )
        await self._publish(channel_topic(app.id, name), bm)
        self.sink.emit(app, kind, name, user_id=uid)

    async def _count_changed(
        self, app: App, name: str, count: int, joiner: str | None, local: bool = False
    ) -> None:
        """pusher_internal:subscription_count (opt-in) and the subscription_count webhook,
        for non-presence channels, under one throttle."""
        if channel_type(name).presence or server_to_user_id(name) is not None:
            return
        event = app.enable_subscription_count and count > 0
        hook = self.sink.wants(app, Happening.SUBSCRIPTION_COUNT) and not local
        if not (event or hook) or not self.throttle.allow(app.id, name, count):
            return
        if event:
            msg = messages.subscription_count(name, count)
            self.hub.broadcast(app, name, msg, joiner)
            if not local:
                bm = BusMessage(
                    BusKind.CHANNEL, app.id, name, except_socket=joiner, payload=msg.payload
                )
                await self._publish(channel_topic(app.id, name), bm)
        if hook:
            self.sink.emit(app, Happening.SUBSCRIPTION_COUNT, name, subscription_count=count)

    async def publish(
        self, app: App, channel: str, msg: Outbound, except_socket_id: str | None
    ) -> None:
        """Deliver to every subscriber of `channel` in the deployment; raises Unavailable when
        that cannot be confirmed (this node's subscribers have it already, or will: see
        below)."""
        topic = channel_topic(app.id, channel)
        bm = BusMessage(
            BusKind.CHANNEL, app.id, channel, except_socket=except_socket_id, payload=msg.payload
        )
        policy = app.history_policy(channel)
        if policy is None:
            self.hub.broadcast(app, channel, msg, except_socket_id)
            await self._publish(topic, bm, strict=True)
            return
        # A channel with history: this node's sockets get the event from the bus's echo, with
        # its position, in the order the store appended it (never ahead of an earlier event
        # another node published). When it is sure not to be appended (the store is known to
        # be unreachable, this node is not registered, the cluster resyncs), they get it now,
        # without a position: local knowledge, as for any decision the store cannot confirm.
        # Any other failure may have come after the store appended it (a lost reply): then
        # the echo delivers it, and a local copy would be a duplicate.
        if not self.ready:
            self.hub.broadcast(app, channel, msg, except_socket_id)
            self._dirty = True
            raise Unavailable("the shared store is unreachable: this node's sockets only")
        try:
            await self._publish(topic, bm, strict=True, history=policy)
        except (Resyncing, NotRegistered):
            self.hub.broadcast(app, channel, msg, except_socket_id)
            raise

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
            self._unavailable("history", exc)
            raise

    # Users -------------------------------------------------------------------------------
    async def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None:
        async with self._operation():
            app = conn.app
            if conn.user_id == user_id:  # signed in again as the same user: new data only
                conn.user_data = user_data
                return
            self.hub.sign_in(conn, user_id, user_data)
            await self._subscribe_topic(user_topic(app.id, user_id))
            if conn.watchlist and app.enable_watchlist_events:
                await self._subscribe_topic(app_topic(app.id))
            first = await self._call("sign-in", self.state.sign_in, app.id, user_id)
            local = first is None
            if first is None:
                first = len(self.hub.user_connections(app, user_id)) == 1
            if first:
                await self._announce_status(app, user_id, WatchStatus.ONLINE, local)

    async def sign_out(self, conn: Connection) -> None:
        async with self._operation():
            await self._sign_out(conn)

    async def _sign_out(self, conn: Connection) -> None:
        user_id = conn.user_id
        if user_id is None:
            return
        app = conn.app
        last_local = self.hub.sign_out(conn)
        last = await self._call("sign-out", self.state.sign_out, app.id, user_id)
        local = last is None
        if last is None:
            last = last_local
        if last_local and not self.hub.user_connections(app, user_id):
            await self._unsubscribe_topic(user_topic(app.id, user_id))
        if last:
            await self._announce_status(app, user_id, WatchStatus.OFFLINE, local)

    async def _announce_status(
        self, app: App, user_id: str, status: WatchStatus, local: bool = False
    ) -> None:
        """Watchlist events for a user who came online / went offline deployment-wide (or,
        decided locally, for this node's watchers only)."""
        if not app.enable_watchlist_events:
            return
        self.hub.notify_watchers(app, user_id, status)
        if not local:
            bm = BusMessage(BusKind.WATCH, app.id, user=user_id, tag=status.value)
            await self._publish(app_topic(app.id), bm)

    async def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> None:
        self.hub.send_to_user(app, user_id, msg, except_socket_id)
        bm = BusMessage(
            BusKind.USER, app.id, user=user_id, except_socket=except_socket_id, payload=msg.payload
        )
        await self._publish(user_topic(app.id, user_id), bm, strict=True)

    def _terminate_local(self, app: App, user_id: str) -> int:
        conns = self.hub.user_connections(app, user_id)
        err = ConnectionUnauthorized("Connection terminated by the app (terminate_connections)")
        for conn in conns:
            conn.send_error_and_close(err)
        return len(conns)

    async def terminate_user(self, app: App, user_id: str) -> int:
        """Close every connection signed in as `user_id`; returns how many were here."""
        n = self._terminate_local(app, user_id)
        bm = BusMessage(BusKind.TERMINATE, app.id, user=user_id)
        await self._publish(user_topic(app.id, user_id), bm, strict=True)
        return n

    # Figures (deployment-wide; this node's own when the store cannot answer) --------------
    async def channels(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        found = await self._call("channels", self.state.channels, app.id, prefix)
        if found is not None:
            return found
        return {
            name: self._local_stats(ch.name, len(ch.subscribers), len(ch.members))
            for name, ch in self.hub.state(app).channels.items()
            if name.startswith(prefix) and ch.subscribers
        }

    @staticmethod
    def _local_stats(name: str, subs: int, members: int) -> ChannelStats:
        return ChannelStats(subs, members if channel_type(name).presence else None)

    async def channel_stats(self, app: App, channel: str) -> ChannelStats | None:
        stats = await self._call("channel", self.state.channel_stats, app.id, channel)
        if stats is not None or self.healthy:
            return stats
        ch = self.hub.channel(app, channel)
        if ch is None or not ch.subscribers:
            return None
        return self._local_stats(channel, len(ch.subscribers), len(ch.members))

    async def members(self, app: App, channel: str) -> dict[str, Any]:
        found = await self._call("members", self.state.members, app.id, channel)
        if found is not None:
            return found
        ch = self.hub.channel(app, channel)
        return {} if ch is None else {u: m.user_info for u, m in sorted(ch.members.items())}

    async def connection_count(self, app: App) -> int:
        n = await self._call("connections", self.state.connection_count, app.id)
        return self.hub.connection_count(app) if n is None else n

    async def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]:
        found = await self._call("online", self.state.online_users, app.id, user_ids)
        if found is not None:
            return found
        users = self.hub.state(app).users
        return [u for u in user_ids if u in users]

    async def cache_set(self, app: App, channel: str, msg: Outbound) -> None:
        """Remember a cache channel's last event; raises Unavailable (the caller reports it)."""
        try:
            await self.state.cache_set(app.id, channel, msg.payload, app.cache_ttl)
        except Unavailable as exc:
            self._unavailable("cache", exc)
            raise

    async def cache_get(self, app: App, channel: str) -> tuple[Outbound, float] | None:
        found = await self._call("cache", self.state.cache_get, app.id, channel)
        return None if found is None else (Outbound(found[0]), found[1])

    async def claim_once(self, key: str, ttl: float) -> bool:
        won = await self._call("claim", self.state.claim_once, key, ttl)
        return True if won is None else won

    # Apps changed in the app store -------------------------------------------------------
    def apply_app_changes(self, changes: AppChanges) -> None:
        """What an app store change means for this node's open connections: a deleted app's
        sockets close with 4001, a disabled one's with 4003 (clients do not reconnect), and
        a changed app's settings apply to its sockets at once (limits, client events...)."""
        for kind, app in changes.changed:
            st = self.hub.apps.get(app.id)
            if st is None:
                continue
            err: PusherError | None = None
            if kind is AppChangeKind.DELETED:
                err = AppNotFound("Application deleted")
            elif not app.enabled:
                err = AppDisabled("Application disabled")
            if err is not None:
                for conn in list(st.connections.values()):
                    conn.send_error_and_close(err)
                continue
            st.app = app
            for conn in st.connections.values():
                conn.app = app

    # Rate limits ---------------------------------------------------------------------------
    async def rate_limited(self, app: App, kind: RateKind, n: int, limit: float) -> float:
        """0 while `kind` stays within `limit` per second for the app, deployment-wide (one
        counter per second in the shared state; this node's own count while it cannot be
        reached); otherwise the seconds until the window ends (a Retry-After)."""
        if limit <= 0:
            return 0.0
        now = time.time()  # the wall clock: every node must name the same window
        window = int(now)
        key = f"{kind.value}:{app.id}:{window}"
        total = await self._call("rate", self.state.hit, key, n, 2.0)
        if total is None:
            total = self._local_rates.get(key, 0) + n
            if len(self._local_rates) > 10_000:
                self._local_rates.clear()
            self._local_rates[key] = total
        if total <= limit:
            return 0.0
        self.metrics.rate_limited[kind.value] += 1
        return max(0.001, float(window + 1 - now))

    # Extensions' internal messages -------------------------------------------------------
    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        """Run the handlers of internal message `kind` on every node (this one first)."""
        body = orjson.dumps(payload)
        await self.run_internal(kind, orjson.loads(body), self.node)
        await self._publish(NODES_TOPIC, BusMessage(BusKind.INTERNAL, tag=kind, payload=body))

    async def run_internal(self, kind: str, payload: dict[str, Any], origin: str) -> None:
        for fn in self.internal.get(kind, []):
            try:
                result = fn(payload, origin)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("internal message handler for %r failed", kind)
