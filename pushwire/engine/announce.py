"""Announcements: what the engine decided, told once to everyone concerned: this node's
sockets (through the hub), the other nodes (on the bus) and the webhooks.

Guarantees: a decision taken with local knowledge only (`local`: the store could not be
asked) reaches this node's sockets only, never the bus or the webhooks (the resync tells the
deployment later, through `changes`). Bus sends here are announcements: a failed one is kept
by the link and sent again after the resync (member and watchlist changes). The
subscription_count event and webhook share one throttle (Pusher's rule, `CountThrottle`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..apps.model import App
from ..cluster.base import BusKind, BusMessage, Changes, app_topic, channel_topic
from ..happenings import Happening, HappeningSink
from ..hub import Hub, WatchStatus
from ..protocol import messages
from ..protocol.channels import channel_type, server_to_user_id
from ..protocol.frames import Outbound
from .rates import CountThrottle


class Announcer:
    def __init__(
        self,
        hub: Hub,
        publish: Callable[[str, BusMessage], Awaitable[None]],
        sink: HappeningSink,
        app_by_id: Callable[[str], App | None],
        clock: Callable[[], float],
    ) -> None:
        self.hub = hub
        self.publish = publish  # the link's: announcements are kept and sent again
        self.sink = sink
        self.app_by_id = app_by_id
        self.throttle = CountThrottle(clock)

    async def changes(self, changes: Changes) -> None:
        """Announce deployment-wide transitions found by resync or reaping."""
        for app_id, uid in changes.online:
            app = self.app_by_id(app_id)
            if app is not None:
                await self.status(app, uid, WatchStatus.ONLINE)
        for app_id, name in changes.occupied:
            app = self.app_by_id(app_id)
            if app is not None:
                self.sink.emit(app, Happening.CHANNEL_OCCUPIED, name)
        for app_id, name, uid, info, version in changes.added:
            app = self.app_by_id(app_id)
            if app is not None:
                msg = messages.member_added(name, uid, info)
                await self.member(app, name, uid, version, msg, Happening.MEMBER_ADDED)
        for app_id, name, uid, version in changes.removed:
            app = self.app_by_id(app_id)
            if app is not None:
                msg = messages.member_removed(name, uid)
                await self.member(app, name, uid, version, msg, Happening.MEMBER_REMOVED)
        for app_id, name in changes.vacated:
            app = self.app_by_id(app_id)
            if app is not None:
                self.sink.emit(app, Happening.CHANNEL_VACATED, name)
        for app_id, uid in changes.offline:
            app = self.app_by_id(app_id)
            if app is not None:
                await self.status(app, uid, WatchStatus.OFFLINE)

    async def member(
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
        await self.publish(channel_topic(app.id, name), bm)
        self.sink.emit(app, kind, name, user_id=uid)

    async def count_changed(
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
                await self.publish(channel_topic(app.id, name), bm)
        if hook:
            self.sink.emit(app, Happening.SUBSCRIPTION_COUNT, name, subscription_count=count)

    async def status(
        self, app: App, user_id: str, status: WatchStatus, local: bool = False
    ) -> None:
        """Watchlist events for a user who came online / went offline deployment-wide (or,
        decided locally, for this node's watchers only)."""
        if not app.enable_watchlist_events:
            return
        self.hub.notify_watchers(app, user_id, status)
        if not local:
            bm = BusMessage(BusKind.WATCH, app.id, user=user_id, tag=status.value)
            await self.publish(app_topic(app.id), bm)
