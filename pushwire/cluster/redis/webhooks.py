"""`RedisWebhookStore`: webhook jobs in Redis (a hash of jobs and a sorted set of due times),
so queued webhooks survive a node restart and each is taken by exactly one node.

Failover. Replication is asynchronous: a job added (or cancelled) just before the primary
died may be missing from (or still in) the new one. So each node remembers what it added and
cancelled during the last `REPLAY_WINDOW` seconds and, when it finds a new primary
(`PrimaryWatch.changes`), does it again there, in order; a job taken already is not queued
again (its id is remembered `REPLAY_WINDOW` seconds). What a failover can do to a webhook:
delay it (until the next poll after the failover), or, when the taking of a job was itself
lost, deliver it twice; never lose it, unless the node that added it dies in the same window.
"""

from __future__ import annotations

import time
from collections import deque

from .scripts import Runner

REPLAY_WINDOW = 30.0  # seconds: well over any replication lag a failover leaves behind


class RedisWebhookStore:
    """Satisfies `pushwire.webhooks.WebhookStore`; failures raise `base.Unavailable`."""

    def __init__(self, scripts: Runner, max_size: int) -> None:
        self.max_size = max_size
        self.scripts = scripts  # (the node id is not used by the webhook scripts)
        # (time, job id, job or None for a cancel, due)
        self._recent: deque[tuple[float, str, bytes | None, float]] = deque()
        self._changes = scripts.watch.changes
        self.replayed = 0

    def _remember(self, job_id: str, job: bytes | None, due: float) -> None:
        now = time.monotonic()
        self._recent.append((now, job_id, job, due))
        while self._recent and self._recent[0][0] < now - REPLAY_WINDOW:
            self._recent.popleft()

    async def _after_failover(self) -> None:
        changes = self.scripts.watch.changes
        if changes == self._changes:
            return
        for _, job_id, job, due in list(self._recent):
            if job is None:
                await self.scripts.run("wh_cancel", job_id)
            else:
                added = await self.scripts.run(
                    "wh_add", job_id, job, repr(due), self.max_size, "1"
                )
                self.replayed += int(added)
        self._changes = changes  # (only once all of it was done again)

    async def add(self, job_id: str, job: bytes, due: float) -> bool:
        await self._after_failover()
        added = bool(
            await self.scripts.run("wh_add", job_id, job, repr(due), self.max_size, "0")
        )
        if added:
            self._remember(job_id, job, due)
        return added

    async def cancel(self, job_id: str) -> bool:
        await self._after_failover()
        self._remember(job_id, None, 0.0)
        return bool(await self.scripts.run("wh_cancel", job_id))

    async def take_due(self, now: float, limit: int) -> list[bytes]:
        await self._after_failover()
        if limit <= 0:
            return []
        taken = await self.scripts.run(
            "wh_take", repr(now), limit, round(REPLAY_WINDOW * 1000)
        )
        return [bytes(j) for j in taken]

    async def size(self) -> int:
        return int(await self.scripts.run("wh_size"))
