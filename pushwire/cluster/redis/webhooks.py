"""`RedisWebhookStore`: webhook jobs in Redis (a hash of jobs and a sorted set of due times),
so queued webhooks survive a node restart and each is taken by exactly one node."""

from __future__ import annotations

from .scripts import Scripts


class RedisWebhookStore:
    """Satisfies `pushwire.webhooks.WebhookStore`; failures raise `base.Unavailable`."""

    def __init__(self, scripts: Scripts, max_size: int) -> None:
        self.max_size = max_size
        self.scripts = scripts  # (the node id is not used by the webhook scripts)

    async def add(self, job_id: str, job: bytes, due: float) -> bool:
        return bool(await self.scripts.run("wh_add", job_id, job, repr(due), self.max_size))

    async def cancel(self, job_id: str) -> bool:
        return bool(await self.scripts.run("wh_cancel", job_id))

    async def take_due(self, now: float, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        return [bytes(j) for j in await self.scripts.run("wh_take", repr(now), limit)]

    async def size(self) -> int:
        return int(await self.scripts.run("wh_size"))
