"""This node's state: apps, connections, channels, presence members, signed-in users, caches.

Pure bookkeeping and local fan-out, no I/O: a broadcast hands one `Outbound` to each local
subscriber's `send`, which only queues it (the transport writes once per loop tick), so
nothing here awaits a recipient. The cluster adapter keeps a Hub for local delivery and adds
cluster-wide state on top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import App
from .connection import Connection
from .protocol import messages
from .protocol.channels import ChannelType, channel_type
from .protocol.errors import OverConnectionQuota, PresenceLimit
from .protocol.frames import Outbound


@dataclass(slots=True)
class Member:
    user_info: Any
    connections: int = 1


@dataclass(slots=True)
class Channel:
    name: str
    ctype: ChannelType
    subscribers: dict[str, Connection] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)  # presence channels only
    count_sent_at: float = float("-inf")  # last pusher_internal:subscription_count

    def presence_hash(self) -> dict[str, Any]:
        return {uid: m.user_info for uid, m in self.members.items()}


@dataclass(slots=True)
class CachedEvent:
    msg: Outbound
    expires_at: float


@dataclass
class AppState:
    app: App
    connections: dict[str, Connection] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    users: dict[str, dict[str, Connection]] = field(default_factory=dict)
    # watched user id -> sockets whose signed-in user has it on their watchlist
    watchers: dict[str, dict[str, Connection]] = field(default_factory=dict)
    cache: dict[str, CachedEvent] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    subscription_count: int
    user_count: int | None  # presence channels only


# Listener of hub happenings: (kind, app_id, channel, details). Kinds: "channel_occupied",
# "channel_vacated", "member_added", "member_removed". Used by webhooks and metrics.
Listener = Callable[[str, str, str, dict[str, Any]], None]


class Hub:
    """`cluster_presence=True`: a cluster adapter decides (cluster-wide) when a presence member
    joins or leaves and announces it; the hub then only keeps local bookkeeping."""

    def __init__(self, clock: Callable[[], float], cluster_presence: bool = False) -> None:
        self.clock = clock
        self.cluster_presence = cluster_presence
        self.apps: dict[str, AppState] = {}
        self.listeners: list[Listener] = []

    def state(self, app: App) -> AppState:
        st = self.apps.get(app.id)
        if st is None:
            st = self.apps[app.id] = AppState(app)
        return st

    def _emit(self, kind: str, app_id: str, channel: str, **details: Any) -> None:
        for listener in self.listeners:
            listener(kind, app_id, channel, details)

    # Connections -------------------------------------------------------------------------
    def add_connection(self, conn: Connection) -> None:
        st = self.state(conn.app)
        limit = conn.app.max_connections
        if limit and len(st.connections) >= limit:
            raise OverConnectionQuota(f"Application is over its connection quota ({limit})")
        st.connections[conn.socket_id] = conn

    def remove_connection(self, conn: Connection) -> None:
        st = self.state(conn.app)
        for name in list(conn.channels):
            self.unsubscribe(conn, name)
        if conn.user_id is not None:
            self._drop_user(st, conn)
        st.connections.pop(conn.socket_id, None)

    def connection_count(self, app: App) -> int:
        return len(self.state(app).connections)

    # Channels ----------------------------------------------------------------------------
    def subscribe(
        self, conn: Connection, name: str, member: tuple[str, Any] | None = None
    ) -> Channel:
        """Add `conn` to channel `name` (with its presence `member` on presence channels).

        Sends `member_added` to the others only on the user's first connection in the
        channel. Raises PresenceLimit when a new member would exceed the app's limit.
        """
        st = self.state(conn.app)
        ch = st.channels.get(name)
        if ch is not None and conn.socket_id in ch.subscribers:
            return ch
        if ch is None:
            ch = Channel(name, channel_type(name))
        if name not in st.channels:
            st.channels[name] = ch
            self._emit("channel_occupied", conn.app.id, name)
        user_id: str | None = None
        if member is not None:
            user_id, user_info = member
            m = ch.members.get(user_id)
            if m is None and self.cluster_presence:
                ch.members[user_id] = Member(user_info)  # the adapter announced it if new
            elif m is None:
                limit = conn.app.max_presence_members
                if len(ch.members) >= limit:
                    raise PresenceLimit(f"Presence channel {name} is full ({limit} members)")
                ch.members[user_id] = Member(user_info)
                self._fanout(ch, messages.member_added(name, user_id, user_info), None)
                self._emit("member_added", conn.app.id, name, user_id=user_id)
            else:
                m.connections += 1
        ch.subscribers[conn.socket_id] = conn
        conn.channels[name] = user_id
        self._subscription_count(conn.app, ch, conn.socket_id)
        return ch

    def _subscription_count(self, app: App, ch: Channel, joiner: str | None = None) -> None:
        """Opt-in `pusher_internal:subscription_count` for non-presence channels; above 100
        subscribers at most every 5 seconds, as Pusher throttles it. A joining socket is
        left out here: it gets the count after its subscription_succeeded (handler)."""
        if self.cluster_presence:  # the cluster adapter sends cluster-wide counts
            return
        if not app.enable_subscription_count or ch.ctype.presence or not ch.subscribers:
            return
        n = len(ch.subscribers)
        now = self.clock()
        if n > 100 and now - ch.count_sent_at < 5.0:
            return
        ch.count_sent_at = now
        self._fanout(ch, messages.subscription_count(ch.name, n), joiner)

    def unsubscribe(self, conn: Connection, name: str) -> bool:
        """Remove `conn` from `name`; `member_removed` goes out when the user's last one leaves."""
        if name not in conn.channels:
            return False
        user_id = conn.channels.pop(name)
        st = self.state(conn.app)
        ch = st.channels.get(name)
        if ch is None:
            return False
        ch.subscribers.pop(conn.socket_id, None)
        if user_id is not None:
            m = ch.members.get(user_id)
            if m is not None:
                m.connections -= 1
                if m.connections <= 0:
                    del ch.members[user_id]
                    if not self.cluster_presence:
                        self._fanout(ch, messages.member_removed(name, user_id), None)
                        self._emit("member_removed", conn.app.id, name, user_id=user_id)
        if not ch.subscribers:
            del st.channels[name]
            self._emit("channel_vacated", conn.app.id, name)
        else:
            self._subscription_count(conn.app, ch)
        return True

    def channel(self, app: App, name: str) -> Channel | None:
        return self.state(app).channels.get(name)

    def stats(self, ch: Channel) -> ChannelStats:
        return ChannelStats(
            subscription_count=len(ch.subscribers),
            user_count=len(ch.members) if ch.ctype.presence else None,
        )

    # Delivery ----------------------------------------------------------------------------
    @staticmethod
    def _fanout(ch: Channel, msg: Outbound, except_socket_id: str | None) -> int:
        n = 0
        for sid, conn in ch.subscribers.items():
            if sid != except_socket_id:
                conn.send(msg)
                n += 1
        return n

    def broadcast(self, app: App, name: str, msg: Outbound, except_socket_id: str | None) -> int:
        ch = self.state(app).channels.get(name)
        if ch is None:
            return 0
        return self._fanout(ch, msg, except_socket_id)

    # Users -------------------------------------------------------------------------------
    def sign_in(self, conn: Connection, user_id: str, user_data: str) -> None:
        st = self.state(conn.app)
        conn.user_id = user_id
        conn.user_data = user_data
        socks = st.users.setdefault(user_id, {})
        first = not socks
        socks[conn.socket_id] = conn
        for watched in conn.watchlist:
            st.watchers.setdefault(watched, {})[conn.socket_id] = conn
        if first and not self.cluster_presence:  # in a cluster the adapter decides
            self._notify_watchers(st, user_id, "online")

    def _drop_user(self, st: AppState, conn: Connection) -> None:
        assert conn.user_id is not None
        for watched in conn.watchlist:
            w = st.watchers.get(watched)
            if w is not None:
                w.pop(conn.socket_id, None)
                if not w:
                    del st.watchers[watched]
        socks = st.users.get(conn.user_id)
        if socks is not None:
            socks.pop(conn.socket_id, None)
            if not socks:
                del st.users[conn.user_id]
                if not self.cluster_presence:
                    self._notify_watchers(st, conn.user_id, "offline")

    def notify_watchers(self, app: App, user_id: str, status: str) -> None:
        self._notify_watchers(self.state(app), user_id, status)

    def _notify_watchers(self, st: AppState, user_id: str, status: str) -> None:
        """Watchlist events: a user came online (first socket) or went offline (last one)."""
        if not st.app.enable_watchlist_events:
            return
        watchers = st.watchers.get(user_id)
        if watchers:
            msg = messages.watchlist_events([{"name": status, "user_ids": [user_id]}])
            for conn in watchers.values():
                conn.send(msg)

    def user_connections(self, app: App, user_id: str) -> list[Connection]:
        return list(self.state(app).users.get(user_id, {}).values())

    def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> int:
        n = 0
        for sid, conn in self.state(app).users.get(user_id, {}).items():
            if sid != except_socket_id:
                conn.send(msg)
                n += 1
        return n

    def online_users(self, app: App, user_ids: tuple[str, ...]) -> list[str]:
        users = self.state(app).users
        return [u for u in user_ids if u in users]

    # Cache channels ----------------------------------------------------------------------
    def cache_set(self, app: App, name: str, msg: Outbound) -> None:
        self.state(app).cache[name] = CachedEvent(msg, self.clock() + app.cache_ttl)

    def cache_get(self, app: App, name: str) -> CachedEvent | None:
        cache = self.state(app).cache
        entry = cache.get(name)
        if entry is not None and entry.expires_at <= self.clock():
            del cache[name]
            return None
        return entry

    def expire_caches(self) -> None:
        now = self.clock()
        for st in self.apps.values():
            for name in [n for n, e in st.cache.items() if e.expires_at <= now]:
                del st.cache[name]
