"""An example Pushwire extension showing every extension point.

Run it with:   pushwire serve --config examples/extensions/pushwire.toml
(the config names this module: [extensions] modules = ["examples.extensions.push_ext"],
so start the server from the repository root, or put the module on PYTHONPATH).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from pushwire.extensions import Extensions
from pushwire.protocol import messages
from pushwire.protocol.errors import ClientEventRejected

log = logging.getLogger("push_ext")
BANNED_WORDS = {"spam"}


def setup(ext: Extensions) -> None:
    # 1. Middleware on every inbound WebSocket message: reject, modify, or pass on.
    @ext.message_middleware
    async def profanity_filter(call_next: Any, conn: Any, message: dict[str, Any]) -> None:
        data = message.get("data")
        if message.get("event", "").startswith("client-") and isinstance(data, dict):
            text = str(data.get("text", ""))
            if any(w in text.lower() for w in BANNED_WORDS):
                raise ClientEventRejected("Message rejected by the content filter")
        await call_next(conn, message)

    # 2. A handler for one client event name: answer the sender instead of broadcasting.
    @ext.client_event("client-whoami")
    async def whoami(conn: Any, channel: str, data: Any) -> bool:
        conn.send(messages.channel_event("whoami", channel, {"socket_id": conn.socket_id}))
        return False  # no broadcast

    # 3. A custom internal message type, handled on every node of the cluster.
    @ext.internal("announce")
    def announce(payload: dict[str, Any], origin: str) -> None:
        app = ext.api.app(payload["app"]) if ext.api else None
        if app is None:
            return
        msg = messages.channel_event("announcement", payload["channel"], payload["text"])
        ext.api.broadcast_local(app, payload["channel"], msg)  # this node's sockets

    @ext.client_event("client-announce")
    async def client_announce(conn: Any, channel: str, data: Any) -> bool:
        await ext.publish_internal(
            "announce", {"app": conn.app.id, "channel": "announcements", "text": str(data)}
        )
        return False

    # 4. Middleware on the REST API.
    @ext.api_middleware
    async def api_audit(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        log.info("REST %s %s -> %s", request.method, request.path, response.status)
        return response

    # 5. A traffic monitor (this node's traffic; cluster=True for every node's).
    ext.monitor(lambda event: log.debug("traffic %s", event))
