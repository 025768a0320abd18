"""A minimal raw Pusher client for server tests (aiohttp), plus a signed REST caller and a
wait for a node's readiness (`wait_ready`)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from pushwire.protocol.signing import channel_string_to_sign, sign_auth, sign_rest
from tests.helpers import TIMEOUT

KEY, SECRET = "app-key", "app-secret"


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession):
        self.ws = ws
        self.session = session
        self.socket_id = ""

    @classmethod
    async def connect(cls, url: str, handshake: bool = True) -> Client:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, autoping=True)
        c = cls(ws, session)
        if handshake:
            ev = await c.recv()
            assert ev["event"] == "pusher:connection_established", ev
            c.socket_id = orjson.loads(ev["data"])["socket_id"]
        return c

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r}")
        return orjson.loads(msg.data)

    async def recv_event(self, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip to the next event called `name`."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.recv()
                if ev["event"] == name:
                    return ev

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert that no frame arrives within `wait` seconds. Where the frame that must not come
        would come on a channel, `nothing_before_marker` shows it without a wait."""
        try:
            msg = await self.ws.receive(timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {msg.data!r}")

    async def sync(self) -> None:
        """Wait until the server has handled every frame sent so far: a ping, answered in order
        (the next frame must be the pong)."""
        await self.send({"event": "pusher:ping", "data": {}})
        assert (await self.recv())["event"] == "pusher:pong"

    async def send(self, obj: Any) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else orjson.dumps(obj).decode())

    async def subscribe(
        self, channel: str, user: Any = None, info: Any = None, key: str = KEY, secret: str = SECRET
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            cd = None
            if channel.startswith("presence-"):
                cd = orjson.dumps({"user_id": user, "user_info": info}).decode()
                data["channel_data"] = cd
            data["auth"] = sign_auth(
                key, secret, channel_string_to_sign(self.socket_id, channel, cd)
            )
        await self.send({"event": "pusher:subscribe", "data": data})
        return await self.recv()

    async def told_to_go(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes the socket: the close code when a `pusher:error`
        with that same code came first (how a server tells a client to go: 4200 on a
        restart), else None."""
        code = None
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return code if msg.data == code else None
                ev = orjson.loads(msg.data)
                if ev["event"] == "pusher:error":
                    code = data(ev)["code"]

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def data(ev: dict[str, Any]) -> Any:
    d = ev.get("data")
    return orjson.loads(d) if isinstance(d, str) else d


async def rest(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
    key: str = KEY,
    secret: str = SECRET,
    raw_body: bytes | None = None,
    timestamp: int | None = None,
    sign_path: str | None = None,
) -> tuple[int, Any]:
    payload = raw_body if raw_body is not None else (b"" if body is None else orjson.dumps(body))
    query = sign_rest(key, secret, method, sign_path or path, params or {}, payload, timestamp)
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            base + path,
            params=query,
            data=payload,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


async def wait_ready(base: str, timeout: float = TIMEOUT) -> None:
    """Poll `GET /ready` on `base` until it answers 200 (a port not listening yet, or a 503,
    is not ready yet); fail after `timeout` with the last answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(base + "/ready") as r:
                    if r.status == 200:
                        return
                    last = f"{r.status} {await r.text()}"
            except aiohttp.ClientConnectionError as exc:
                last = repr(exc)
            assert asyncio.get_running_loop().time() < deadline, f"{base} not ready: {last}"
            await asyncio.sleep(0.05)


MARKER = "test-marker"


async def nothing_before_marker(
    base: str,
    channel: str,
    *clients: Client,
    app_id: str = "app-id",
    key: str = KEY,
    secret: str = SECRET,
) -> None:
    """Assert that each of `clients` gets nothing more on `channel` from what happened so far:
    trigger a marker event there (REST on the node at `base`) and check that it is the next
    frame each one receives. Per-channel order is a Broker guarantee, so a frame published before
    the marker and not yet received would come first. The clients get nothing on other channels
    meanwhile."""
    status, body = await rest(
        base,
        "POST",
        f"/apps/{app_id}/events",
        {"name": MARKER, "channel": channel, "data": "m"},
        key=key,
        secret=secret,
    )
    assert status == 200, body
    for c in clients:
        ev = await c.recv()
        assert (ev.get("event"), ev.get("channel"), ev.get("data")) == (MARKER, channel, "m"), ev
