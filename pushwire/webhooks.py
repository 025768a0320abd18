"""Webhooks (Pusher's seven kinds), queued, delayed, batched, signed and retried.

Flow: `Webhooks.emit(app, kind, channel, **fields)` is called where a happening is decided:
once for the whole deployment, by the engine (occupied/vacated, member changes) or the
protocol handler (client events, cache misses). For every webhook of the app whose
`event_types` and `filter` match, a job goes into a `WebhookStore` with a due time:
- `channel_vacated` and `member_removed` are due `delay` seconds later, under a fixed job id;
  a `channel_occupied` / `member_added` for the same channel (and user) within the delay
  cancels that job and is not sent either: a client that reconnects in time causes neither.
- with batching (`batch_ms` > 0) every job waits that long so that one POST carries many.
Workers (`concurrency` of them) take due jobs, group them per app and webhook, POST
`{"time_ms", "events": [...]}` with `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 of
the body with the app secret), and on any non-2xx answer or network error put the jobs back
with exponential backoff (1 s doubling, at most 60 s) until `retry_for` seconds (default
600: well over Pusher's 5 minutes) have passed since the first attempt. The store is bounded;
past `max_queue` jobs new ones are dropped with a log line and a counter. Sending never runs
on the delivery path: `emit` only adds a job (in memory, or one Redis call in a cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from .aio import cancel_and_wait
from .apps.index import AppIndex
from .apps.model import App, Webhook
from .config import Config
from .happenings import Happening
from .protocol.signing import webhook_signature

log = logging.getLogger("pushwire.webhooks")

DEBOUNCED = {
    Happening.CHANNEL_VACATED: Happening.CHANNEL_OCCUPIED,
    Happening.MEMBER_REMOVED: Happening.MEMBER_ADDED,
}
CANCELS = {v: k for k, v in DEBOUNCED.items()}


@dataclass
class WebhookSettings:
    retry_for: float = 600.0
    max_queue: int = 100_000
    concurrency: int = 8
    timeout: float = 10.0
    max_batch: int = 100


class WebhookStore(Protocol):
    """Pending webhook jobs. `take_due` hands each job to exactly one caller."""

    async def add(self, job_id: str, job: bytes, due: float) -> bool:
        """Queue a job (replacing one with the same id); False when the store is full."""

    async def cancel(self, job_id: str) -> bool:
        """Remove a pending job; True if it was there."""

    async def take_due(self, now: float, limit: int) -> list[bytes]: ...

    async def size(self) -> int: ...


class MemoryWebhookStore:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.jobs: dict[str, tuple[float, bytes]] = {}
        self.heap: list[tuple[float, str]] = []

    async def add(self, job_id: str, job: bytes, due: float) -> bool:
        if job_id not in self.jobs and len(self.jobs) >= self.max_size:
            return False
        self.jobs[job_id] = (due, job)
        heapq.heappush(self.heap, (due, job_id))
        return True

    async def cancel(self, job_id: str) -> bool:
        return self.jobs.pop(job_id, None) is not None

    async def take_due(self, now: float, limit: int) -> list[bytes]:
        out: list[bytes] = []
        while self.heap and self.heap[0][0] <= now and len(out) < limit:
            due, job_id = heapq.heappop(self.heap)
            entry = self.jobs.get(job_id)
            if entry is not None and entry[0] == due:  # else cancelled or replaced
                del self.jobs[job_id]
                out.append(entry[1])
        return out

    async def size(self) -> int:
        return len(self.jobs)


def _matches(hook: Webhook, name: Happening, channel: str | None) -> bool:
    if name not in hook.event_types:
        return False
    f = hook.filter
    if channel is not None:
        if f.channel_name_starts_with and not channel.startswith(f.channel_name_starts_with):
            return False
        if f.channel_name_ends_with and not channel.endswith(f.channel_name_ends_with):
            return False
    return True


class Webhooks:
    def __init__(self, config: Config, apps: AppIndex, store: WebhookStore) -> None:
        self.config = config
        self.apps = apps
        self.store = store
        srv = config.server
        self.s = WebhookSettings(
            retry_for=srv.webhook_retry_for,
            max_queue=srv.webhook_queue_size,
            concurrency=srv.webhook_concurrency,
            timeout=srv.webhook_timeout,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None
        self.wake = asyncio.Event()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.given_up = 0
        self._pending_adds: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # workers sending right now

    _seq = 0

    def _next_id(self) -> str:
        """Ids that sort in creation order (stores break due-time ties by id)."""
        Webhooks._seq += 1
        return f"{time.time_ns():020d}-{Webhooks._seq:09d}-{uuid.uuid4().hex[:8]}"

    @property
    def enabled(self) -> bool:
        return any(a.webhooks for a in self.apps.apps)

    # Producing ---------------------------------------------------------------------------
    def wants(self, app: App, kind: Happening) -> bool:
        return any(kind in h.event_types for h in app.webhooks)

    def emit(self, app: App, kind: Happening, channel: str | None = None, **fields: Any) -> None:
        """Record a happening; returns at once (the job is stored by a background task)."""
        if not self.wants(app, kind):
            return
        name = kind
        event: dict[str, Any] = {"name": name.value}
        if channel is not None:
            event["channel"] = channel
        event.update({k: v for k, v in fields.items() if v is not None})
        task = asyncio.ensure_future(self._add(app, name, channel, event))
        self._pending_adds.add(task)
        task.add_done_callback(self._pending_adds.discard)

    async def _add(
        self, app: App, name: Happening, channel: str | None, event: dict[str, Any]
    ) -> None:
        now = time.time()
        user = event.get("user_id", "")
        for i, hook in enumerate(app.webhooks):
            if not _matches(hook, name, channel):
                continue
            if name in CANCELS:  # a pending vacated/removed for the same thing: send neither
                key = f"{CANCELS[name]}|{app.id}|{channel}|{user}|{i}"
                if await self.store.cancel(key):
                    continue
            due = now + app.webhook_batch_ms / 1000
            if name in DEBOUNCED:
                job_id = f"{name}|{app.id}|{channel}|{user}|{i}"
                due += app.webhook_delay
            else:
                job_id = self._next_id()
            job = orjson.dumps(
                {
                    "app": app.id,
                    "hook": i,
                    "event": event,
                    "time_ms": int(now * 1000),
                    "first": now,
                    "attempt": 0,
                }
            )
            if not await self.store.add(job_id, job, due):
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error(
                        "webhook queue full (%d jobs): dropped %d webhook(s) so far",
                        self.s.max_queue,
                        self.dropped,
                    )
        self.wake.set()

    # Sending ------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            return
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.s.timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.s.concurrency)]

    async def stop(self, grace: float = 5.0) -> None:
        """Let queued, due webhooks go out for up to `grace` seconds, then stop."""
        if self._pending_adds:
            await asyncio.wait(list(self._pending_adds), timeout=grace)
        if self.tasks:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._busy():
                await asyncio.sleep(0.05)
        for t in self.tasks:
            await cancel_and_wait(t)
        if self.session is not None:
            await self.session.close()

    def _busy(self) -> bool:
        return self._in_flight > 0

    async def _worker(self) -> None:
        while True:
            try:
                jobs = await self.store.take_due(time.time(), self.s.max_batch)
            except Exception as exc:  # the store (Redis) is unreachable: try again shortly
                log.debug("webhook store unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if not jobs:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):  # not wait_for: it can lose a cancel
                        await self.wake.wait()
                continue
            self._in_flight += 1
            try:
                # one POST per event, or per app and webhook for apps that batch
                posts: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
                for n, raw in enumerate(jobs):
                    job = orjson.loads(raw)
                    app = self.apps.by_id(job["app"])
                    batch = app is not None and app.webhook_batch_ms > 0
                    posts.setdefault((job["app"], job["hook"], -1 if batch else n), []).append(job)
                for (app_id, hook, _), group in posts.items():  # in order, per worker
                    await self._post((app_id, hook), group)
            finally:
                self._in_flight -= 1

    async def _post(self, key: tuple[str, int], jobs: list[dict[str, Any]]) -> None:
        app = self.apps.by_id(key[0])
        if app is None or key[1] >= len(app.webhooks):
            return
        hook = app.webhooks[key[1]]
        body = orjson.dumps(
            {"time_ms": min(j["time_ms"] for j in jobs), "events": [j["event"] for j in jobs]}
        )
        headers = {
            **hook.headers,
            "Content-Type": "application/json",
            "X-Pusher-Key": app.key,
            "X-Pusher-Signature": webhook_signature(app.secret, body),
        }
        assert self.session is not None
        try:
            async with self.session.post(hook.url, data=body, headers=headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                reason = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.sent += len(jobs)
            return
        self.failed += 1
        now = time.time()
        for job in jobs:
            if now - job["first"] >= self.s.retry_for:
                self.given_up += 1
                log.error(
                    "webhook to %s given up after %.0f s: %s", hook.url, self.s.retry_for, reason
                )
                continue
            job["attempt"] += 1
            backoff = min(60.0, 2.0 ** (job["attempt"] - 1))
            log.warning(
                "webhook to %s failed (%s): retry %d in %.0f s",
                hook.url,
                reason,
                job["attempt"],
                backoff,
            )
            await self.store.add(self._next_id(), orjson.dumps(job), now + backoff)

    async def queue_size(self) -> int:
        try:
            return await self.store.size()
        except Exception:
            return -1
