"""`MemoryState` and `MemoryLiveness`: the cluster state and the leases of the nodes of one
process (see `plane.Backplane`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...protocol.errors import PresenceLimit
from ..base import (
    AppSnapshot,
    Changes,
    ChannelStats,
    Heartbeat,
    Joined,
    Left,
)
from .plane import Backplane, _AppRecords, _round_trip


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

    def on_new_primary(self, wake: Callable[[], None]) -> None:
        """One process's memory has no primaries to change: `wake` is never called."""

