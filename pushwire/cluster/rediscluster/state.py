"""The `ClusterState` parts over Redis Cluster: per channel (one channel's slot), per app (one
app's slot; a user's records in the user's slot), per key. Each decision that matters is one
script in one slot, so it is one atomic step: the first and last subscriber of a channel, the
first and last member of a presence channel (and the member limit), a user's first and last
socket, the connection quota. What spans slots is done in steps (see `ChannelIndex`, the
node index in `index.py`, resync and reaping in `records.py`). The cache and claims are as
on one server (`redis/state.RedisCacheState`: one key each).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ...protocol.errors import PresenceLimit
from ..base import ChannelStats, Joined, Left, Unavailable
from ..redis.scripts import as_str
from ..redis.state import RedisAppState, RedisChannelState, joined, joining
from ..redis.state import _Part as _RedisPart
from .index import NodeIndex, app_field, channel_field, user_field
from .scripts import ClusterScripts

log = logging.getLogger("pushwire.cluster.rediscluster")

PENDING_MARKS = 10_000  # marks kept for a retry while an app's slot is unreachable


class ChannelIndex:
    """The app's channel index (`p:{a:A}:chs`): which channels may be occupied, for
    `AppState.channels`. A channel's occupied / vacated step is taken in its own slot and
    carries the channel's occupancy version; the index is told after it (another slot) and
    keeps the newest version per channel, so marks that cross on the way are sorted out. A
    mark that cannot be written is kept and tried again at each heartbeat. Readers count
    subscribers in each listed channel's own slot and drop entries found empty."""

    def __init__(self, scripts: ClusterScripts) -> None:
        self._scripts = scripts
        self._pending: dict[tuple[str, str], tuple[int, bool]] = {}

    async def mark(self, app: str, marks: list[tuple[str, int, bool]]) -> None:
        """(channel, occupancy version, occupied) of one app; never raises."""
        flat = [x for ch, v, occ in marks for x in (ch, v, "1" if occ else "0")]
        try:
            await self._scripts.run("chs", "mark", app, *flat)
        except Unavailable as exc:
            log.debug("channel index of %s not written (tried again later): %s", app, exc)
            for ch, v, occ in marks:
                if len(self._pending) < PENDING_MARKS:
                    old = self._pending.get((app, ch))
                    if old is None or old[0] < v:
                        self._pending[(app, ch)] = (v, occ)

    async def retry(self) -> None:
        pending, self._pending = self._pending, {}
        by_app: dict[str, list[tuple[str, int, bool]]] = {}
        for (app, ch), (v, occ) in pending.items():
            by_app.setdefault(app, []).append((ch, v, occ))
        for app, marks in by_app.items():
            await self.mark(app, marks)

    async def read(self, app: str, prefix: str) -> dict[str, ChannelStats]:
        self._scripts.check()
        flat = await self._scripts.run("chs", "read", app, prefix)
        listed = [(as_str(flat[i]), as_str(flat[i + 1])) for i in range(0, len(flat), 2)]
        stats = await self._scripts.many("channel_stats", [(app, ch) for ch, _ in listed])
        out: dict[str, ChannelStats] = {}
        empty: list[str] = []
        for (ch, version), (total, users) in zip(listed, stats, strict=True):
            if int(total) > 0:
                out[ch] = ChannelStats(int(total), None if int(users) < 0 else int(users))
            else:
                empty.extend((ch, version))
        if empty:
            with contextlib.suppress(Unavailable):  # else dropped by the next reader
                await self._scripts.run("chs", "prune", app, *empty)
        return out


class _Part(_RedisPart):
    def __init__(self, scripts: ClusterScripts, index: NodeIndex, channels: ChannelIndex) -> None:
        super().__init__(scripts)
        self.cluster = scripts
        self.index = index
        self.channel_index = channels


class ClusterChannelState(_Part, RedisChannelState):
    """Per channel (see `base.ChannelState`); `channel_stats` and `members` as on one
    server (their scripts read one channel's slot)."""

    async def subscribe(
        self, app_id: str, channel: str, member: tuple[str, Any] | None, limit: int
    ) -> Joined:
        args = joining(member, limit)
        async with self.index.use(channel_field(app_id, channel)) as use:
            res = await self.scripts.run("subscribe", app_id, channel, *args)
            if int(res[0]) < 0:
                use.holds = bool(res[1])
                raise PresenceLimit(f"Presence channel {channel} is full ({limit} members)")
        result = joined(res, member)
        if result.occupied:
            await self.channel_index.mark(app_id, [(channel, int(res[5]), True)])
        return result

    async def unsubscribe(self, app_id: str, channel: str, user_id: str | None) -> Left:
        args = ("0", "") if user_id is None else ("1", user_id)
        async with self.index.use(channel_field(app_id, channel), adds=False) as use:
            total, vacated, removed, version, cv, holds = await self.scripts.run(
                "unsubscribe", app_id, channel, *args
            )
            use.holds = bool(holds)
        if vacated:
            await self.channel_index.mark(app_id, [(channel, int(cv), False)])
        return Left(int(total), bool(vacated), bool(removed), int(version))


class ClusterAppState(_Part, RedisAppState):
    """Per app, and per user in the user's slot (see `base.AppState`); `connection_count`
    and `hit` as on one server."""

    async def connect(self, app_id: str, limit: int) -> bool:
        async with self.index.use(app_field(app_id)) as use:
            admitted, holds = await self.scripts.run("connect", app_id, limit)
            use.holds = bool(holds)
        return bool(admitted)

    async def disconnect(self, app_id: str) -> None:
        async with self.index.use(app_field(app_id), adds=False) as use:
            use.holds = bool(await self.scripts.run("disconnect", app_id))

    async def sign_in(self, app_id: str, user_id: str) -> bool:
        async with self.index.use(user_field(app_id, user_id)) as use:
            first, holds = await self.scripts.run("sign_in", app_id, user_id)
            use.holds = bool(holds)
        return bool(first)

    async def sign_out(self, app_id: str, user_id: str) -> bool:
        async with self.index.use(user_field(app_id, user_id), adds=False) as use:
            last, holds = await self.scripts.run("sign_out", app_id, user_id)
            use.holds = bool(holds)
        return bool(last)

    async def online_users(self, app_id: str, user_ids: tuple[str, ...]) -> list[str]:
        flags = await self.cluster.many("online_users", [(app_id, u) for u in user_ids])
        return [u for u, on in zip(user_ids, flags, strict=True) if int(on[0])]

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        return await self.channel_index.read(app_id, prefix)
