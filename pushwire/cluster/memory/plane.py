"""The memory backend's shared `Backplane`: topics, records, leases, cache, claims and
histories of the nodes of one process, and the simulated network round trip of tests."""

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

from ...protocol.history import HistoryPolicy
from ..base import (
    EPOCH_RE,
    HistoryEvent,
    HistoryPage,
    NotRegistered,
    Position,
    Unavailable,
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
