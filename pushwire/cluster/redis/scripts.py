"""`Scripts`: the Lua scripts of the Redis backend, run by EVALSHA on one client.

Every script is prefixed with `keys.lua_prelude()` (the key names, and ARGV[1] prefix and
ARGV[2] this node and generation); see `keys.py` for the data model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..base import NotRegistered, Unavailable
from .clients import PrimaryWatch, failure
from .keys import Keys, lua_prelude

LUA_DIR = Path(__file__).parent / "lua"


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def to_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Generations(Protocol):
    """How often the primary (or a shard's) was found replaced since start."""

    @property
    def changes(self) -> int: ...


class Runner(Protocol):
    """What runs the scripts: `Scripts` on one server, or the Redis Cluster backend's
    (the publisher, the webhook store and the state parts work with either)."""

    @property
    def node(self) -> str: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def watch(self) -> Generations: ...

    async def run(self, name: str, *args: Any) -> Any: ...

    async def pipeline(self, name: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]: ...

    def error(self, name: str, exc: ResponseError) -> Unavailable: ...


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

    # scripts whose answer does not depend on the generation (no registration check, no
    # history): valid on whichever primary ran them
    ANY_PRIMARY = frozenset(
        {"resync", "reap", "register", "deregister", "wh_add", "wh_cancel", "wh_take", "wh_size"}
    )

    def _same_primary(self, name: str, generation: str) -> None:
        """Raise when the primary changed while a call ran: it may have run on the new
        primary with the old generation (the connection was made during the call), i.e.
        on records that may lack this node's last writes, so its answer is not trusted (its
        effects, if any, are repaired by the resync that follows)."""
        if self.watch.generation != generation and name not in self.ANY_PRIMARY:
            raise NotRegistered(
                f"node {self.node}: a new {self.watch.role} primary answered: not registered "
                "there yet"
            )

    async def raw(self, name: str, *args: str | bytes | int | float) -> Any:
        """Run script `name` with ARGV = prefix, node, *args; Redis errors are raised as is
        (and `NotRegistered` when the primary changed meanwhile)."""
        me = await self.me()
        generation = self.watch.generation
        argv = (self.keys.prefix, me, *args)
        try:
            result = await self.client.evalsha(self._sha[name], 0, *argv)
        except NoScriptError:
            await self.client.script_load(self._source[name])
            result = await self.client.evalsha(self._sha[name], 0, *argv)
        self._same_primary(name, generation)
        return result

    async def pipeline(
        self, name: str, calls: Sequence[tuple[str | bytes | int | float, ...]]
    ) -> list[Any]:
        """Run script `name` once per argument tuple, in order, in one round trip. Results
        are in call order; a failed call's entry is its exception (Redis errors as is).
        Raises `NotRegistered` when the primary changed meanwhile (see `_same_primary`)."""
        me = await self.me()
        generation = self.watch.generation
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for args in calls:
                pipe.evalsha(self._sha[name], 0, self.keys.prefix, me, *args)
            results = await pipe.execute(raise_on_error=False)
            if attempt == 0 and results and all(isinstance(r, NoScriptError) for r in results):
                await self.client.script_load(self._source[name])  # Redis restarted
                continue
            self._same_primary(name, generation)
            return list(results)
        raise AssertionError("unreachable")

    async def run(self, name: str, *args: str | bytes | int | float) -> Any:
        """`raw`, with every failure as `Unavailable`."""
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
            raise Unavailable(f"Redis unreachable ({name}): {failure(exc)}") from None

    def error(self, name: str, exc: ResponseError) -> Unavailable:
        text = str(exc)
        if text.startswith("NOTREG"):
            return NotRegistered(f"node {self.node} is not registered")
        return Unavailable(f"Redis script {name} failed: {text}")


