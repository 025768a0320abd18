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
- `ext.api_middleware(fn)`: an aiohttp middleware `async fn(request, handler)` around the REST
  API routes (`/apps/...` and `/users/...`), before signature checks: auth, quotas, logging.
- `ext.monitor(fn, cluster=False)`: `fn(event)` receives the traffic: every inbound client
  message (`kind` "in", processed and raw), every receipt the server sends to one client
  ("out"), every published event ("publish", once per channel), connects and disconnects.
  With `cluster=True` it receives the traffic of every node.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .connection import Connection

NextFn = Callable[[Connection, dict[str, Any]], Awaitable[None]]
MessageMiddleware = Callable[[NextFn, Connection, dict[str, Any]], Awaitable[None]]
ClientEventHandler = Callable[[Connection, str, Any], Awaitable[bool | None]]
InternalHandler = Callable[[dict[str, Any], str], Any]
ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiMiddleware = Callable[[web.Request, ApiHandler], Awaitable[web.StreamResponse]]
Monitor = Callable[[dict[str, Any]], None]


class ExtensionError(Exception):
    """An extension module could not be loaded (start-up stops with this message)."""


class Extensions:
    def __init__(self) -> None:
        self.message_middlewares: list[MessageMiddleware] = []
        self.client_events: dict[str, ClientEventHandler] = {}
        self.internal_handlers: dict[str, list[InternalHandler]] = {}
        self.api_middlewares: list[ApiMiddleware] = []
        self.monitors: list[tuple[Monitor, bool]] = []
        # set by the server: the adapter (its `hub` is this node's state, for local delivery)
        # and the configuration
        self.adapter: Any = None
        self.config: Any = None
        self._publish_internal: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None

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
            self.internal_handlers.setdefault(kind, []).append(fn)
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
        if self._publish_internal is None:
            raise RuntimeError("publish_internal is available once the server has started")
        await self._publish_internal(kind, payload)

    async def run_internal(self, kind: str, payload: dict[str, Any], origin: str) -> None:
        for fn in self.internal_handlers.get(kind, []):
            result = fn(payload, origin)
            if inspect.isawaitable(result):
                await result

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


def load(modules: tuple[str, ...] | list[str], ext: Extensions | None = None) -> Extensions:
    ext = ext or Extensions()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ExtensionError(f"extension module {name!r} cannot be imported: {exc}") from None
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise ExtensionError(f"extension module {name!r} has no setup(ext) function")
        setup(ext)
    return ext
