"""A test extension: short-circuit and modifying middleware, an API middleware that can
refuse, and a monitor whose events a test can read back through the API middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushwire.extensions import Extensions

SEEN: list[dict[str, Any]] = []


def setup(ext: Extensions) -> None:
    @ext.message_middleware
    async def shape(call_next: Any, conn: Any, message: dict[str, Any]) -> None:
        if message.get("event") == "client-drop":
            return  # short-circuit: nothing happens
        if message.get("event") == "client-shout" and isinstance(message.get("data"), dict):
            message["data"]["text"] = str(message["data"].get("text", "")).upper()
        await call_next(conn, message)

    @ext.api_middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("X-Block"):
            return web.json_response({"error": "blocked by extension"}, status=403)
        if request.headers.get("X-Monitor-Dump"):
            return web.json_response(SEEN[-200:])
        response: web.StreamResponse = await handler(request)
        response.headers["X-Ext"] = "yes"
        return response

    ext.monitor(SEEN.append)
