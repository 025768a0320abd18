"""The memory backend: `Broker`, `ClusterState` and `Liveness` over one shared `Backplane`.

One node (the default single-node server) uses a backplane of its own. Several nodes in one
process share one, which makes an in-process cluster for tests: same engine, same decisions,
no sockets, deterministic. The records mirror the Redis backend's (per-node counts beside
deployment totals) so reaping and resync behave the same way, and `cut(node)` simulates a
node that cannot reach the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from ..protocol.errors import PresenceLimit
from ..protocol.history import HistoryPolicy
from .base import (
    EPOCH_RE,
    AppSnapshot,
    BusKind,
    BusMessage,
    Changes,
    ChannelStats,
    Heartbeat,
    HistoryEvent,
    HistoryPage,
    Joined,
    Left,
    NotRegistered,
    PartialDelivery,
    Position,
    Unavailable,
    decode,
    encode,
)


@dataclass
class _AppRecords:
    conn: dict[str, int] = field(default_factory=dict)  # node -> connections
    chn: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> node -> subs
    pm: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel -> uid -> info
    pmn: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # ch->uid->node->n
    usr: dict[str, dict[str, int]] = field(default_factory=dict)  # uid -> node -> sockets


class Backplane:
    """What the nodes of one process share: topics, records, leases, cache and claims."""

    def __init__(self, clock: Callable[[], float], node_timeout: float = 6.0) -> None:
        self.clock = clock
        self.node_timeout = node_timeout
        self.topics: dict[str, dict[str, Callable[[bytes], None]]] = {}
        self.apps: dict[str, _AppRecords] = {}
        self.nodes: dict[str, float] = {}  # registered node -> lease expiry
        self.cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.claims: dict[str, float] = {}
        self.rates: dict[str, tuple[int, float]] = {}  # rate counter -> (total, expiry)
        self.version = 0
        self.histories: dict[str, _History] = {}
        self.unreachable: set[str] = set()
        self.lost: dict[str, Callable[[], None]] = {}  # each broker's `lost` (see Broker)
        # tests: state and bus calls yield to the loop before and after, a random number of
        # times, like requests and replies over a network (None: they don't)
        self.round_trip: random.Random | None = None

    def lose(self, node: str) -> None:
        """Tests: as if `node`'s bus connection had fallen silent and been given up (what
        was published to it meanwhile is gone): its broker's `lost` is called."""
        self.lost[node]()

    def cut(self, node: str, down: bool = True) -> None:
        """Make the store unreachable from `node` (or reachable again)."""
        (self.unreachable.add if down else self.unreachable.discard)(node)

    def check(self, node: str, registered: bool = True) -> None:
        if node in self.unreachable:
            raise Unavailable(f"node {node} cannot reach the shared state")
        if registered and node not in self.nodes:
            raise NotRegistered(f"node {node} is not registered")

    def app(self, app_id: str) -> _AppRecords:
        rec = self.apps.get(app_id)
        if rec is None:
            rec = self.apps[app_id] = _AppRecords()
        return rec

    def _history(self, topic: str, policy: HistoryPolicy, now: float) -> _History:
        h = self.histories.get(topic)
        if h is not None and h.kept_until <= now:
            h = None  # idle past its retention: a new epoch
        if h is None:
            h = self.histories[topic] = _History(secrets.token_hex(6))
            # made by a read: kept as long as an event would be (a publish keeps it longer),
            # so subscribes to channels nobody publishes on leave nothing for long
            h.kept_until = now + policy.ttl
        h.trim(now, policy.size)
        return h

    def sweep_history(self) -> None:
        """Free expired events and histories past their retention (each heartbeat)."""
        now = self.clock()
        for topic, h in list(self.histories.items()):
            if h.kept_until <= now:
                del self.histories[topic]
            elif h.events and h.events[0][1] <= now:
                h.trim(now, len(h.events))

    def append_history(self, topic: str, payload: bytes, policy: HistoryPolicy) -> Position:
        now = self.clock()
        h = self._history(topic, policy, now)
        h.top += 1
        h.events.append((HistoryEvent(h.top, payload, time.time()), now + policy.ttl))
        h.trim(now, policy.size)
        h.kept_until = now + policy.kept_for
        return Position(h.epoch, h.top)

    def history_page(
        self, topic: str, since: int | None, limit: int, policy: HistoryPolicy, max_bytes: int
    ) -> HistoryPage:
        return self._history(topic, policy, self.clock()).page(since, limit, max_bytes)

    def save_history(self, path: str) -> int:
        """Write every kept history to `path` (JSON, replaced atomically), so a single node
        restarted gracefully keeps its epochs and events; returns how many were written.
        Times are stored as wall-clock times (the clock here need not survive a restart)."""
        now, wall = self.clock(), time.time()
        out = {}
        for topic, h in self.histories.items():
            if h.kept_until <= now:
                continue
            out[topic] = {
                "epoch": h.epoch,
                "top": h.top,
                "kept_until": wall + h.kept_until - now,
                "events": [
                    [e.offset, e.payload.decode(), e.time, wall + exp - now]
                    for e, exp in h.events
                    if exp > now
                ],
            }
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({"version": 1, "histories": out}))
        os.replace(tmp, path)
        return len(out)

    def load_history(self, path: str) -> int:
        """Read what `save_history` wrote (a missing file is an empty history); returns how
        many histories were read. Raises ValueError for a file that is not one."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return 0
        now, wall = self.clock(), time.time()
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != 1:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            for topic, d in doc["histories"].items():
                if not EPOCH_RE.fullmatch(d["epoch"]) or d["kept_until"] <= wall:
                    continue
                h = _History(d["epoch"])
                h.top = int(d["top"])
                h.kept_until = now + float(d["kept_until"]) - wall
                for offset, payload, at, expires in d["events"]:
                    if expires > wall:
                        event = HistoryEvent(int(offset), payload.encode(), float(at))
                        h.events.append((event, now + float(expires) - wall))
                self.histories[str(topic)] = h
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.histories.clear()
            raise ValueError(f"{path} is not a history file: {exc}") from None
        return len(self.histories)

    def forget_history(self) -> None:
        """Tests: the store lost every history (a flush): new epochs from now on."""
        self.histories.clear()

    def next_version(self) -> int:
        """Increasing, and from the wall clock like the Redis backend's (microseconds)."""
        self.version = max(self.version + 1, time.time_ns() // 1000)
        return self.version


P = ParamSpec("P")
R = TypeVar("R")


def _round_trip(
    fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    async def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        await _network(self.plane)
        result = await fn(self, *args, **kwargs)
        await _network(self.plane)
        return result

    return call


async def _network(plane: Backplane) -> None:
    """Yield to the loop a random number of times (tests), as a request or reply would."""
    rnd = plane.round_trip
    if rnd is not None:
        for _ in range(rnd.randint(0, 3)):
            await asyncio.sleep(0)


class MemoryBroker:
    def __init__(self, plane: Backplane, node: str) -> None:
        self.plane = plane
        self.node = node
        self.wanted: set[str] = set()
        self._deliver: Callable[[BusMessage], None] = lambda m: None

    @property
    def healthy(self) -> bool:
        return self.node not in self.plane.unreachable


    async def start(
        self, deliver: Callable[[BusMessage], None], lost: Callable[[], None] | None = None
    ) -> None:
        self._deliver = deliver
        self.plane.lost[self.node] = lost or (lambda: None)

    async def stop(self) -> None:
        for topic in list(self.wanted):
            await self.unsubscribe(topic)

    @_round_trip
    async def subscribe(self, topic: str) -> None:
        self.wanted.add(topic)
        self.plane.check(self.node, registered=False)
        self.plane.topics.setdefault(topic, {})[self.node] = self._on_message

    @_round_trip
    async def unsubscribe(self, topic: str) -> None:
        self.wanted.discard(topic)
        subs = self.plane.topics.get(topic)
        if subs is not None:
            subs.pop(self.node, None)
            if not subs:
                del self.plane.topics[topic]

    @_round_trip
    async def resubscribed(self) -> None:
        self.plane.check(self.node, registered=False)
        for topic in self.wanted:
            self.plane.topics.setdefault(topic, {})[self.node] = self._on_message

    def _on_message(self, wire: bytes) -> None:
        if self.node in self.plane.unreachable:
            return  # a cut-off node misses what is published meanwhile, as over a network
        msg = decode(wire)
        if msg is not None:
            self._deliver(msg)

    async def publish(
        self, topic: str, msg: BusMessage, history: HistoryPolicy | None = None
    ) -> Position | None:
        plane = self.plane
        plane.check(self.node)
        now = plane.clock()
        for node in plane.topics.get(topic, ()):  # (as publish.lua: see `receivers`)
            if node != self.node and plane.nodes.get(node, now) < now:
                raise PartialDelivery(
                    f"node {node} lost its lease: its subscribers cannot be counted on"
                )
        position = None
        if history is not None:
            position = plane.append_history(topic, msg.payload, history)
        subs = plane.topics.get(topic)
        if subs and (position is not None or len(subs) > 1 or self.node not in subs):
            # the bytes Redis would carry (the position line is the store's, as publish.lua
            # writes it), so in-process tests exercise the wire format
            wire = encode(msg, self.node)
            if position is not None:
                wire = b"@%d %s\n" % (position.offset, position.epoch.encode()) + wire
            loop = asyncio.get_running_loop()
            for node, deliver in subs.items():
                if node != self.node or position is not None:  # history echoes (see Broker)
                    loop.call_soon(deliver, wire)  # FIFO: per-topic order holds
        await _network(plane)  # only the reply waits: the send kept the call order
        return position

    @_round_trip
    async def history(
        self,
        topic: str,
        since: int | None,
        limit: int,
        policy: HistoryPolicy,
        max_bytes: int = 0,
    ) -> HistoryPage:
        self.plane.check(self.node)
        return self.plane.history_page(topic, since, limit, policy, max_bytes)


class _History:
    """One topic's history: its epoch, its top offset and its last events (oldest first)."""

    __slots__ = ("epoch", "events", "kept_until", "top")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        self.events: deque[tuple[HistoryEvent, float]] = deque()  # (event, expires at)
        self.kept_until = 0.0

    def trim(self, now: float, size: int) -> None:
        ev = self.events
        while ev and (len(ev) > size or ev[0][1] <= now):
            ev.popleft()

    def page(self, since: int | None, limit: int, max_bytes: int) -> HistoryPage:
        kept = [e for e, _ in self.events]
        if since is None:
            events = _within(reversed(kept[-limit:] if limit > 0 else []), max_bytes)[0]
            events.reverse()
            complete = True
        else:
            first = kept[0].offset if kept else self.top + 1
            events, cut = _within([e for e in kept if e.offset > since][:limit], max_bytes)
            complete = not cut and first - 1 <= since <= self.top
        return HistoryPage(Position(self.epoch, self.top), events, complete)


def _within(events: Iterable[HistoryEvent], max_bytes: int) -> tuple[list[HistoryEvent], bool]:
    """The leading `events` whose payloads fit in `max_bytes` (0: all); and whether cut."""
    out: list[HistoryEvent] = []
    total = 0
    for e in events:
        total += len(e.payload)
        if max_bytes and total > max_bytes:
            return out, True
        out.append(e)
    return out, False


class MemoryState:
    def __init__(self, plane: Backplane, node: str) -> None:
        self.plane = plane
        self.node = node

    def _rec(self, app_id: str) -> _AppRecords:
        self.plane.check(self.node)
        return self.plane.app(app_id)


    @_round_trip
    async def connect(self, app_id: str, limit: int) -> bool:
        rec = self._rec(app_id)
        if limit and sum(rec.conn.values()) >= limit:
            return False
        rec.conn[self.node] = rec.conn.get(self.node, 0) + 1
        return True

    @_round_trip
    async def disconnect(self, app_id: str) -> None:
        rec = self._rec(app_id)
        n = rec.conn.get(self.node, 0)
        if n > 1:
            rec.conn[self.node] = n - 1
        else:
            rec.conn.pop(self.node, None)

    @_round_trip
    async def subscribe(
        self, app_id: str, channel: str, member: tuple[str, Any] | None, limit: int
    ) -> Joined:
        rec = self._rec(app_id)
        added, version, members = False, 0, None
        if member is not None:
            uid, info = member
            pm = rec.pm.setdefault(channel, {})
            if uid not in pm and len(pm) >= limit:
                if not pm:
                    del rec.pm[channel]
                raise PresenceLimit(f"Presence channel {channel} is full ({limit} members)")
            holders = rec.pmn.setdefault(channel, {})  # after the check: a refusal changes nothing
            per_node = holders.setdefault(uid, {})
            per_node[self.node] = per_node.get(self.node, 0) + 1
            if uid not in pm:
                pm[uid] = info
                added = True
                version = self.plane.next_version()
            else:
                version = self.plane.version
            members = dict(pm)
        nodes = rec.chn.setdefault(channel, {})
        before = sum(nodes.values())
        nodes[self.node] = nodes.get(self.node, 0) + 1
        return Joined(before + 1, before == 0, added, version, members)

    @_round_trip
    async def unsubscribe(self, app_id: str, channel: str, user_id: str | None) -> Left:
        rec = self._rec(app_id)
        removed, version = False, 0
        if user_id is not None:
            holders = rec.pmn.get(channel, {})
            per_node = holders.get(user_id, {})
            if per_node.get(self.node, 0) > 0:
                per_node[self.node] -= 1
                if not per_node[self.node]:
                    del per_node[self.node]
                if not per_node:
                    holders.pop(user_id, None)
                    rec.pm.get(channel, {}).pop(user_id, None)
                    removed = True
                    version = self.plane.next_version()
                self._prune_presence(rec, channel)
        nodes = rec.chn.get(channel, {})
        before = sum(nodes.values())
        mine = nodes.get(self.node, 0)
        if mine > 1:
            nodes[self.node] = mine - 1
        elif mine:
            del nodes[self.node]
        if not nodes:
            rec.chn.pop(channel, None)
        after = before - (1 if mine else 0)
        return Left(after, before > 0 and after == 0, removed, version)

    @staticmethod
    def _prune_presence(rec: _AppRecords, channel: str) -> None:
        if not rec.pmn.get(channel):
            rec.pmn.pop(channel, None)
            rec.pm.pop(channel, None)

    @_round_trip
    async def sign_in(self, app_id: str, user_id: str) -> bool:
        rec = self._rec(app_id)
        per_node = rec.usr.setdefault(user_id, {})
        first = not per_node
        per_node[self.node] = per_node.get(self.node, 0) + 1
        return first

    @_round_trip
    async def sign_out(self, app_id: str, user_id: str) -> bool:
        rec = self._rec(app_id)
        per_node = rec.usr.get(user_id, {})
        n = per_node.get(self.node, 0)
        if not n:
            return False
        if n > 1:
            per_node[self.node] = n - 1
            return False
        del per_node[self.node]
        if per_node:
            return False
        del rec.usr[user_id]
        return True

    def _stats(self, rec: _AppRecords, channel: str) -> ChannelStats | None:
        total = sum(rec.chn.get(channel, {}).values())
        if total <= 0:
            return None
        users = len(rec.pm.get(channel, {})) if channel.startswith("presence-") else None
        return ChannelStats(total, users)

    @_round_trip
    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        rec = self._rec(app_id)
        out = {}
        for name in rec.chn:
            if name.startswith(prefix):
                stats = self._stats(rec, name)
                if stats is not None:
                    out[name] = stats
        return out

    @_round_trip
    async def channel_stats(self, app_id: str, channel: str) -> ChannelStats | None:
        return self._stats(self._rec(app_id), channel)

    @_round_trip
    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        return dict(self._rec(app_id).pm.get(channel, {}))

    @_round_trip
    async def connection_count(self, app_id: str) -> int:
        return sum(self._rec(app_id).conn.values())

    @_round_trip
    async def online_users(self, app_id: str, user_ids: tuple[str, ...]) -> list[str]:
        usr = self._rec(app_id).usr
        return [u for u in user_ids if u in usr]

    @_round_trip
    async def cache_set(self, app_id: str, channel: str, payload: bytes, ttl: float) -> None:
        self.plane.check(self.node)
        self.plane.cache[(app_id, channel)] = (payload, self.plane.clock() + ttl)

    @_round_trip
    async def cache_get(self, app_id: str, channel: str) -> tuple[bytes, float] | None:
        self.plane.check(self.node)
        entry = self.plane.cache.get((app_id, channel))
        if entry is None:
            return None
        left = entry[1] - self.plane.clock()
        if left <= 0:
            del self.plane.cache[(app_id, channel)]
            return None
        return entry[0], left

    @_round_trip
    async def claim_once(self, key: str, ttl: float) -> bool:
        self.plane.check(self.node)
        now = self.plane.clock()
        claims = self.plane.claims
        if len(claims) > 10_000:
            self.plane.claims = claims = {k: t for k, t in claims.items() if t > now}
        if claims.get(key, float("-inf")) > now:
            return False
        claims[key] = now + ttl
        return True

    @_round_trip
    async def hit(self, key: str, n: int, ttl: float) -> int:
        self.plane.check(self.node, registered=False)
        now = self.plane.clock()
        rates = self.plane.rates
        if len(rates) > 10_000:
            self.plane.rates = rates = {k: v for k, v in rates.items() if v[1] > now}
        total, expires = rates.get(key, (0, 0.0))
        if expires <= now:
            total, expires = 0, now + ttl
        rates[key] = (total + n, expires)
        return total + n

    @_round_trip
    async def resync(self, snapshot: dict[str, AppSnapshot]) -> Changes:
        self.plane.check(self.node, registered=False)
        changes = Changes()
        node = self.node
        for app_id in set(self.plane.apps) | set(snapshot):
            snap = snapshot.get(app_id) or AppSnapshot()
            rec = self.plane.app(app_id)
            if snap.connections:
                rec.conn[node] = snap.connections
            else:
                rec.conn.pop(node, None)
            for name in set(rec.chn) | set(snap.channels):
                nodes = rec.chn.setdefault(name, {})
                before = sum(nodes.values())
                if snap.channels.get(name):
                    nodes[node] = snap.channels[name]
                else:
                    nodes.pop(node, None)
                after = sum(nodes.values())
                if not nodes:
                    del rec.chn[name]
                if before == 0 < after:
                    changes.occupied.append((app_id, name))
                elif after == 0 < before:
                    changes.vacated.append((app_id, name))
            for name in set(rec.pmn) | set(snap.members):
                holders = rec.pmn.setdefault(name, {})
                want = snap.members.get(name, {})
                for uid in set(holders) | set(want):
                    per_node = holders.setdefault(uid, {})
                    had = bool(per_node)
                    if uid in want and want[uid][1] > 0:  # no sockets: not held (as in Redis)
                        per_node[node] = want[uid][1]
                    else:
                        per_node.pop(node, None)
                    pm = rec.pm.setdefault(name, {})
                    if per_node and not had:
                        pm[uid] = want[uid][0]
                        v = self.plane.next_version()
                        changes.added.append((app_id, name, uid, want[uid][0], v))
                    elif had and not per_node:
                        pm.pop(uid, None)
                        changes.removed.append((app_id, name, uid, self.plane.next_version()))
                    if not per_node:
                        del holders[uid]
                self._prune_presence(rec, name)
            for uid in set(rec.usr) | set(snap.users):
                per_node = rec.usr.setdefault(uid, {})
                had = bool(per_node)
                if snap.users.get(uid):
                    per_node[node] = snap.users[uid]
                else:
                    per_node.pop(node, None)
                if per_node and not had:
                    changes.online.append((app_id, uid))
                elif had and not per_node:
                    changes.offline.append((app_id, uid))
                if not per_node:
                    del rec.usr[uid]
        return changes

    @_round_trip
    async def reap(self, node: str) -> Changes:
        plane = self.plane
        plane.check(self.node, registered=False)
        if node != self.node:
            lease = plane.nodes.get(node)
            if lease is None or lease > plane.clock():
                return Changes()  # reaped already, or alive again
        if plane.nodes.pop(node, None) is None and node != self.node:
            return Changes()
        changes = Changes()
        for app_id, rec in self.plane.apps.items():
            rec.conn.pop(node, None)
            for name in list(rec.chn):
                nodes = rec.chn[name]
                if nodes.pop(node, 0) and not nodes:
                    del rec.chn[name]
                    changes.vacated.append((app_id, name))
            for name in list(rec.pmn):
                holders = rec.pmn[name]
                for uid in list(holders):
                    per_node = holders[uid]
                    if per_node.pop(node, 0) and not per_node:
                        del holders[uid]
                        rec.pm.get(name, {}).pop(uid, None)
                        changes.removed.append((app_id, name, uid, self.plane.next_version()))
                self._prune_presence(rec, name)
            for uid in list(rec.usr):
                per_node = rec.usr[uid]
                if per_node.pop(node, 0) and not per_node:
                    del rec.usr[uid]
                    changes.offline.append((app_id, uid))
        return changes


class MemoryLiveness:
    def __init__(self, plane: Backplane, node: str) -> None:
        self.plane = plane
        self.node = node

    @_round_trip
    async def beat(self) -> Heartbeat:
        plane = self.plane
        plane.check(self.node, registered=False)
        plane.sweep_history()
        now = plane.clock()
        registered = self.node in plane.nodes
        if registered:
            plane.nodes[self.node] = now + plane.node_timeout
        alive = frozenset(n for n, t in plane.nodes.items() if t > now)
        dead = tuple(n for n, t in plane.nodes.items() if t <= now)
        return Heartbeat(registered, alive, dead)

    @_round_trip
    async def register(self) -> None:
        self.plane.check(self.node, registered=False)
        self.plane.nodes[self.node] = self.plane.clock() + self.plane.node_timeout

    @_round_trip
    async def deregister(self) -> None:
        self.plane.nodes.pop(self.node, None)


__all__ = ["Backplane", "BusKind", "MemoryBroker", "MemoryLiveness", "MemoryState"]
