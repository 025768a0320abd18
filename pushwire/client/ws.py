"""An asyncio Pusher-protocol WebSocket client (works with Pushwire and any Pusher server).

    client = PushwireClient("app-key", port=6001, authorizer=my_signer)
    await client.connect()
    chat = await client.subscribe("presence-room")      # waits for subscription_succeeded
    chat.bind("message", lambda data, meta: print(data))
    await chat.trigger("client-typing", {"on": True})     # only client- events
    await client.close()

Reconnection follows Pusher's close-code ranges: 4000-4099 never (the server refused us),
4100-4199 after a backoff, 4200-4299 at once, anything else (network loss) with capped
exponential backoff; channels are subscribed again and a signed-in user signs in again.

Recovery (Pushwire's channel history, `recover=True`, the default): the client remembers the
last position (`epoch`, `offset`) of each channel and asks for what it missed when it
subscribes again. The missed events arrive first, in order, each once; then the channel
emits `pushwire:recovered`, or `pushwire:recovery_failed` (history gone or too far behind:
fetch your state again). An offset skipped on the way (an event lost) makes the channel
subscribe again from its last position. Servers without history (any Pusher server) ignore
the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("pushwire.client")

Handler = Callable[[Any, dict[str, Any]], Any]  # (data, metadata) -> None | awaitable
# (socket_id, channel_name) -> auth dict ({"auth", "channel_data"?, "shared_secret"?})
Authorizer = Callable[[str, str], Mapping[str, str] | Awaitable[Mapping[str, str]]]
UserAuthenticator = Callable[[str], Mapping[str, str] | Awaitable[Mapping[str, str]]]


class SubscriptionError(Exception):
    pass


class ClientEventError(ValueError):
    pass


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Members:
    """Presence members: `me` (your id and info), `members` (id -> info), `count`."""

    def __init__(self) -> None:
        self.members: dict[str, Any] = {}
        self.me: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        return len(self.members)


class Channel:
    def __init__(self, client: PushwireClient, name: str) -> None:
        self.client = client
        self.name = name
        self.subscribed = False
        self.members = Members()
        self._handlers: dict[str, list[Handler]] = {}
        self._global: list[Callable[[str, Any], Any]] = []
        self._ready: asyncio.Future[Channel] | None = None
        self.position: tuple[str, int] | None = None  # (epoch, offset) of the last event
        self._refilling = False  # subscribing again to recover a gap

    def _take(self, msg: dict[str, Any]) -> str:
        """Take the position of a positioned frame: "new"; "seen" for one seen already (it
        must not be delivered twice); "gap" when events before it never came (it is not
        taken: the channel recovers from its last position, see `_refill`)."""
        epoch, offset = msg.get("epoch"), msg.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            return "new"
        pos = self.position
        if pos is not None and pos[0] == epoch:
            if offset <= pos[1]:
                return "seen"
            if offset > pos[1] + 1:
                return "gap"
        self.position = (epoch, offset)
        return "new"

    def bind(self, event: str, handler: Handler) -> Handler:
        self._handlers.setdefault(event, []).append(handler)
        return handler

    def unbind(self, event: str, handler: Handler | None = None) -> None:
        if handler is None:
            self._handlers.pop(event, None)
        elif handler in self._handlers.get(event, []):
            self._handlers[event].remove(handler)

    def bind_global(self, handler: Callable[[str, Any], Any]) -> None:
        self._global.append(handler)

    async def trigger(self, event: str, data: Any) -> None:
        """Send a client event; names must start with `client-` (else ClientEventError)."""
        if not event.startswith("client-"):
            raise ClientEventError(f"client events must start with 'client-', got {event!r}")
        if not self.subscribed:
            raise ClientEventError(f"not subscribed to {self.name}")
        await self.client._send({"event": event, "channel": self.name, "data": data})

    async def _emit(self, event: str, data: Any, meta: dict[str, Any]) -> None:
        for h in list(self._handlers.get(event, [])):
            await _maybe(h(data, meta))
        for g in list(self._global):
            await _maybe(g(event, data))


class PushwireClient:
    def __init__(
        self,
        key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 6001,
        ssl: bool = False,
        authorizer: Authorizer | None = None,
        auth_endpoint: str | None = None,
        user_authenticator: UserAuthenticator | None = None,
        user_auth_endpoint: str | None = None,
        auth_headers: Mapping[str, str] | None = None,
        reconnect: bool = True,
        max_backoff: float = 30.0,
        activity_timeout: float = 120.0,
        pong_timeout: float = 30.0,
        subscribe_timeout: float = 10.0,
        recover: bool = True,
    ) -> None:
        scheme = "wss" if ssl else "ws"
        self.url = f"{scheme}://{host}:{port}/app/{key}?protocol=7&client=pushwire-py&version=0.1.0"
        self.authorizer = authorizer
        self.auth_endpoint = auth_endpoint
        self.user_authenticator = user_authenticator
        self.user_auth_endpoint = user_auth_endpoint
        self.auth_headers = dict(auth_headers or {})
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.subscribe_timeout = subscribe_timeout
        self.recover = recover
        self.socket_id: str | None = None
        self.state = "initialized"
        self.channels: dict[str, Channel] = {}
        self.user: dict[str, Any] | None = None
        self._global: list[Callable[[str, Any], Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._signin: asyncio.Future[dict[str, Any]] | None = None
        self._want_signin = False
        self.close_code: int | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self._refill_task: asyncio.Task[None] | None = None
        self.errors: deque[dict[str, Any]] = deque(maxlen=100)  # the last pusher:errors
        self.errors_seen = 0  # all of them

    # Connection -----------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        """Connect (and keep reconnecting in the background); returns once connected."""
        self._closing = False
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = "disconnected"

    def bind_global(self, handler: Callable[[str, Any], Any]) -> None:
        """`handler(event, data)` for every event (channel events included)."""
        self._global.append(handler)

    def unbind_global(self, handler: Callable[[str, Any], Any]) -> None:
        if handler in self._global:
            self._global.remove(handler)

    async def _run(self) -> None:
        backoff = min(1.0, self.max_backoff)
        while not self._closing:
            code = await self._session_once()
            self._connected.clear()
            self.socket_id = None
            for ch in self.channels.values():
                ch.subscribed = False
            if self._closing or not self.reconnect:
                break
            if code is not None and 4000 <= code < 4100:
                self.state = "failed"  # refused: reconnecting unchanged would fail again
                log.warning("server refused the connection (%s): not reconnecting", code)
                break
            if code is not None and 4200 <= code < 4300:
                delay = 0.0
            else:
                delay = backoff
                backoff = min(backoff * 2, self.max_backoff)
            self.state = "unavailable"
            await asyncio.sleep(delay)
            if code is not None and 4200 <= code < 4300:
                backoff = min(1.0, self.max_backoff)

    async def _session_once(self) -> int | None:
        assert self._session is not None
        self.state = "connecting"
        try:
            ws = await self._session.ws_connect(self.url, autoping=True, heartbeat=None)
        except (aiohttp.ClientError, OSError) as exc:
            log.info("cannot connect to %s: %s", self.url, exc)
            return None
        self._ws = ws
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=self.activity_timeout)
                except TimeoutError:
                    await self._send({"event": "pusher:ping", "data": {}})
                    try:
                        msg = await ws.receive(timeout=self.pong_timeout)
                    except TimeoutError:
                        await ws.close(code=4201)
                        return 4201
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    self.close_code = ws.close_code
                    return ws.close_code
                await self._on_message(orjson.loads(msg.data))
                await asyncio.sleep(0)  # a server that floods us does not hold the loop
        except (aiohttp.ClientError, OSError):
            return None
        finally:
            self._ws = None

    async def _send(self, obj: Mapping[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("not connected")
        await self._ws.send_str(orjson.dumps(obj).decode())

    async def _on_message(self, msg: dict[str, Any]) -> None:
        event = msg.get("event", "")
        data: Any = msg.get("data")
        if isinstance(data, str) and (event.startswith("pusher") or data[:1] in ("{", "[")):
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(data)
        channel = msg.get("channel")
        if event == "pusher:connection_established":
            self.socket_id = data["socket_id"]
            self.activity_timeout = min(self.activity_timeout, float(data["activity_timeout"]))
            self.state = "connected"
            self._connected.set()
            self._resume_task = asyncio.create_task(self._resume())
        elif event == "pusher:ping":
            await self._send({"event": "pusher:pong", "data": {}})
        elif event == "pusher:error":
            self.errors.append(data)
            self.errors_seen += 1
        elif event == "pusher:signin_success":
            self.user = orjson.loads(data["user_data"])
            if self._signin is not None and not self._signin.done():
                self._signin.set_result(self.user)
        if channel is not None and channel in self.channels:
            ch = self.channels[channel]
            # "pushwire:position": an event left out for us, its position only
            if event == "pushwire:position" or ("offset" in msg and not event.startswith("pusher")):
                taken = ch._take(msg)
                if taken == "gap":
                    self._refill(ch)
                if taken != "new" or event == "pushwire:position":
                    return  # seen already (never delivered twice, globally neither), or a gap
            await self._channel_event(ch, event, data, msg)
        if not event.startswith("pusher_internal:"):
            for g in list(self._global):
                await _maybe(g(event, data))

    async def _channel_event(self, ch: Channel, event: str, data: Any, msg: dict[str, Any]) -> None:
        meta = {"user_id": msg["user_id"]} if "user_id" in msg else {}
        if "offset" in msg and not event.startswith("pusher"):
            meta["offset"], meta["epoch"] = msg["offset"], msg["epoch"]
        if event == "pusher_internal:subscription_succeeded":
            ch.subscribed = True
            ch._refilling = False
            recovered = msg.get("recovered")
            if isinstance(msg.get("epoch"), str) and isinstance(msg.get("offset"), int):
                ch.position = (msg["epoch"], msg["offset"])
            elif recovered is False:
                ch.position = None
            if isinstance(data, dict) and "presence" in data:
                ch.members.members = dict(data["presence"].get("hash", {}))
            if ch._ready is not None and not ch._ready.done():
                ch._ready.set_result(ch)
            await ch._emit(
                "pusher:subscription_succeeded", ch.members if ch.members.me else data, meta
            )
            if recovered is not None:
                name = "pushwire:recovered" if recovered else "pushwire:recovery_failed"
                await ch._emit(name, {"epoch": msg.get("epoch"), "offset": msg.get("offset")}, {})
        elif event == "pusher:subscription_error":
            if ch._ready is not None and not ch._ready.done():
                ch._ready.set_exception(SubscriptionError(str(data)))
            await ch._emit(event, data, meta)
        elif event == "pusher_internal:member_added":
            ch.members.members[data["user_id"]] = data.get("user_info")
            await ch._emit(
                "pusher:member_added", {"id": data["user_id"], "info": data.get("user_info")}, meta
            )
        elif event == "pusher_internal:member_removed":
            info = ch.members.members.pop(data["user_id"], None)
            await ch._emit("pusher:member_removed", {"id": data["user_id"], "info": info}, meta)
        elif event == "pusher_internal:subscription_count":
            await ch._emit("pusher:subscription_count", data, meta)
        else:
            await ch._emit(event, data, meta)

    def _refill(self, ch: Channel) -> None:
        """Events of `ch` were lost on the way (an offset was skipped): subscribe again from
        the last position, so the server sends them, in order, before anything newer."""
        if ch._refilling or not ch.subscribed:
            return
        ch._refilling = True
        log.warning("events of %s missing after offset %s: recovering them", ch.name, ch.position)

        async def again() -> None:
            try:
                await self._send({"event": "pusher:unsubscribe", "data": {"channel": ch.name}})
                await self._subscribe(ch)
            except Exception:
                ch._refilling = False
                log.exception("recovering the missing events of %s failed", ch.name)

        self._refill_task = asyncio.create_task(again())

    async def _resume(self) -> None:
        """After (re)connecting: sign in again and subscribe every channel again."""
        try:
            if self._want_signin:
                await self.signin()
            for ch in list(self.channels.values()):
                await self._subscribe(ch)
        except Exception:
            log.exception("re-subscribing after reconnect failed")

    # Channels -------------------------------------------------------------------------------
    async def subscribe(self, name: str) -> Channel:
        """Subscribe and wait for the server's confirmation (raises SubscriptionError)."""
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel(self, name)
        if ch.subscribed:
            return ch
        await self._subscribe(ch)
        assert ch._ready is not None
        return await asyncio.wait_for(asyncio.shield(ch._ready), self.subscribe_timeout)

    async def _subscribe(self, ch: Channel) -> None:
        ch._ready = asyncio.get_running_loop().create_future()
        ch._ready.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        data: dict[str, Any] = {"channel": ch.name}
        if self.recover and not ch.name.startswith("#"):
            pos = ch.position
            data["recover"] = {} if pos is None else {"epoch": pos[0], "offset": pos[1]}
        if ch.name.startswith(("private-", "presence-")):
            auth = await self._authorize(ch.name)
            data["auth"] = auth["auth"]
            if "channel_data" in auth:
                data["channel_data"] = auth["channel_data"]
                cd = orjson.loads(auth["channel_data"])
                ch.members.me = {"id": str(cd["user_id"]), "info": cd.get("user_info")}
        await self._send({"event": "pusher:subscribe", "data": data})

    async def _authorize(self, channel: str) -> Mapping[str, str]:
        assert self.socket_id is not None
        if self.authorizer is not None:
            return dict(await _maybe(self.authorizer(self.socket_id, channel)))
        if self.auth_endpoint is not None:
            return await self._post_form(
                self.auth_endpoint, {"socket_id": self.socket_id, "channel_name": channel}
            )
        raise SubscriptionError(f"{channel} needs an authorizer or an auth_endpoint")

    async def _post_form(self, url: str, form: dict[str, str]) -> dict[str, str]:
        assert self._session is not None
        async with self._session.post(url, data=form, headers=self.auth_headers) as r:
            if r.status != 200:
                raise SubscriptionError(f"auth endpoint answered {r.status}")
            result: dict[str, str] = await r.json(content_type=None)
            return result

    async def unsubscribe(self, name: str) -> None:
        ch = self.channels.pop(name, None)
        if ch is not None and self._ws is not None:
            await self._send({"event": "pusher:unsubscribe", "data": {"channel": name}})

    async def unsubscribe_all(self) -> None:
        for name in list(self.channels):
            await self.unsubscribe(name)

    def channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    # Users ----------------------------------------------------------------------------------
    async def signin(self, timeout: float = 10.0) -> dict[str, Any]:
        """Sign in (pusher:signin) with the user authenticator; returns the user data."""
        assert self.socket_id is not None
        if self.user_authenticator is not None:
            auth = dict(await _maybe(self.user_authenticator(self.socket_id)))
        elif self.user_auth_endpoint is not None:
            auth = await self._post_form(self.user_auth_endpoint, {"socket_id": self.socket_id})
        else:
            raise RuntimeError("signin needs a user_authenticator or a user_auth_endpoint")
        self._want_signin = True
        self._signin = asyncio.get_running_loop().create_future()
        await self._send({"event": "pusher:signin", "data": auth})
        user = await asyncio.wait_for(self._signin, timeout)
        await self._send(
            {"event": "pusher:subscribe", "data": {"channel": f"#server-to-user-{user['id']}"}}
        )
        return user
