"""`RedisState`: the `ClusterState` over Redis, one Lua script per operation, in the three
parts of `base.ClusterState` (per channel, per app, per key) and a node's records as a whole
(resync, reap).

Every operation is one script (`lua/*.lua`, see `scripts.py`), so it is one atomic step of
the store: two nodes never both see themselves first or last. Every script but `resync` and
`reap` first checks that this node is registered under the generation it believes in, and
fails with NOTREG when it is not (it was reaped, Redis lost its data, or this is a new
primary): that, and any Redis or socket error, surfaces as `Unavailable`. See `keys.py` for
the data model.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...protocol.errors import PresenceLimit
from ..base import AppSnapshot, Changes, ChannelStats, Joined, Left
from .scripts import Runner, as_str, to_ms


class _Part:
    def __init__(self, scripts: Runner) -> None:
        self.node = scripts.node
        self.keys = scripts.keys
        self.scripts = scripts


class RedisChannelState(_Part):
    """Per channel (see `base.ChannelState`)."""

    async def subscribe(
        self, app_id: str, channel: str, member: tuple[str, Any] | None, limit: int
    ) -> Joined:
        res = await self.scripts.run("subscribe", app_id, channel, *joining(member, limit))
        if int(res[0]) < 0:
            raise PresenceLimit(f"Presence channel {channel} is full ({limit} members)")
        return joined(res, member)


    async def unsubscribe(self, app_id: str, channel: str, user_id: str | None) -> Left:
        args = ("0", "") if user_id is None else ("1", user_id)
        total, vacated, removed, version = await self.scripts.run(
            "unsubscribe", app_id, channel, *args
        )
        return Left(int(total), bool(vacated), bool(removed), int(version))


    async def channel_stats(self, app_id: str, channel: str) -> ChannelStats | None:
        total, users = await self.scripts.run("channel_stats", app_id, channel)
        if int(total) <= 0:
            return None
        return ChannelStats(int(total), None if int(users) < 0 else int(users))


    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        flat = await self.scripts.run("members", app_id, channel)
        found = {as_str(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return dict(sorted(found.items()))



class RedisAppState(_Part):
    """Per app (see `base.AppState`)."""

    async def connect(self, app_id: str, limit: int) -> bool:
        return bool(await self.scripts.run("connect", app_id, limit))


    async def disconnect(self, app_id: str) -> None:
        await self.scripts.run("disconnect", app_id)


    async def connection_count(self, app_id: str) -> int:
        return int(await self.scripts.run("connection_count", app_id))


    async def sign_in(self, app_id: str, user_id: str) -> bool:
        return bool(await self.scripts.run("sign_in", app_id, user_id))


    async def sign_out(self, app_id: str, user_id: str) -> bool:
        return bool(await self.scripts.run("sign_out", app_id, user_id))


    async def online_users(self, app_id: str, user_ids: tuple[str, ...]) -> list[str]:
        flags = await self.scripts.run("online_users", app_id, *user_ids)
        return [u for u, on in zip(user_ids, flags, strict=True) if int(on)]


    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        flat = await self.scripts.run("channels", app_id, prefix)
        out = {}
        for i in range(0, len(flat), 3):
            users = int(flat[i + 2])
            out[as_str(flat[i])] = ChannelStats(int(flat[i + 1]), None if users < 0 else users)
        return out


    async def hit(self, key: str, n: int, ttl: float) -> int:
        return int(await self.scripts.run("hit", key, n, to_ms(ttl)))



class RedisCacheState(_Part):
    """Per key (see `base.CacheState`)."""

    async def cache_set(self, app_id: str, channel: str, payload: bytes, ttl: float) -> None:
        ms = round(ttl * 1000)
        await self.scripts.run("cache_set", app_id, channel, payload, ms if ms > 0 else 0)


    async def cache_get(self, app_id: str, channel: str) -> tuple[bytes, float] | None:
        res = await self.scripts.run("cache_get", app_id, channel)
        if not res:
            return None
        payload, pttl = res
        return bytes(payload), max(0.0, int(pttl) / 1000)


    async def claim_once(self, key: str, ttl: float) -> bool:
        return bool(await self.scripts.run("claim_once", key, to_ms(ttl)))



class RedisState(RedisChannelState, RedisAppState, RedisCacheState):
    """The whole `ClusterState`: the three parts, and a node's records as a whole."""

    async def resync(self, snapshot: dict[str, AppSnapshot]) -> Changes:
        doc = {
            app_id: {
                "c": snap.connections,
                "ch": snap.channels,
                "m": {
                    ch: {uid: [orjson.dumps(info).decode(), n] for uid, (info, n) in users.items()}
                    for ch, users in snap.members.items()
                },
                "u": snap.users,
            }
            for app_id, snap in snapshot.items()
        }
        res = await self.scripts.run("resync", orjson.dumps(doc))
        occupied, vacated, added, removed, online, offline = res
        return Changes(
            occupied=_pairs(occupied),
            vacated=_pairs(vacated),
            added=[
                (
                    as_str(added[i]),
                    as_str(added[i + 1]),
                    as_str(added[i + 2]),
                    orjson.loads(added[i + 3]),
                    int(added[i + 4]),
                )
                for i in range(0, len(added), 5)
            ],
            removed=_removed(removed),
            online=_pairs(online),
            offline=_pairs(offline),
        )


    async def reap(self, node: str) -> Changes:
        vacated, removed, offline = await self.scripts.run("reap", node)
        return Changes(vacated=_pairs(vacated), removed=_removed(removed), offline=_pairs(offline))


def _pairs(flat: list[Any]) -> list[tuple[str, str]]:
    return [(as_str(flat[i]), as_str(flat[i + 1])) for i in range(0, len(flat), 2)]


def _removed(flat: list[Any]) -> list[tuple[str, str, str, int]]:
    return [
        (as_str(flat[i]), as_str(flat[i + 1]), as_str(flat[i + 2]), int(flat[i + 3]))
        for i in range(0, len(flat), 4)
    ]


def joining(member: tuple[str, Any] | None, limit: int) -> tuple[str | bytes | int, ...]:
    """subscribe.lua's arguments after app and channel."""
    if member is None:
        return ("0", "", b"", 0)
    return ("1", member[0], orjson.dumps(member[1]), limit)


def joined(res: list[Any], member: tuple[str, Any] | None) -> Joined:
    """subscribe.lua's answer (subscribers, occupied, added, version, members, ...)."""
    total, occupied, added, version, flat = res[:5]
    members = None
    if member is not None:
        members = {as_str(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
    return Joined(int(total), bool(occupied), bool(added), int(version), members)
