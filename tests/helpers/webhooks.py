"""A real HTTP webhook receiver that checks every signature with the `pusher` PyPI SDK's own
helper (`validate_webhook`), can refuse chosen events (503) to test retries, and waits for the
webhook a test expects. The `receiver` fixture (tests/helpers/fixtures.py) starts one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pusher
from aiohttp import web

from tests.helpers import TIMEOUT, free_port

SDKS = {
    "hook-key": pusher.Pusher(app_id="1", key="hook-key", secret="hook-secret"),
    "other-key": pusher.Pusher(app_id="2", key="other-key", secret="other-secret"),
}


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.posts: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}  # event name -> how many attempts to refuse
        self.attempts: list[str] = []  # event names of every attempt
        self.changed = asyncio.Event()
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers["X-Pusher-Key"]
        assert request.headers["X-Custom"] == "yes"
        # the SDK helper checks the signature and returns the decoded body (None if bad)
        decoded = SDKS[key].validate_webhook(
            request.headers["X-Pusher-Key"], request.headers["X-Pusher-Signature"], body.decode()
        )
        assert decoded is not None, "bad webhook signature"
        names = [e["name"] for e in decoded["events"]]
        self.attempts.extend(names)
        if any(self.fail.get(n, 0) > 0 for n in names):
            for n in names:
                self.fail[n] = self.fail.get(n, 0) - 1
            return web.Response(status=503)
        self.posts.append(decoded)
        self.events.extend(decoded["events"])
        self.changed.set()
        return web.Response(text="ok")

    def names(self, channel: str | None = None) -> list[str]:
        return [e["name"] for e in self.events if channel is None or e.get("channel") == channel]

    async def wait_for(self, pred, what: str = "", timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(f"no webhook {what}; got {self.events}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A Receiver listening on a free port of 127.0.0.1 (POST /hook) until the block ends."""
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", r.port).start()
        yield r
    finally:
        await runner.cleanup()
