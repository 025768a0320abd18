"""`/tap`: a WebSocket that streams the traffic monitor as JSON lines (`pushwire tap`).

The request is signed like a REST call (`GET /tap` with auth_key, auth_timestamp, auth_version,
auth_signature, and `app`, optional `channel` prefix): only the app's secret holder sees its
traffic. Events of other apps are never sent. A slow reader loses events (bounded queue), it
never slows the server; a client that sends a message is closed (1003): nothing is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from ..apps.index import AppIndex
from ..config import Config
from ..monitor import TrafficMonitor
from ..protocol.signing import RestAuthError, verify_rest


class TapEndpoint:
    def __init__(self, config: Config, apps: AppIndex, monitor: TrafficMonitor) -> None:
        self.config = config
        self.apps = apps
        self.monitor = monitor

    async def handle(self, request: web.Request) -> web.StreamResponse:
        app = self.apps.by_id(request.query.get("app", ""))
        if app is None:
            return web.json_response({"error": "Unknown app (?app=ID)"}, status=404)
        try:
            verify_rest(
                key=app.key,
                secret=app.secrets(time.time()),
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

        def accept(event: dict[str, Any]) -> bool:
            if event.get("app") != app.id:
                return False
            return not prefix or str(event.get("channel") or "").startswith(prefix)

        apps = self.apps
        return await stream_traffic(
            request, self.monitor, accept, 10_000, lambda: apps.by_id(app.id) == app
        )


async def stream_traffic(
    request: web.Request,
    monitor: TrafficMonitor,
    accept: Callable[[dict[str, Any]], bool],
    maxsize: int,
    still_allowed: Callable[[], bool] = lambda: True,
) -> web.WebSocketResponse:
    """Stream the accepted traffic events (cluster-wide) as JSON text frames until the client
    goes; a reader that falls `maxsize` events behind loses events instead of slowing us.
    The stream closes (1008) once `still_allowed` says no: the credentials it was opened with
    changed (a rotated secret, an app disabled or deleted) or expired."""
    ws = web.WebSocketResponse(compress=False, heartbeat=30, max_msg_size=1024)
    await ws.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)

    def listener(event: dict[str, Any]) -> None:
        if accept(event):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def pump() -> None:
        while True:
            try:
                async with asyncio.timeout(1.0):  # check the credentials at least each second
                    event = await queue.get()
            except TimeoutError:
                event = None
            if not still_allowed():
                await ws.close(code=1008, message=b"credentials changed or expired")
                return
            if event is None:
                continue
            try:
                text = orjson.dumps(event).decode()
            except orjson.JSONEncodeError:  # a stream survives any message
                text = orjson.dumps(
                    {k: event.get(k) for k in ("time_ms", "node", "kind", "app", "socket_id")}
                    | {"error": "event not shown: it cannot be encoded as JSON"}
                ).decode()
            await ws.send_str(text)

    monitor.add(listener, cluster=True)
    sender = asyncio.create_task(pump())
    try:
        async for msg in ws:  # the client sends nothing; wait for it to go
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):  # no reading of floods either
                await ws.close(code=1003, message=b"this stream takes no messages")
    finally:
        monitor.remove(listener)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return ws
