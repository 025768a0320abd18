"""A node's records as a whole over Redis Cluster: `resync` and `reap`, in steps, each step
one group (a channel, a user, an app) in one atomic script.

On one server both are a single script. Here a node's records span every shard, so:

- Each group's step is atomic and reports that group's transitions exactly (occupied /
  vacated, member added / removed with its version, user online / offline): a transition is
  found by exactly one step, as on one server.
- `resync` takes a new incarnation, opens the node index to it (adding the snapshot's
  groups first, so the index stays a superset), sets the node's records in every group of
  the index and the snapshot (pipelined: one round trip per shard), then rewrites the index
  to exactly the groups it holds. A resync that fails midway is run again whole by the
  engine's next heartbeat (every step is idempotent).
- `reap` claims the dead node in the registry (one reaper at a time: `reap_begin`, a claim
  with a ttl), freezes its index (a reaped node adds no group any more), removes its records
  group by group, each only if it belongs to the reaped incarnation or an older one, and
  marks each group (the node's late writes there are refused), then unregisters it. A reaper
  that dies midway leaves the claim to expire; the next one finishes the work, and announces
  only the transitions of the groups it removed itself.
- The app's channel index is told of each occupied / vacated after the step (`ChannelIndex`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from ..base import AppSnapshot, Changes
from ..redis.scripts import as_str, to_ms
from .index import NodeIndex, app_field, channel_field, user_field
from .scripts import ClusterScripts
from .state import ChannelIndex

Call = tuple[Any, ...]


def _parse(field: str) -> tuple[str, str, str]:
    """(kind, app, name) of an index field."""
    kind, _, rest = field.partition("\n")
    app, _, name = rest.partition("\n")
    return kind, app, name


class Records:
    def __init__(
        self,
        scripts: ClusterScripts,
        index: NodeIndex,
        channels: ChannelIndex,
        claim_ttl: float,
    ) -> None:
        self.node = scripts.node
        self._scripts = scripts
        self._index = index
        self._channels = channels
        self._claim_ms = to_ms(claim_ttl)

    async def resync(self, snapshot: dict[str, AppSnapshot]) -> Changes:
        membership = self._scripts.membership
        membership.synced = membership.primaries_changed
        inc = membership.renew()
        wanted: dict[str, Call] = {}  # field -> its set_* arguments after (node, inc, mode)
        for app, snap in snapshot.items():
            if snap.connections > 0:
                wanted[app_field(app)] = (snap.connections,)
            for ch in {*snap.channels, *snap.members}:
                members = {
                    uid: [orjson.dumps(info).decode(), n]
                    for uid, (info, n) in snap.members.get(ch, {}).items()
                }
                wanted[channel_field(app, ch)] = (
                    snap.channels.get(ch, 0),
                    orjson.dumps(members) if members else "",
                )
            for uid, n in snap.users.items():
                wanted[user_field(app, uid)] = (n,)
        fresh = {f: self._index.token() for f in wanted}
        flat = await self._scripts.run(
            "index", "open", self.node, inc, *(x for f, t in fresh.items() for x in (f, t))
        )
        tokens = _pairs(flat)
        changes, held = await self._steps(list(tokens), inc, "sync", wanted)
        await self._scripts.run(
            "index", "reset", self.node, inc, *(x for f in held for x in (f, tokens[f]))
        )
        self._index.reset({f: tokens[f] for f in held})
        return changes

    async def reap(self, node: str) -> Changes:
        got = await self._scripts.run("reap_begin", node, self._claim_ms)
        if got is None:
            return Changes()
        # an incarnation lost to a failover of the registry: every earlier one is reaped
        inc = as_str(got) or f"{time.time_ns():016x}0000"
        fields = [as_str(f) for f in await self._scripts.run("index", "freeze", node, inc)]
        changes, _ = await self._steps(fields, inc, "reap", {}, node)
        await self._scripts.run("index", "drop", node, inc)
        await self._scripts.run("reap_end", node, inc)
        if node == self.node:
            self._scripts.membership.registered = False
        return changes

    async def _steps(
        self,
        fields: list[str],
        inc: str,
        mode: str,
        wanted: dict[str, Call],
        node: str = "",
    ) -> tuple[Changes, list[str]]:
        """Run each group's step for `node` (this one by default); returns the transitions
        and the fields of the groups it holds records in afterwards."""
        node = node or self.node
        calls: dict[str, list[tuple[str, Call]]] = {"c": [], "u": [], "a": []}
        for field in dict.fromkeys([*fields, *wanted]):
            kind, app, name = _parse(field)
            want = wanted.get(field, (0, "") if kind == "c" else (0,))
            if kind == "a":
                calls["a"].append((field, (app, node, inc, mode, *want)))
            elif kind in calls:
                calls[kind].append((field, (app, name, node, inc, mode, *want)))
        results = await asyncio.gather(
            *(
                self._scripts.many(script, [args for _, args in calls[kind]])
                for kind, script in (("c", "set_channel"), ("u", "set_user"), ("a", "set_app"))
            )
        )
        changes, held = Changes(), []
        marks: dict[str, list[tuple[str, int, bool]]] = {}
        for (field, _), r in zip(calls["c"], results[0], strict=True):
            _, app, ch = _parse(field)
            occupied, vacated, added, removed, cv, holds = r
            if occupied or vacated:
                (changes.occupied if occupied else changes.vacated).append((app, ch))
                marks.setdefault(app, []).append((ch, int(cv), bool(occupied)))
            for i in range(0, len(added), 3):
                uid, info, version = as_str(added[i]), orjson.loads(added[i + 1]), added[i + 2]
                changes.added.append((app, ch, uid, info, int(version)))
            for i in range(0, len(removed), 2):
                changes.removed.append((app, ch, as_str(removed[i]), int(removed[i + 1])))
            if holds:
                held.append(field)
        for (field, _), (online, offline, holds) in zip(calls["u"], results[1], strict=True):
            _, app, uid = _parse(field)
            if online:
                changes.online.append((app, uid))
            if offline:
                changes.offline.append((app, uid))
            if holds:
                held.append(field)
        held.extend(f for (f, _), holds in zip(calls["a"], results[2], strict=True) if holds)
        for app, app_marks in marks.items():
            await self._channels.mark(app, app_marks)
        return changes, held


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {as_str(flat[i]): as_str(flat[i + 1]) for i in range(0, len(flat), 2)}
