"""A PushwireClient that records what an app sees on one channel (events with their history
offsets, recovery outcomes), for the cluster tests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pushwire.client import PushwireClient
from tests.helpers import TIMEOUT


class Recorder:
    """A PushwireClient on one channel, recording what the app sees."""

    def __init__(self, port: int, channel: str, key: str = "app-key", event: str = "e") -> None:
        self.client = PushwireClient(key, port=port, max_backoff=0.5)
        self.channel = channel
        self.event = event
        self.events: list[tuple[Any, int | None]] = []  # (data, offset)
        self.outcomes: list[str] = []
        self.got = asyncio.Event()

    async def start(self) -> None:
        await self.client.connect()
        ch = await self.client.subscribe(self.channel)

        def on_event(data: Any, meta: dict[str, Any]) -> None:
            self.events.append((data, meta.get("offset")))
            self.got.set()

        ch.bind(self.event, on_event)
        ch.bind("pushwire:recovered", lambda d, m: self.outcomes.append("recovered"))
        ch.bind("pushwire:recovery_failed", lambda d, m: self.outcomes.append("failed"))

    def move_to(self, port: int) -> None:
        """Reconnect to another node from now on."""
        c = self.client
        c.url = c.url.replace(c.url.split("/")[2], f"127.0.0.1:{port}")

    def cut(self) -> None:
        """Drop the socket without a close frame (a network loss)."""
        ws = self.client._ws
        assert ws is not None
        ws._writer.transport.abort()

    def data(self) -> list[Any]:
        return [d for d, _ in self.events]

    async def wait_for(self, n: int, outcome: str | None = None) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.events) < n or (outcome is not None and outcome not in self.outcomes):
                self.got.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self.got.wait()

    async def until(self, data: Any) -> None:
        """Wait for an event carrying `data`: a marker the test triggered last on the channel,
        so that everything published before it has arrived (per-channel order)."""
        async with asyncio.timeout(TIMEOUT):
            while data not in self.data():
                self.got.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self.got.wait()

    async def close(self) -> None:
        await self.client.close()
