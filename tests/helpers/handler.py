"""Sockets on an in-process handler (`pushwire.testing.FakeConnection`): open one, subscribe it
(signed for private channels, with `recover` for history), and read what it received on a
channel."""

from __future__ import annotations

from typing import Any

import orjson

from pushwire.apps.model import App
from pushwire.protocol.signing import channel_string_to_sign, sign_auth
from pushwire.testing import FakeConnection


async def connect(handler: Any, app: App) -> FakeConnection:
    """An open socket of `app`, its connection_established taken."""
    conn = FakeConnection(app, now=handler.clock())
    await handler.open(conn)
    conn.take()
    return conn


async def subscribe(handler: Any, conn: FakeConnection, channel: str, recover: Any = None) -> None:
    d: dict[str, Any] = {"channel": channel}
    if channel.startswith("private-"):
        d["auth"] = sign_auth(
            conn.app.key, conn.app.secret, channel_string_to_sign(conn.socket_id, channel, None)
        )
    if recover is not None:
        d["recover"] = recover
    await handler.on_text(conn, orjson.dumps({"event": "pusher:subscribe", "data": d}))


def received(conn: FakeConnection, channel: str) -> list[dict[str, Any]]:
    return [e for e in conn.events() if e.get("channel") == channel]


def succeeded(conn: FakeConnection, channel: str) -> dict[str, Any]:
    """The one subscription_succeeded `conn` received on `channel`."""
    found = [
        e for e in received(conn, channel) if e["event"] == "pusher_internal:subscription_succeeded"
    ]
    assert len(found) == 1, conn.events()
    return found[0]
