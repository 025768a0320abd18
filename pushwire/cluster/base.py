"""The three narrow interfaces behind the engine, each with the guarantees it gives.

The engine (`pushwire.engine`) is the one decision path, for one node and for a cluster
alike: the hub does this node's bookkeeping and says what changed locally; the engine asks
these interfaces what that means for the deployment, and announces it. The memory backend
(`cluster/memory.py`) implements all three for one process (one node, or an in-process
cluster for tests); the Redis backend (`cluster/redis/`) for many processes over one Redis
(or a bus and a state Redis, each maybe Sentinel-managed); the Redis Cluster backend
(`cluster/rediscluster/`) over a Redis Cluster, where one step touches one slot: where its
guarantees are weaker, each interface below says so ("sharded store").

- `Broker`: publish/subscribe per topic (a channel, a user, an app, every node).
- `ClusterState`: `ChannelState` (per channel: atomic presence join/leave, counts),
  `AppState` (per app: connection quota, user online/offline, channel index, rate counters),
  `CacheState` (per key: cache, once-only claims); resync and reaping of a node's records.
- `Liveness`: leases; which nodes are registered and which are dead.

Names of kinds are enums (`BusKind`, `Happening`); nothing is pickled between nodes: a bus
message is one versioned JSON header line and the raw frame bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..protocol.history import HistoryPolicy as HistoryPolicy  # its methods take one
from ..protocol.positions import EPOCH_RE as EPOCH_RE
from ..protocol.positions import Position as Position

WIRE_VERSION = 2


class Unavailable(Exception):
    """The shared store or bus cannot be reached (or could not confirm an operation)."""


class NotRegistered(Unavailable):
    """This node is not registered (it was reaped, or the store lost its data): resync."""


class PartialDelivery(Unavailable):
    """A publish reached fewer nodes than are subscribed to its topic (one of them is
    reconnecting its bus): the store itself is fine."""


# Channel history ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistoryEvent:
    offset: int
    payload: bytes  # the event's frame JSON, as sent to sockets that did not opt in
    time: float  # unix time it was published


@dataclass(frozen=True, slots=True)
class HistoryPage:
    top: Position  # the channel's last position (offset 0: nothing published in this epoch)
    events: list[HistoryEvent]  # ascending offsets
    # every event after the offset asked for is in `events`, or past `limit` (nothing of it
    # expired, was trimmed, or belongs to another epoch than the one asked for)
    complete: bool


class BusKind(enum.StrEnum):
    CHANNEL = "pub"  # a frame for a channel's subscribers
    MEMBER = "mem"  # a presence membership frame, with its membership version
    USER = "user"  # a frame for a signed-in user's sockets
    TERMINATE = "term"  # close a user's sockets
    WATCH = "watch"  # a watched user came online / went offline (tag)
    INTERNAL = "ext"  # an extension's internal message (tag = its kind), JSON payload
    TAP = "tap"  # one traffic-monitor event, JSON payload


@dataclass(frozen=True, slots=True)
class BusMessage:
    kind: BusKind
    app: str = ""
    channel: str = ""
    user: str = ""
    except_socket: str | None = None
    version: int = 0  # MEMBER: the membership version (orders changes of one user)
    tag: str = ""  # WATCH: "online" | "offline"; INTERNAL: the extension's kind
    payload: bytes = b""
    origin: str = ""  # the sending node (filled in on receipt)
    position: Position | None = None  # CHANNEL: its place in the channel's history, if kept
    ident: str = ""  # the publish's id, unique per sender process ('' : none; see `encode`)


class BadBusMessage(ValueError):
    pass


def encode(msg: BusMessage, node: str, ident: str = "") -> bytes:
    """`msg` as sent by `node`; `ident` names this publish, so that a receiver drops it when
    it arrives twice (a publish sent again after its connection broke)."""
    head: dict[str, Any] = {"v": WIRE_VERSION, "n": node, "k": msg.kind.value}
    if ident:
        head["i"] = ident
    if msg.app:
        head["a"] = msg.app
    if msg.channel:
        head["c"] = msg.channel
    if msg.user:
        head["u"] = msg.user
    if msg.except_socket:
        head["x"] = msg.except_socket
    if msg.version:
        head["pv"] = msg.version
    if msg.tag:
        head["t"] = msg.tag
    return orjson.dumps(head) + b"\n" + msg.payload


def decode(raw: bytes) -> BusMessage | None:
    """The message in `raw`; None for another wire version. Raises BadBusMessage.

    A message published with history starts with a position line `@OFFSET EPOCH` that the
    store put there when it assigned the offset (the publisher cannot know it in advance)."""
    position = None
    if raw[:1] == b"@":
        line, _, raw = raw.partition(b"\n")
        offset, _, epoch = line[1:].decode("ascii", "replace").partition(" ")
        if not offset.isdigit() or not EPOCH_RE.fullmatch(epoch):
            raise BadBusMessage("bad position line")
        position = Position(epoch, int(offset))
    head_raw, sep, payload = raw.partition(b"\n")
    try:
        head = orjson.loads(head_raw)
    except orjson.JSONDecodeError:
        raise BadBusMessage("bus header is not JSON") from None
    if not sep or not isinstance(head, dict):
        raise BadBusMessage("bus message without a header line")
    if head.get("v") != WIRE_VERSION:
        return None
    try:
        return BusMessage(
            kind=BusKind(head["k"]),
            app=str(head.get("a", "")),
            channel=str(head.get("c", "")),
            user=str(head.get("u", "")),
            except_socket=head.get("x"),
            version=int(head.get("pv", 0)),
            tag=str(head.get("t", "")),
            payload=payload,
            origin=str(head.get("n", "")),
            position=position,
            ident=str(head.get("i", "")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadBusMessage(f"bad bus header: {exc}") from None


# Topics: what a node subscribes to. The broker maps them to its own names.
def channel_topic(app_id: str, channel: str) -> str:
    return f"c:{app_id}:{channel}"


def user_topic(app_id: str, user_id: str) -> str:
    return f"u:{app_id}:{user_id}"


def app_topic(app_id: str) -> str:
    return f"a:{app_id}"


NODES_TOPIC = "n"  # every node listens: internal messages and the cluster tap


class Broker(Protocol):
    """Publish/subscribe between the nodes.

    - `subscribe` returns once the subscription is in effect: every `publish` that starts
      after it returns reaches this node (while its connection stays up).
    - Order: messages one node publishes to one topic arrive in `publish` order.
    - Echo suppression: a node never receives its own messages (it delivers locally itself).
    - `publish` raises `Unavailable` when it cannot confirm that every node subscribed to the
      topic (as recorded in the cluster state) received the message: the caller must not
      report success. It never raises for a topic nobody else listens to (unless the
      store is unreachable or this node is not registered: then it always raises).
      `NotRegistered` means that nothing was published; another `Unavailable`, that the
      message may have gone out (a lost reply, an answer not trusted).
    - It raises too when a node subscribed to the topic has lost its lease (cut off or
      paused, it cannot vouch for its subscribers, though Redis may count its connection).
      Sharded store: the leases as this node saw them at its last heartbeat (a lease that
      ran out since is noticed up to one heartbeat interval later); registration likewise
      as of that heartbeat.
    - `deliver`, given to `start`, is called for every received message, in order, from the
      event loop; it must not block.
    - History: `publish(..., history=policy)` appends the message to the topic's history in
      the same atomic step that publishes it, so history order is delivery order. It returns
      the message's `Position`, and the message reaches every subscribed node *this one
      included* (no echo suppression: a node delivers its history events in the store's
      order, never ahead of it), carrying that position. Offsets increase by one per
      message of the topic within an epoch. A publish retried after a lost connection is
      appended once.
    """

    node: str

    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        """`lost` is called when messages for this node may have been dropped on the way
        (its bus connection fell silent and was given up after a bound, or Redis dropped it
        unread): the subscriptions are made again, but what was published meanwhile may be
        missing; the node must not leave its sockets silently without it."""

    async def stop(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the bus is known to be unreachable."""

    async def subscribe(self, topic: str) -> None:
        """Subscribe (confirmed). On Unavailable the topic stays wanted and is subscribed
        again when the bus returns."""

    async def unsubscribe(self, topic: str) -> None: ...

    async def resubscribed(self) -> None:
        """Wait until every wanted topic is subscribed again (after a reconnection)."""

    async def publish(
        self, topic: str, msg: BusMessage, history: HistoryPolicy | None = None
    ) -> Position | None:
        """None without `history`; raises Unavailable (see above)."""

    async def history(
        self,
        topic: str,
        since: int | None,
        limit: int,
        policy: HistoryPolicy,
        max_bytes: int = 0,
    ) -> HistoryPage:
        """The kept events of `topic`: the first `limit` after offset `since`, or the last
        `limit` when `since` is None; with `max_bytes`, no more payload bytes than that
        (the first or the last ones; cut short, a page after `since` is not complete).
        Creates the topic's epoch if it has none (a client told it now can recover from
        offset 0 later), kept `policy.ttl` unless a publish keeps it longer. Raises
        Unavailable."""


# Cluster state ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChannelStats:
    subscription_count: int
    user_count: int | None  # presence channels only


@dataclass(frozen=True, slots=True)
class Joined:
    """What a subscribe changed, deployment-wide."""

    count: int  # subscribers of the channel after it
    occupied: bool  # the channel went from 0 to 1 subscriber
    member_added: bool  # presence: the user's first socket in the channel
    version: int = 0  # presence: membership version of `members` (and of member_added)
    members: dict[str, Any] | None = None  # presence: every member, the joiner included


@dataclass(frozen=True, slots=True)
class Left:
    count: int
    vacated: bool  # the channel went to 0 subscribers
    member_removed: bool  # presence: the user's last socket in the channel
    version: int = 0  # presence: membership version of member_removed


@dataclass
class AppSnapshot:
    """One node's local truth for one app (what resync writes)."""

    connections: int = 0
    channels: dict[str, int] = field(default_factory=dict)  # channel -> local subscribers
    # presence channel -> user id -> (user_info, local sockets)
    members: dict[str, dict[str, tuple[Any, int]]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)  # signed-in user -> local sockets


@dataclass
class Changes:
    """Deployment-wide transitions found by `resync` or `reap`, to be announced once."""

    occupied: list[tuple[str, str]] = field(default_factory=list)  # (app, channel)
    vacated: list[tuple[str, str]] = field(default_factory=list)
    # (app, channel, user id, user_info, version)
    added: list[tuple[str, str, str, Any, int]] = field(default_factory=list)
    # (app, channel, user id, version)
    removed: list[tuple[str, str, str, int]] = field(default_factory=list)
    online: list[tuple[str, str]] = field(default_factory=list)  # (app, user)
    offline: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.occupied, self.vacated, self.added, self.removed, self.online, self.offline)
        )


class ChannelState(Protocol):
    """Per channel: its subscriber count and presence members. Each method touches one
    channel's records only (one shard of a sharded store: the channel's), in one atomic step,
    so two nodes never both see themselves first (or last) in a channel.

    Membership versions increase per presence channel across the deployment and survive a
    restart of the store (they are taken from its clock), so a node can drop a stale
    membership message by comparing versions."""

    async def subscribe(
        self, app_id: str, channel: str, member: tuple[str, Any] | None, limit: int
    ) -> Joined:
        """One socket joins. Presence (`member` given): raises PresenceLimit when a new
        member would exceed `limit`."""

    async def unsubscribe(self, app_id: str, channel: str, user_id: str | None) -> Left: ...

    async def channel_stats(self, app_id: str, channel: str) -> ChannelStats | None: ...

    async def members(self, app_id: str, channel: str) -> dict[str, Any]: ...


class AppState(Protocol):
    """Per app: the connection quota, signed-in users, the channel index and rate counters.
    Each method is one atomic step over one app's records (one shard: the app's), so a quota
    admits exactly `limit` connections deployment-wide and a user is first / last once."""

    async def connect(self, app_id: str, limit: int) -> bool:
        """Count one more connection unless `limit` (> 0) are open; False when refused."""

    async def disconnect(self, app_id: str) -> None: ...

    async def connection_count(self, app_id: str) -> int: ...

    async def sign_in(self, app_id: str, user_id: str) -> bool:
        """True when this is the user's first socket in the deployment."""

    async def sign_out(self, app_id: str, user_id: str) -> bool:
        """True when that was the user's last socket."""

    async def online_users(self, app_id: str, user_ids: tuple[str, ...]) -> list[str]:
        """Sharded store: a user's records are in the user's shard (first / last socket stay
        atomic); this is one read per user, not one snapshot."""

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        """The app's occupied channels (a read over the app's index: not a snapshot taken
        in one step with the channels' own records). Sharded store: the index is in the
        app's shard and is told of a channel's occupied / vacated after the channel's own
        step (newest version wins), so it may lag by one transition of a channel (the mark
        on its way, or, the app's shard unreachable, until the next heartbeat writes it);
        each listed channel is counted in its own shard: an empty one is never reported."""

    async def hit(self, key: str, n: int, ttl: float) -> int:
        """Add `n` to the deployment-wide counter `key` (created to expire after `ttl`
        seconds) and return its total: rate limits over fixed windows named in the key."""


class CacheState(Protocol):
    """Values with a time to live, each under its own key (any shard): a cache channel's last
    event, and once-only claims (a webhook sent by one node, not every node)."""

    async def cache_set(self, app_id: str, channel: str, payload: bytes, ttl: float) -> None: ...

    async def cache_get(self, app_id: str, channel: str) -> tuple[bytes, float] | None:
        """The cached frame payload and its remaining seconds."""

    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for the first caller in the deployment within `ttl` seconds."""


class ClusterState(ChannelState, AppState, CacheState, Protocol):
    """State shared by the deployment, in three parts by what it is kept per (channel, app,
    key), plus a node's records as a whole. Figures count every node's records (a dead
    node's until it is reaped). Methods raise `Unavailable` when the store cannot be
    reached, or when this node is not registered (it was reaped, or the store lost its data,
    or it is a new primary that may lack the node's last writes): the caller decides locally
    and `resync` repairs it later.

    Sharded store (`cluster/rediscluster/membership.py`): registration is checked as of this
    node's last heartbeat for every method, and per group (channel, user, app) for writes,
    through the incarnation the node passes: a reaped node's late writes are refused in
    every group, a stale write (from before a resync) too. A new primary of any shard makes
    the node answer as not registered until it resynced."""

    node: str

    async def resync(self, snapshot: dict[str, AppSnapshot]) -> Changes:
        """Make this node's records equal `snapshot` (per app id; apps missing from it have
        no records of this node afterwards) and return what that changed deployment-wide.
        Works whether or not this node is registered (it runs before `Liveness.register`).
        Sharded store: group by group, each group's transitions exact; one that fails midway
        is run again whole (every step is idempotent)."""

    async def reap(self, node: str) -> Changes:
        """Unregister `node` (a node whose lease ran out, or this node on a clean stop),
        remove its records and return what that changed. Once only: a node reaped already,
        or whose lease is valid again, gives empty Changes. Sharded store: group by group
        under a claim (one reaper at a time); a reaper that dies midway is succeeded after
        the claim's ttl by one that finishes the work, and that one announces only the
        transitions of the groups it removed itself."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    registered: bool  # False: this node was reaped or the store lost it; resync, then register
    alive: frozenset[str]  # registered nodes with a valid lease
    dead: tuple[str, ...]  # registered nodes whose lease ran out


class Liveness(Protocol):
    """Leases. A node that calls `beat` every `heartbeat_interval` stays alive; one that has
    not renewed for `node_timeout` is reported in `dead` to every caller, which reaps it
    through `ClusterState.reap` (once only). `beat` never re-registers a node that is not
    registered: that node must resync first, then `register`."""

    async def beat(self) -> Heartbeat: ...

    async def register(self) -> None: ...

    async def deregister(self) -> None: ...

    def on_new_primary(self, wake: Callable[[], None]) -> None:
        """Call `wake()` (from then on) whenever the backend finds that the store may no
        longer hold this node's registration without having been asked (a new primary found
        by any of its connections, a shard that stopped answering): the node heartbeats at
        once rather than at its next tick. A backend without primaries never calls it."""
