"""Extension points, loaded from `[extensions] modules = ["my_pkg.push_ext"]`.

Each module defines `setup(ext: Extensions) -> None` and registers what it needs:

- `ext.message_middleware(fn)`: `async fn(call_next, conn, message)` sees every inbound
  WebSocket message (a dict, after JSON decoding). It may inspect or modify `message`, pass it
  on with `await call_next(conn, message)`, reject it by raising a `PusherError` (the client
  gets `pusher:error` with its code), or short-circuit by returning without calling next.
  Middlewares run in registration order.
- `ext.client_event(name)(fn)`: `async fn(conn, channel, data) -> bool | None` runs for the
  client event `name` after Pusher's checks (enabled, private/presence, subscribed, size,
  rate). Return False to stop the default broadcast (e.g. to answer or store it instead).
- `ext.internal(kind)(fn)`: `fn(payload, origin_node)` (sync or async) handles a custom
  internal message type on every node; `await ext.publish_internal(kind, payload)` sends one
  from anywhere (payload: a JSON-serialisable dict; it crosses the cluster bus as JSON).
- `ext.api` (an `ExtensionApi`): what an extension may do to the server: look up apps,
  deliver to this node's subscribers of a channel, publish to a channel or a user on every
  node. Extensions never see the engine, the hub or the backends.
- `ext.api_middleware(fn)`: an aiohttp middleware `async fn(request, handler)` around the REST
  API routes (`/apps/...` and `/users/...`), before signature checks: auth, quotas, logging.
- `ext.monitor(fn, cluster=False)`: `fn(event)` receives the traffic: every inbound client
  message (`kind` "in", processed and raw), every receipt the server sends to one client
  ("out"), every published event ("publish", once per channel), connects and disconnects.
  With `cluster=True` it receives the traffic of every node.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .apps.model import App
from .config import Config
from .connection import Connection
from .engine import Engine, InternalHandler
from .protocol.frames import Outbound

NextFn = Callable[[Connection, dict[str, Any]], Awaitable[None]]
MessageMiddleware = Callable[[NextFn, Connection, dict[str, Any]], Awaitable[None]]
ClientEventHandler = Callable[[Connection, str, Any], Awaitable[bool | None]]
ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiMiddleware = Callable[[web.Request, ApiHandler], Awaitable[web.StreamResponse]]
Monitor = Callable[[dict[str, Any]], None]


class ExtensionError(Exception):
    """An extension module could not be loaded (start-up stops with this message)."""


class ExtensionApi:
    """The small, typed surface extensions get (built by the server around its engine)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.config = engine.config
        self.node = engine.node

    def app(self, app_id: str) -> App | None:
        return self._engine.apps.by_id(app_id)

    def broadcast_local(self, app: App, channel: str, msg: Outbound) -> int:
        """Deliver to this node's subscribers of `channel`; returns how many got it."""
        return self._engine.hub.broadcast(app, channel, msg, None)

    async def publish(self, app: App, channel: str, msg: Outbound) -> None:
        """Deliver to every subscriber of `channel` on every node (raises Unavailable)."""
        await self._engine.publish(app, channel, msg, None)

    async def send_to_user(self, app: App, user_id: str, msg: Outbound) -> None:
        await self._engine.send_to_user(app, user_id, msg)

    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        await self._engine.publish_internal(kind, payload)

    def on_internal(self, kind: str, fn: InternalHandler) -> None:
        self._engine.internal.on(kind, fn)


class Extensions:
    def __init__(self, api: ExtensionApi | None = None) -> None:
        self.api = api
        self.message_middlewares: list[MessageMiddleware] = []
        self.client_events: dict[str, ClientEventHandler] = {}
        self.api_middlewares: list[ApiMiddleware] = []
        self.monitors: list[tuple[Monitor, bool]] = []

    @property
    def config(self) -> Config:
        return self._api().config

    def _api(self) -> ExtensionApi:
        if self.api is None:
            raise RuntimeError("this needs a server: build Extensions with an ExtensionApi")
        return self.api

    def message_middleware(self, fn: MessageMiddleware) -> MessageMiddleware:
        self.message_middlewares.append(fn)
        return fn

    def client_event(self, name: str) -> Callable[[ClientEventHandler], ClientEventHandler]:
        if not name.startswith("client-"):
            raise ValueError(f"client event handlers need a client- name, got {name!r}")

        def register(fn: ClientEventHandler) -> ClientEventHandler:
            self.client_events[name] = fn
            return fn

        return register

    def internal(self, kind: str) -> Callable[[InternalHandler], InternalHandler]:
        def register(fn: InternalHandler) -> InternalHandler:
            self._api().on_internal(kind, fn)
            return fn

        return register

    def api_middleware(self, fn: ApiMiddleware) -> ApiMiddleware:
        self.api_middlewares.append(fn)
        return fn

    def monitor(self, fn: Monitor, cluster: bool = False) -> Monitor:
        self.monitors.append((fn, cluster))
        return fn

    async def publish_internal(self, kind: str, payload: dict[str, Any]) -> None:
        """Deliver `payload` to the handlers of `kind` on every node (this one included)."""
        await self._api().publish_internal(kind, payload)

    def chain(self, final: NextFn) -> NextFn:
        """The middleware chain ending in `final` (the protocol's own dispatch)."""
        call: NextFn = final
        for mw in reversed(self.message_middlewares):
            call = _link(mw, call)
        return call


def _link(mw: MessageMiddleware, nxt: NextFn) -> NextFn:
    async def step(conn: Connection, message: dict[str, Any]) -> None:
        await mw(nxt, conn, message)

    return step


def _setup_of(name: str) -> Callable[[Extensions], None]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        raise ExtensionError(f"extension module {name!r} cannot be imported: {exc}") from None
    setup = getattr(module, "setup", None)
    if not callable(setup):
        raise ExtensionError(f"extension module {name!r} has no setup(ext) function")
    return setup  # type: ignore[no-any-return]


def check(modules: tuple[str, ...] | list[str]) -> None:
    """Fail fast (ExtensionError) if a module cannot be imported or has no setup."""
    for name in modules:
        _setup_of(name)


def load(modules: tuple[str, ...] | list[str], ext: Extensions) -> Extensions:
    for name in modules:
        _setup_of(name)(ext)
    return ext
