"""This node's state: connections, channels, local presence members, signed-in users.

Pure bookkeeping and local fan-out, no I/O, the same on one node and in a cluster. Each
change returns what it changed locally (a channel's first or last local socket, a user's
first or last local socket); the engine decides what that means for the deployment. A
broadcast hands one `Outbound` to each local subscriber's `send`, which only queues it (the
transport writes once per loop tick), so nothing here awaits a recipient.

Joining sockets wait in `Channel.pending` while the engine asks the cluster state for their
snapshot: whatever is published to the channel meanwhile is kept for them and sent after
their `subscription_succeeded` (membership changes only if newer than their snapshot).
Membership frames carry a version; a node applies a user's changes in version order and
drops stale ones, so messages from different nodes cannot undo each other.

Channel history: a socket that opted in to positions on a channel (`Channel.positioned`) gets
each event that has a position as a frame of its own with `offset` and `epoch` added (and,
for an event it is left out of, `pushwire:position` with the position alone); the others get
the shared frame, byte for byte what they get without history.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .apps.model import App
from .cluster.base import AppSnapshot, ChannelStats, Position
from .connection import Connection
from .protocol import messages
from .protocol.channels import ChannelType, channel_type
from .protocol.errors import PusherError
from .protocol.frames import Outbound


class WatchStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


# (membership version or 0, message, socket to leave out, user the message is about,
#  the event's history position)
Buffered = tuple[int, Outbound, str | None, str | None, Position | None]


@dataclass(slots=True)
class Member:
    user_info: Any
    sockets: int = 1  # this node's sockets of the user in the channel


@dataclass(slots=True)
class Channel:
    name: str
    ctype: ChannelType
    subscribers: dict[str, Connection] = field(default_factory=dict)
    pending: dict[str, list[Buffered]] = field(default_factory=dict)  # joiners, see above
    members: dict[str, Member] = field(default_factory=dict)  # presence: local members
    since: dict[str, int] = field(default_factory=dict)  # presence: socket -> snapshot version
    versions: dict[str, int] = field(default_factory=dict)  # presence: user -> last applied
    positioned: set[str] | None = None  # sockets that get history positions (made on demand)
    # positioned socket -> the position its recovery ended at, until an event past it: an
    # event the store appended before the recovery read can reach this node after it
    floor: dict[str, Position] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.subscribers and not self.pending


@dataclass
class AppState:
    app: App
    connections: dict[str, Connection] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    users: dict[str, dict[str, Connection]] = field(default_factory=dict)
    # watched user id -> sockets whose signed-in user has it on their watchlist
    watchers: dict[str, dict[str, Connection]] = field(default_factory=dict)


def _stats(ch: Channel) -> ChannelStats:
    return ChannelStats(len(ch.subscribers), len(ch.members) if ch.ctype.presence else None)


class Hub:
    def __init__(self) -> None:
        self.apps: dict[str, AppState] = {}

    def state(self, app: App) -> AppState:
        """`app`'s state on this node, to read: an empty one, not kept, when it has none
        here (reading never creates an entry; only a connection does)."""
        st = self.apps.get(app.id)
        return AppState(app) if st is None else st

    def _entry(self, app: App) -> AppState:
        """`app`'s state on this node, created for a change that adds to it."""
        st = self.apps.get(app.id)
        if st is None:
            st = self.apps[app.id] = AppState(app)
        return st

    def connections(self) -> Iterable[Connection]:
        for st in list(self.apps.values()):
            yield from list(st.connections.values())

    # Connections -------------------------------------------------------------------------
    def add_connection(self, conn: Connection) -> None:
        self._entry(conn.app).connections[conn.socket_id] = conn

    def remove_connection(self, conn: Connection) -> None:
        """Forget a connection whose channels and sign-in were already left."""
        st = self.apps.get(conn.app.id)
        if st is not None:
            st.connections.pop(conn.socket_id, None)

    def connection_count(self, app: App) -> int:
        st = self.apps.get(app.id)
        return 0 if st is None else len(st.connections)

    # Channels ----------------------------------------------------------------------------
    def is_subscribed(self, conn: Connection, name: str) -> bool:
        return name in conn.channels

    def begin_subscribe(self, conn: Connection, name: str, user_id: str | None) -> bool:
        """Hold `conn` as a joiner of `name`; True when the channel is new on this node."""
        st = self._entry(conn.app)
        ch = st.channels.get(name)
        first = ch is None
        if ch is None:
            ch = st.channels[name] = Channel(name, channel_type(name))
        ch.pending[conn.socket_id] = []
        conn.channels[name] = user_id
        return first

    def activate(
        self,
        conn: Connection,
        name: str,
        receipts: list[Outbound],
        version: int = 0,
        user_info: Any = None,
        after: Position | None = None,
        positioned: bool = False,
    ) -> None:
        """The joiner's snapshot is known: send `receipts` (subscription_succeeded last),
        then what was published meanwhile, and make it a subscriber. `positioned`: the socket
        gets history positions; events at or before `after` (sent with the receipts, or older
        than the position its subscription_succeeded told it) are not sent again."""
        ch = self.channel(conn.app, name)
        if ch is None or conn.socket_id not in ch.pending:  # it left while it waited (stop)
            return
        held = ch.pending.pop(conn.socket_id)
        sid = conn.socket_id
        user_id = conn.channels.get(name)
        for msg in receipts:
            conn.send(msg)
        for v, msg, except_sid, about, pos in held:
            if v == 0:
                if pos is not None and positioned:
                    # at or before its recovery's end: sent already; another epoch: the one
                    # its recovery read replaced
                    if after is None or (pos.epoch == after.epoch and pos.offset > after.offset):
                        if except_sid == sid:
                            conn.send(messages.position_only(name, pos))
                        else:
                            conn.send(messages.positioned(msg, pos))
                elif except_sid != sid:
                    conn.send(msg)
            elif v > version and about != user_id:
                conn.send(msg)
        ch.subscribers[sid] = conn
        if positioned:
            if ch.positioned is None:
                ch.positioned = set()
            ch.positioned.add(sid)
            if after is not None:
                ch.floor[sid] = after
        if user_id is not None:
            ch.since[sid] = version
            m = ch.members.get(user_id)
            if m is None:
                ch.members[user_id] = Member(user_info)
            else:
                m.sockets += 1

    def unsubscribe(self, conn: Connection, name: str) -> bool:
        """Remove `conn` from `name` (joined or joining); True when no local socket is left."""
        user_id = conn.channels.pop(name, None)
        st = self.apps.get(conn.app.id)
        ch = None if st is None else st.channels.get(name)
        if st is None or ch is None:
            return False
        sid = conn.socket_id
        was_subscriber = ch.subscribers.pop(sid, None) is not None
        ch.pending.pop(sid, None)
        ch.since.pop(sid, None)
        if ch.positioned is not None:
            ch.positioned.discard(sid)
            ch.floor.pop(sid, None)
        if user_id is not None and was_subscriber:
            m = ch.members.get(user_id)
            if m is not None:
                m.sockets -= 1
                if m.sockets <= 0:
                    del ch.members[user_id]
        if ch.empty:
            del st.channels[name]
            return True
        return False

    def channel(self, app: App, name: str) -> Channel | None:
        st = self.apps.get(app.id)
        return None if st is None else st.channels.get(name)

    # Delivery ----------------------------------------------------------------------------
    def broadcast(
        self,
        app: App,
        name: str,
        msg: Outbound,
        except_socket_id: str | None,
        position: Position | None = None,
    ) -> int:
        st = self.apps.get(app.id)
        ch = None if st is None else st.channels.get(name)
        if ch is None:
            return 0
        n = 0
        positioned = ch.positioned
        if position is not None and positioned:
            ext = messages.positioned(msg, position)
            floor = ch.floor
            for sid, conn in ch.subscribers.items():
                if floor and sid in floor:
                    f = floor[sid]
                    if f.epoch == position.epoch and position.offset <= f.offset:
                        continue  # sent with its recovery already
                    del floor[sid]  # delivery is in store order: nothing older comes now
                if sid != except_socket_id:
                    conn.send(ext if sid in positioned else msg)
                    n += 1
                elif sid in positioned:  # it must not get the event back when it recovers
                    conn.send(messages.position_only(name, position))
        else:  # the hot loop: one shared frame, nothing per socket but the send
            for sid, conn in ch.subscribers.items():
                if sid != except_socket_id:
                    conn.send(msg)
                    n += 1
        if ch.pending:
            for held in ch.pending.values():
                held.append((0, msg, except_socket_id, None, position))
        return n

    def member_event(self, app: App, name: str, user_id: str, version: int, msg: Outbound) -> None:
        """A presence membership change of `user_id` at `version`: sent to the sockets whose
        snapshot is older, never to the user's own sockets; a stale version is dropped.
        Version 0 is a decision taken with local knowledge only: sent, ordering nothing."""
        ch = self.channel(app, name)
        if ch is None:
            return
        if version:
            if version <= ch.versions.get(user_id, 0):
                return
            ch.versions[user_id] = version
            if len(ch.versions) > 2 * len(ch.members) + 1000:
                self._prune_versions(ch)
        since = ch.since
        for sid, conn in ch.subscribers.items():
            if since.get(sid, 0) < version and conn.channels.get(name) != user_id:
                conn.send(msg)
        for held in ch.pending.values():
            held.append((version, msg, None, user_id, None))

    @staticmethod
    def _prune_versions(ch: Channel) -> None:
        """Forget versions no socket can receive anything older than: every socket's snapshot
        is at least as new, so an older message is dropped by `since` anyway."""
        floor = min(ch.since.values(), default=0)
        ch.versions = {u: v for u, v in ch.versions.items() if v > floor}

    # Users -------------------------------------------------------------------------------
    def sign_in(self, conn: Connection, user_id: str, user_data: str) -> bool:
        """True when this is the user's first socket on this node."""
        st = self._entry(conn.app)
        conn.user_id = user_id
        conn.user_data = user_data
        socks = st.users.setdefault(user_id, {})
        first = not socks
        socks[conn.socket_id] = conn
        for watched in conn.watchlist:
            st.watchers.setdefault(watched, {})[conn.socket_id] = conn
        return first

    def sign_out(self, conn: Connection) -> bool:
        """Forget `conn`'s sign-in; True when it was its user's last socket on this node."""
        if conn.user_id is None:
            return False
        st = self.apps.get(conn.app.id)
        if st is None:
            return False
        for watched in conn.watchlist:
            w = st.watchers.get(watched)
            if w is not None:
                w.pop(conn.socket_id, None)
                if not w:
                    del st.watchers[watched]
        socks = st.users.get(conn.user_id)
        if socks is None or socks.pop(conn.socket_id, None) is None:
            return False
        if not socks:
            del st.users[conn.user_id]
            return True
        return False

    def notify_watchers(self, app: App, user_id: str, status: WatchStatus) -> None:
        """Watchlist events: a user came online (first socket) or went offline (last one)."""
        if not app.enable_watchlist_events:
            return
        st = self.apps.get(app.id)
        watchers = None if st is None else st.watchers.get(user_id)
        if watchers:
            msg = messages.watchlist_events([{"name": status.value, "user_ids": [user_id]}])
            for conn in watchers.values():
                conn.send(msg)

    def _user(self, app: App, user_id: str) -> dict[str, Connection]:
        st = self.apps.get(app.id)
        return {} if st is None else st.users.get(user_id, {})

    def user_connections(self, app: App, user_id: str) -> list[Connection]:
        return list(self._user(app, user_id).values())

    def send_to_user(
        self, app: App, user_id: str, msg: Outbound, except_socket_id: str | None = None
    ) -> int:
        n = 0
        for sid, conn in self._user(app, user_id).items():
            if sid != except_socket_id:
                conn.send(msg)
                n += 1
        return n

    def close_user(self, app: App, user_id: str, err: PusherError) -> int:
        """Close every socket of `user_id` here with `err`; returns how many there were."""
        conns = self.user_connections(app, user_id)
        for conn in conns:
            conn.send_error_and_close(err)
        return len(conns)

    # This node's figures (what the engine falls back on when the cluster state is away) ---
    def local_stats(self, app: App, prefix: str = "") -> dict[str, ChannelStats]:
        """This node's occupied channels whose names start with `prefix`."""
        st = self.apps.get(app.id)
        if st is None:
            return {}
        return {
            name: _stats(ch)
            for name, ch in st.channels.items()
            if name.startswith(prefix) and ch.subscribers
        }

    def has_channel(self, app: App, name: str) -> bool:
        """A socket here is subscribed to `name` or joining it."""
        return self.channel(app, name) is not None

    def channel_stats(self, app: App, name: str) -> ChannelStats | None:
        """`name`'s figures on this node; None when no local socket is subscribed."""
        ch = self.channel(app, name)
        return None if ch is None or not ch.subscribers else _stats(ch)

    def subscriber_count(self, app: App, name: str) -> int:
        """Sockets subscribed to `name` on this node (joiners not counted)."""
        ch = self.channel(app, name)
        return 0 if ch is None else len(ch.subscribers)

    def local_members(self, app: App, name: str) -> dict[str, Any]:
        """Presence members of `name` on this node (user id -> user_info), in join order."""
        ch = self.channel(app, name)
        return {} if ch is None else {u: m.user_info for u, m in ch.members.items()}

    def has_member(self, app: App, name: str, user_id: str) -> bool:
        ch = self.channel(app, name)
        return ch is not None and user_id in ch.members

    def signed_in(self, app: App, user_ids: Iterable[str]) -> list[str]:
        """Those of `user_ids` with a signed-in socket on this node, in the order given."""
        st = self.apps.get(app.id)
        return [] if st is None else [u for u in user_ids if u in st.users]

    # Apps changed ------------------------------------------------------------------------
    def app_connections(self, app_id: str) -> list[Connection]:
        st = self.apps.get(app_id)
        return [] if st is None else list(st.connections.values())

    def replace_app(self, app: App) -> None:
        """`app`'s settings changed: its state and open sockets take the new ones now."""
        st = self.apps.get(app.id)
        if st is None:
            return
        st.app = app
        for conn in st.connections.values():
            conn.app = app

    # Resync ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, AppSnapshot]:
        """This node's local truth, as the cluster state records it (joined sockets only)."""
        out: dict[str, AppSnapshot] = {}
        for app_id, st in self.apps.items():
            snap = AppSnapshot(connections=len(st.connections))
            for name, ch in st.channels.items():
                if ch.subscribers:
                    snap.channels[name] = len(ch.subscribers)
                if ch.members:
                    snap.members[name] = {
                        uid: (m.user_info, m.sockets) for uid, m in ch.members.items()
                    }
            snap.users = {uid: len(socks) for uid, socks in st.users.items()}
            out[app_id] = snap
        return out
