"""`RedisState`: the `ClusterState` over one Redis server, one Lua script per operation.

Every operation is one script (`lua/*.lua`, each prefixed with `keys.lua_prelude()`), so it is
one atomic step of the store: two nodes never both see themselves first or last. Every script
but `resync` and `reap` first checks that this node is in `{p}:nodes`, and fails with NOTREG
when it is not (it was reaped, or Redis lost its data): that, and any Redis or socket error,
surfaces as `Unavailable`. See `keys.py` for the data model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ...protocol.errors import PresenceLimit
from ..base import AppSnapshot, Changes, ChannelStats, Joined, Left, NotRegistered, Unavailable
from .clients import PrimaryWatch
from .keys import Keys, lua_prelude

LUA_DIR = Path(__file__).parent / "lua"


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def to_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@functools.cache
def _load_scripts() -> tuple[dict[str, str], dict[str, str]]:
    """Each script's source (the prelude, then `lua/{name}.lua`) and SHA1, by name."""
    prelude = lua_prelude()
    source = {
        path.stem: prelude + path.read_text(encoding="utf-8")
        for path in sorted(LUA_DIR.glob("*.lua"))
    }
    return source, {name: hashlib.sha1(s.encode()).hexdigest() for name, s in source.items()}


class Scripts:
    """The Lua scripts, run by EVALSHA (loaded again when Redis forgot them, e.g. after a
    restart). `run` turns every failure into `Unavailable`. Each script is told this node's
    id and the generation `watch` last saw (keys.lua_prelude)."""

    def __init__(self, client: Redis, keys: Keys, node: str, watch: PrimaryWatch) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.watch = watch
        self._source, self._sha = _load_scripts()

    async def me(self) -> str:
        """ARGV[2]: this node and the generation of the server (known once a connection was
        made: before the first one, a PING makes it)."""
        if not self.watch.generation:
            await self.client.ping()
        return f"{self.node}\n{self.watch.generation}"

    async def raw(self, name: str, *args: str | bytes | int | float) -> Any:
        """Run script `name` with ARGV = prefix, node, *args; Redis errors are raised as is."""
        argv = (self.keys.prefix, await self.me(), *args)
        try:
            return await self.client.evalsha(self._sha[name], 0, *argv)
        except NoScriptError:
            await self.client.script_load(self._source[name])
            return await self.client.evalsha(self._sha[name], 0, *argv)

    async def pipeline(
        self, name: str, calls: Sequence[tuple[str | bytes | int | float, ...]]
    ) -> list[Any]:
        """Run script `name` once per argument tuple, in order, in one round trip. Results
        are in call order; a failed call's entry is its exception (Redis errors as is)."""
        me = await self.me()
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for args in calls:
                pipe.evalsha(self._sha[name], 0, self.keys.prefix, me, *args)
            results = await pipe.execute(raise_on_error=False)
            if attempt == 0 and results and all(isinstance(r, NoScriptError) for r in results):
                await self.client.script_load(self._source[name])  # Redis restarted
                continue
            return list(results)
        raise AssertionError("unreachable")

    async def run(self, name: str, *args: str | bytes | int | float) -> Any:
        try:
            return await self.raw(name, *args)
        except ResponseError as exc:
            raise self.error(name, exc) from None
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisConnectionError | OSError):
                # after a restart every idle pooled connection is stale: drop them all now
                # rather than fail once on each
                with contextlib.suppress(RedisError, OSError):
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            raise Unavailable(f"Redis unreachable ({name}): {exc}") from None

    def error(self, name: str, exc: ResponseError) -> Unavailable:
        text = str(exc)
        if text.startswith("NOTREG"):
            return NotRegistered(f"node {self.node} is not registered")
        return Unavailable(f"Redis script {name} failed: {text}")


class RedisState:
    def __init__(self, scripts: Scripts) -> None:
        self.node = scripts.node
        self.keys = scripts.keys
        self.scripts = scripts

    async def connect(self, app_id: str, limit: int) -> bool:
        return bool(await self.scripts.run("connect", app_id, limit))

    async def disconnect(self, app_id: str) -> None:
        await self.scripts.run("disconnect", app_id)

    async def subscribe(
        self, app_id: str, channel: str, member: tuple[str, Any] | None, limit: int
    ) -> Joined:
        if member is None:
            args: tuple[str | bytes | int, ...] = ("0", "", b"", 0)
        else:
            args = ("1", member[0], orjson.dumps(member[1]), limit)
        res = await self.scripts.run("subscribe", app_id, channel, *args)
        if int(res[0]) < 0:
            raise PresenceLimit(f"Presence channel {channel} is full ({limit} members)")
        total, occupied, added, version, flat = res
        members = None
        if member is not None:
            members = {as_str(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return Joined(int(total), bool(occupied), bool(added), int(version), members)

    async def unsubscribe(self, app_id: str, channel: str, user_id: str | None) -> Left:
        args = ("0", "") if user_id is None else ("1", user_id)
        total, vacated, removed, version = await self.scripts.run(
            "unsubscribe", app_id, channel, *args
        )
        return Left(int(total), bool(vacated), bool(removed), int(version))

    async def sign_in(self, app_id: str, user_id: str) -> bool:
        return bool(await self.scripts.run("sign_in", app_id, user_id))

    async def sign_out(self, app_id: str, user_id: str) -> bool:
        return bool(await self.scripts.run("sign_out", app_id, user_id))

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        flat = await self.scripts.run("channels", app_id, prefix)
        out = {}
        for i in range(0, len(flat), 3):
            users = int(flat[i + 2])
            out[as_str(flat[i])] = ChannelStats(int(flat[i + 1]), None if users < 0 else users)
        return out

    async def channel_stats(self, app_id: str, channel: str) -> ChannelStats | None:
        total, users = await self.scripts.run("channel_stats", app_id, channel)
        if int(total) <= 0:
            return None
        return ChannelStats(int(total), None if int(users) < 0 else int(users))

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        flat = await self.scripts.run("members", app_id, channel)
        found = {as_str(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return dict(sorted(found.items()))

    async def connection_count(self, app_id: str) -> int:
        return int(await self.scripts.run("connection_count", app_id))

    async def online_users(self, app_id: str, user_ids: tuple[str, ...]) -> list[str]:
        flags = await self.scripts.run("online_users", app_id, *user_ids)
        return [u for u, on in zip(user_ids, flags, strict=True) if int(on)]

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

    async def hit(self, key: str, n: int, ttl: float) -> int:
        return int(await self.scripts.run("hit", key, n, to_ms(ttl)))

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
