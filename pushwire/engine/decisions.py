"""The engine's write path: every change a client or the REST API makes (connect, disconnect,
subscribe, unsubscribe, publish, sign-in/out, send_to_user, terminate, app changes) and its
announcement: frames to local sockets, the same frames on the bus for the other nodes,
happenings to the webhooks (see the package docstring for the whole engine).

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
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..apps.index import AppIndex
from ..apps.model import App
from ..apps.registry import AppChangeKind, AppChanges
from ..cluster.base import (
    NODES_TOPIC,
    Broker,
    BusKind,
    BusMessage,
    Changes,
    ClusterState,
    Joined,
    Left,
    Liveness,
    NotRegistered,
    Position,
    Unavailable,
    app_topic,
    channel_topic,
    user_topic,
)
from ..config import Config
from ..connection import Connection
from ..happenings import Happening, HappeningSink
from ..hub import Hub, WatchStatus
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol import messages
from ..protocol.channels import channel_type
from ..protocol.errors import (
    AppDisabled,
    AppNotFound,
    OverCapacity,
    OverConnectionQuota,
    PresenceLimit,
    PusherError,
    ReconnectNow,
)
from ..protocol.frames import Outbound
from .announce import Announcer
from .internal import InternalMessages
from .link import ClusterLink, Resyncing
from .queries import Queries
from .rates import RateLimiter
from .recovery import History, Recovery
from .routing import BusRouter, terminate_local

log = logging.getLogger(__name__)


class Engine:
    """The write path; the cluster link, bus routing, history, queries, rate limits and
    extension messages are parts it is built from (reached as attributes, and the queries
    and limits also as the engine's own methods, for its callers)."""

    def __init__(
        self,
        config: Config,
        apps: AppIndex,
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
        self.apps = apps
        self.app_by_id = apps.by_id
        self.hub = hub
        self.broker = broker
        self.state = state
        self.liveness = liveness
        self.sink = sink
        self.monitor = monitor
        self.metrics = metrics
        self.clock = clock
        self.node = broker.node
        self.link = link = ClusterLink(
            config.cluster,
            broker,
            state,
            liveness,
            hub.snapshot,
            self._announce_found,
            monitor,
            metrics,
            clock,
        )
        self.announce = Announcer(hub, link.publish, sink, self.app_by_id, clock)
        self.internal = InternalMessages(link)
        self.bus = BusRouter(
            broker, link, hub, self.app_by_id, self.internal, monitor, metrics, clock
        )
        self.recovery = History(broker, link, metrics, config.server.max_pending_bytes)
        self.queries = queries = Queries(state, hub, link)
        self.rates = RateLimiter(state, link, metrics)
        # the parts' entry points callers use, bound once (no extra coroutine per call)
        self.heartbeat = link.heartbeat
        self.publish_internal = self.internal.publish
        self.history = self.recovery.history
        self.rate_limited = self.rates.rate_limited
        self.channels = queries.channels
        self.channel_stats = queries.channel_stats
        self.members = queries.members
        self.connection_count = queries.connection_count
        self.online_users = queries.online_users
        self.cache_set = queries.cache_set
        self.cache_get = queries.cache_get
        self.claim_once = queries.claim_once

    # Lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.broker.start(self.bus.on_bus, self._bus_lost)
        await self.bus.subscribe_topic(NODES_TOPIC)
        await self.link.start()

    async def stop(self) -> None:
        """Leave the deployment at once: our records go and their changes are announced
        (normally nothing is left: the server closed its sockets through the usual path)."""
        await self.link.stop_heartbeat()
        # sockets still open leave through the usual path, announced while registered
        try:
            async with asyncio.timeout(5.0):
                for conn in list(self.connections()):
                    conn.closed = True
                    await self.disconnect(conn)
        except TimeoutError:
            log.warning("stop: some connections were not removed in time")
        await self.link.leave()
        await self.broker.stop()

    @property
    def ready(self) -> bool:
        return self.link.ready

    def _bus_lost(self) -> None:
        """The bus may have dropped messages for this node (its connection fell silent and
        was given up): its sockets would miss them without knowing. Tell every socket to
        reconnect (4200: elsewhere through a load balancer, and recover from history), and
        refuse new ones (4100) until the resync has made the bus subscriptions again."""
        self.link.bus_lost()
        self.metrics.backplane_lost += 1
        conns = list(self.connections())
        log.error(
            "this node may have missed bus messages: closing its %d socket(s) (4200) and "
            "refusing new ones until its bus subscriptions are made again",
            len(conns),
        )
        err = ReconnectNow("This node lost messages from its backplane: reconnect")
        for conn in conns:
            conn.send_error_and_close(err)

    async def _announce_found(self, changes: Changes) -> None:
        """Deployment-wide changes a resync or a reaping found (the link reports them)."""
        await self.announce.changes(changes)

    # Connections -------------------------------------------------------------------------
    def connections(self) -> Iterable[Connection]:
        """This node's open connections."""
        return self.hub.connections()

    async def connect(self, conn: Connection) -> None:
        """Admit a connection; raises OverConnectionQuota past the app's (deployment) quota."""
        if self.link.deaf:
            raise OverCapacity(
                "This node lost its backplane: try again later (or another node)"
            )
        async with self.link.operation():
            app = conn.app
            limit = app.max_connections
            ok = await self.link.call("connect", self.state.connect, app.id, limit)
            if ok is None:
                ok = not limit or self.hub.connection_count(app) < limit
            if not ok:
                raise OverConnectionQuota(f"Application is over its connection quota ({limit})")
            self.hub.add_connection(conn)
            current = self.app_by_id(app.id)  # changed while we waited for the state?
            if current is None or not current.enabled:
                self.hub.remove_connection(conn)
                await self.link.call("disconnect", self.state.disconnect, app.id)
                if current is None:
                    raise AppNotFound("Application deleted")
                raise AppDisabled("Application disabled")
            if current is not app:
                conn.app = current

    async def disconnect(self, conn: Connection) -> list[str]:
        """Forget a closed connection; returns the channels it was in."""
        async with self.link.operation():
            channels = list(conn.channels)
            for name in channels:
                await self._unsubscribe(conn, name)
            await self._sign_out(conn)
            self.hub.remove_connection(conn)
            await self.link.call("disconnect", self.state.disconnect, conn.app.id)
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
        is and whether it recovered (see `History.recover`).
        Raises PresenceLimit when a new member would exceed the app's limit."""
        async with self.link.operation():
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
        await self.bus.subscribe_topic(topic)  # every joiner waits for the confirmation
        try:
            joined = await self.link.call(
                "subscribe", self.state.subscribe, app.id, name, member, app.max_presence_members
            )
            local = joined is None
            if joined is None:
                joined = self._local_join(conn, name, member)
        except PresenceLimit:
            if self.hub.unsubscribe(conn, name):
                await self.bus.unsubscribe_topic(topic)
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
            receipts, top = await self.recovery.recover(app, name, recovery, succeeded)
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
            await self.announce.member(
                app, name, member[0], joined.version, msg, Happening.MEMBER_ADDED, local
            )
        await self.announce.count_changed(app, name, joined.count, conn.socket_id, local)

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
        count = self.hub.subscriber_count(conn.app, name) + 1
        if member is None:
            return Joined(count, count == 1, False)
        uid, info = member
        members = self.hub.local_members(conn.app, name)
        new = uid not in members
        if new and len(members) >= conn.app.max_presence_members:
            raise PresenceLimit(f"Presence channel {name} is full")
        members[uid] = info
        return Joined(count, count == 1, new, 0, members)

    async def unsubscribe(self, conn: Connection, name: str) -> None:
        async with self.link.operation():
            await self._unsubscribe(conn, name)

    async def _unsubscribe(self, conn: Connection, name: str) -> None:
        if name not in conn.channels:
            return
        app = conn.app
        uid = conn.channels[name]
        last_local = self.hub.unsubscribe(conn, name)
        left = await self.link.call("unsubscribe", self.state.unsubscribe, app.id, name, uid)
        local = left is None
        if left is None:
            count = self.hub.subscriber_count(app, name)
            gone = uid is not None and not self.hub.has_member(app, name, uid)
            left = Left(count, last_local, gone, 0)
        # after the state, so a publish never expects us once we stop listening; and only if
        # no socket started joining meanwhile
        if last_local and not self.hub.has_channel(app, name):
            await self.bus.unsubscribe_topic(channel_topic(app.id, name))
        if left.member_removed and uid is not None:
            msg = messages.member_removed(name, uid)
            await self.announce.member(
                app, name, uid, left.version, msg, Happening.MEMBER_REMOVED, local
            )
        if left.vacated and not local:
            self.sink.emit(app, Happening.CHANNEL_VACATED, name)
        await self.announce.count_changed(app, name, left.count, None, local)

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
            await self.link.publish(topic, bm, strict=True)
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
            self.link.dirty = True
            raise Unavailable("the shared store is unreachable: this node's sockets only")
        try:
            await self.link.publish(topic, bm, strict=True, history=policy)
        except (Resyncing, NotRegistered):
            self.hub.broadcast(app, channel, msg, except_socket_id)
            raise

    # Users -------------------------------------------------------------------------------
    async def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None:
        async with self.link.operation():
            app = conn.app
            if conn.user_id == user_id:  # signed in again as the same user: new data only
                conn.user_data = user_data
                return
            self.hub.sign_in(conn, user_id, user_data)
            await self.bus.subscribe_topic(user_topic(app.id, user_id))
            if conn.watchlist and app.enable_watchlist_events:
                await self.bus.subscribe_topic(app_topic(app.id))
            first = await self.link.call("sign-in", self.state.sign_in, app.id, user_id)
            local = first is None
            if first is None:
                first = len(self.hub.user_connections(app, user_id)) == 1
            if first:
                await self.announce.status(app, user_id, WatchStatus.ONLINE, local)

    async def sign_out(self, conn: Connection) -> None:
        async with self.link.operation():
            await self._sign_out(conn)

    async def _sign_out(self, conn: Connection) -> None:
        user_id = conn.user_id
        if user_id is None:
            return
        app = conn.app
        last_local = self.hub.sign_out(conn)
        last = await self.link.call("sign-out", self.state.sign_out, app.id, user_id)
        local = last is None
        if last is None:
            last = last_local
        if last_local and not self.hub.user_connections(app, user_id):
            await self.bus.unsubscribe_topic(user_topic(app.id, user_id))
        if last:
            await self.announce.status(app, user_id, WatchStatus.OFFLINE, local)

    async def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> None:
        self.hub.send_to_user(app, user_id, msg, except_socket_id)
        bm = BusMessage(
            BusKind.USER, app.id, user=user_id, except_socket=except_socket_id, payload=msg.payload
        )
        await self.link.publish(user_topic(app.id, user_id), bm, strict=True)

    async def terminate_user(self, app: App, user_id: str) -> int:
        """Close every connection signed in as `user_id`; returns how many were here."""
        n = terminate_local(self.hub, app, user_id)
        bm = BusMessage(BusKind.TERMINATE, app.id, user=user_id)
        await self.link.publish(user_topic(app.id, user_id), bm, strict=True)
        return n

    # Apps changed in the app store -------------------------------------------------------
    def apply_app_changes(self, changes: AppChanges) -> None:
        """What an app store change means for this node's open connections: a deleted app's
        sockets close with 4001, a disabled one's with 4003 (clients do not reconnect), and
        a changed app's settings apply to its sockets at once (limits, client events...)."""
        for kind, app in changes.changed:
            err: PusherError | None = None
            if kind is AppChangeKind.DELETED:
                err = AppNotFound("Application deleted")
            elif not app.enabled:
                err = AppDisabled("Application disabled")
            if err is None:
                self.hub.replace_app(app)
                continue
            for conn in self.hub.app_connections(app.id):
                conn.send_error_and_close(err)
