"""`/tap`: a WebSocket that streams the traffic monitor as JSON lines (`pushwire tap`).

The request is signed like a REST call (`GET /tap` with auth_key, auth_timestamp, auth_version,
auth_signature, and `app`, optional `channel` prefix): only the app's secret holder sees its
traffic. Events of other apps are never sent. A slow reader loses events (bounded queue), it
never slows the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from ..config import Config
from ..monitor import TrafficMonitor
from ..protocol.signing import RestAuthError, verify_rest


class TapEndpoint:
    def __init__(self, config: Config, monitor: TrafficMonitor) -> None:
        self.config = config
        self.monitor = monitor

    async def handle(self, request: web.Request) -> web.StreamResponse:
        app = self.config.app_by_id(request.query.get("app", ""))
        if app is None:
            return web.json_response({"error": "Unknown app (?app=ID)"}, status=404)
        try:
            verify_rest(
                key=app.key,
                secret=app.secret,
                method="GET",
                path="/tap",
                params=list(request.query.items()),
                body=b"",
                now=time.time(),
                window=self.config.server.timestamp_window,
            )
        except RestAuthError as exc:
            return web.json_response({"error": f"Authentication failed: {exc}"}, status=401)
        prefix = request.query.get("channel", "")
        ws = web.WebSocketResponse(compress=False, heartbeat=30)
        await ws.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

        def listener(event: dict[str, Any]) -> None:
            if event.get("app") != app.id:
                return
            if prefix and not str(event.get("channel") or "").startswith(prefix):
                return
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

        self.monitor.add(listener, cluster=True)
        sender = asyncio.create_task(self._send(ws, queue))
        try:
            async for _ in ws:  # the tap client sends nothing; wait for it to go
                pass
        finally:
            self.monitor.remove(listener)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    @staticmethod
    async def _send(ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await queue.get()
            await ws.send_str(orjson.dumps(event).decode())
