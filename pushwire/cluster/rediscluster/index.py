"""`NodeIndex`: where this node may hold records, kept in its own slot (`p:{n:N}:idx`), so
that a reaper finds every channel, user and app of a dead node without scanning the cluster.

The rule: the index is a superset of the groups where the node holds records. An entry is
added (and confirmed) before the node's first write to its group, and dropped only once the
node holds nothing there, checked on the group itself:

- `use(field, adds=True)` wraps a write: it adds the entry first when this process does not
  know it (one round trip per group, the first time), and pins it while the write runs.
- A write that leaves the node holding nothing in its group (its script says so) makes the
  entry a candidate; `flush` (each heartbeat) takes the candidates no write is running on,
  reads the group's owner mark (`own`: present while the node holds records there), and
  drops those entries whose owner mark is gone, each only if still at the token this process
  wrote (an entry added again meanwhile has a new token).

An `add` is refused (NOTREG) once a reaper froze the index: a reaped node adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.exceptions import RedisClusterException, RedisError

from ..base import Unavailable
from .scripts import ClusterScripts


class Use:
    """One write on a group: set `holds` from its script's answer."""

    holds = True


def channel_field(app: str, channel: str) -> str:
    return f"c\n{app}\n{channel}"


def user_field(app: str, user: str) -> str:
    return f"u\n{app}\n{user}"


def app_field(app: str) -> str:
    return f"a\n{app}"


class NodeIndex:
    def __init__(self, scripts: ClusterScripts) -> None:
        self._scripts = scripts
        self._keys = scripts.keys
        self.node = scripts.node
        self._membership = scripts.membership
        self.tokens: dict[str, str] = {}  # field -> token: entries this process knows
        self._pins: dict[str, int] = {}  # writes in flight per field
        self._adding: dict[str, asyncio.Future[None]] = {}
        self._candidates: set[str] = set()
        self._seq = 0

    def token(self) -> str:
        self._seq += 1
        return f"{self._seq:x}"

    def own_key(self, field: str, node: str) -> str:
        """The owner mark of `node` in the group `field` names."""
        kind, _, rest = field.partition("\n")
        if kind == "a":
            return self._keys.aown(rest, node)
        app, _, name = rest.partition("\n")
        if kind == "c":
            return self._keys.cown(app, name, node)
        return self._keys.uown(app, name, node)

    @contextlib.asynccontextmanager
    async def use(self, field: str, adds: bool = True) -> AsyncIterator[Use]:
        self._pins[field] = self._pins.get(field, 0) + 1
        self._candidates.discard(field)
        use = Use()
        try:
            if adds:
                await self._ensure(field)
            yield use
        finally:
            left = self._pins[field] - 1
            if left:
                self._pins[field] = left
            else:
                del self._pins[field]
            if not use.holds:
                self._candidates.add(field)

    async def _ensure(self, field: str) -> None:
        while field not in self.tokens:
            pending = self._adding.get(field)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            fut = self._adding[field] = asyncio.get_running_loop().create_future()
            try:
                token = self.token()
                inc = self._membership.incarnation
                await self._scripts.run("index", "add", self.node, inc, field, token)
                self.tokens[field] = token
            finally:
                del self._adding[field]
                fut.set_result(None)

    async def flush(self) -> None:
        """Drop the entries of groups this node no longer holds records in (see the module
        doc). Errors leave them (a superset is correct, only larger)."""
        fields = [f for f in self._candidates if f not in self._pins and f in self.tokens]
        self._candidates.difference_update(fields)
        if not fields:
            return
        taken = {f: self.tokens.pop(f) for f in fields}
        try:
            pipe = self._scripts.client.pipeline()
            for f in fields:
                pipe.get(self.own_key(f, self.node))
            marks = await pipe.execute(raise_on_error=False)
            gone = [
                f
                for f, m in zip(fields, marks, strict=True)
                if m is None or (isinstance(m, bytes) and m[:1] == b"~")
            ]
            for f in fields:
                if f not in gone and f not in self.tokens:
                    self.tokens[f] = taken[f]  # holds records after all (or unknown)
            flat = [x for f in gone for x in (f, taken[f])]
            if flat:
                await self._scripts.run("index", "del", self.node, "", *flat)
        except (Unavailable, RedisError, RedisClusterException, OSError):
            for f, t in taken.items():
                self.tokens.setdefault(f, t)
            self._candidates.update(f for f in taken if f not in self._pins)

    def reset(self, tokens: dict[str, str]) -> None:
        """The entries as the server has them now (after a resync or a registration)."""
        self.tokens = dict(tokens)
        self._candidates.clear()
