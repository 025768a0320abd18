"""The HTTP server underneath: aiohttp's, with the guards a server on the internet needs.

- A new TCP connection must deliver its first request's headers (a REST call, or the
  WebSocket upgrade) within `handshake_timeout`, or it is closed: silent sockets and
  header-trickling ones cannot hold file descriptors.
- Client mistakes (malformed HTTP, bad frames, aborted uploads) are counted in `/metrics`
  and logged at most once a minute per kind, in one line, never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import ERROR, RequestHandler, RequestPayloadError

from ..metrics import Metrics

log = logging.getLogger("pushwire.http")


class GuardedServer(web.Server):
    def __init__(
        self,
        handler: Any,
        *,
        handshake_timeout: float,
        metrics: Metrics,
        direct: dict[str, DirectHandler] | None = None,
        **kw: Any,
    ):
        self.direct = direct or {}  # the raw transport's REST fast path serves these too
        if direct:
            handler = direct_dispatch(handler, direct)
        super().__init__(handler, **kw)
        self.handshake_timeout = handshake_timeout
        self.metrics = metrics
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}
        inner = self.request_factory

        def factory(*args: Any) -> web.BaseRequest:  # headers parsed: the handshake is done
            timer = self._timers.pop(args[2], None)
            if timer is not None:
                timer.cancel()
            if args[0] is ERROR:  # the request could not be parsed: aiohttp answers 400
                client_error(self.metrics, "malformed_http", "a request could not be parsed")
            return inner(*args)

        self.request_factory = factory

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._timers[handler] = self._loop.call_later(
            self.handshake_timeout, self._expire, handler, transport
        )

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(handler, exc)

    def _expire(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._timers.pop(handler, None)
        client_error(self.metrics, "handshake_timeout", "connection sent no request in time")
        transport.abort()


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, metrics: Metrics, handshake_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._metrics = metrics
        self._handshake_timeout = handshake_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            handshake_timeout=self._handshake_timeout,
            metrics=self._metrics,
            direct=direct_routes(self.app),
            **server._kwargs,
        )


# Direct dispatch of the REST ingest routes ---------------------------------------------------
# aiohttp's router and Application._handle cost ~5 us per request (the path walk over the
# resource index, the match info, the middleware and signal machinery), as much as the whole
# signature check. `POST /apps/{app_id}/events` and `/batch_events` (the hot ones) skip it when
# that changes nothing: no middleware, no on_response_prepare signal, no sub-application, no
# other resource the router would try for such a path first, a path without percent-escapes
# and no `Expect` header (100-continue is the router's expect handler's). Everything else goes
# to the application as before.

DirectHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
_APPS = "/apps/"
_APP_ID = "/apps/{app_id}/"


def direct_routes(app: web.Application) -> dict[str, DirectHandler]:
    """`{"events": handler, ...}`: the routes `POST /apps/{app_id}/<name>` that can be served
    without the router, each by its RestRoute's `direct`; empty when any could not."""
    from .rest import RestRoute

    if app.middlewares or app.on_response_prepare or app.router._matched_sub_app_resources:
        return {}
    out: dict[str, DirectHandler] = {}
    for resource in app.router.resources():
        canonical = resource.canonical
        owners = [getattr(route.handler, "__self__", None) for route in resource]
        if owners and all(isinstance(o, RestRoute) for o in owners):
            for route, owner in zip(resource, owners, strict=True):
                assert isinstance(owner, RestRoute)
                tail = canonical[len(_APP_ID) :]
                if (
                    route.method == "POST"
                    and owner.canonical == canonical
                    and canonical.startswith(_APP_ID)
                    and tail
                    and not any(c in tail for c in "/{}%")
                ):
                    out[tail] = owner.direct
            continue  # the REST API's own routes never match one another's paths
        # the router walks /apps/X/events, /apps/X, /apps and / (its index keys): a resource
        # indexed there might take such a request first
        key = canonical.partition("{")[0].rpartition("/")[0] if "{" in canonical else canonical
        key = key.rstrip("/") or "/"
        if key in ("/", "/apps") or key.startswith(_APPS):
            return {}
    return out


def direct_dispatch(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    routes: dict[str, DirectHandler],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            url = request.rel_url
            path = url.path
            if path.startswith(_APPS) and path == url.raw_path and "Expect" not in request.headers:
                app_id, sep, tail = path[6:].partition("/")
                direct = routes.get(tail) if sep and app_id else None
                if direct is not None and "{" not in app_id and "}" not in app_id:
                    assert isinstance(request, web.Request)
                    return await direct(request, app_id)
        return await handler(request)

    return dispatch


def bearer_token(request: web.BaseRequest) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" without one)."""
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


_last_logged: dict[str, float] = {}


def client_error(metrics: Metrics, kind: str, message: str) -> None:
    """Count a client's mistake; log one line per kind at most once a minute."""
    metrics.client_errors[kind] += 1
    now = time.monotonic()
    if now - _last_logged.get(kind, float("-inf")) >= 60.0:
        _last_logged[kind] = now
        log.info(
            "client error (%s): %s [%d so far; logged at most once a minute]",
            kind,
            message,
            metrics.client_errors[kind],
        )


class QuietClientErrors(logging.Filter):
    """aiohttp logs a traceback for every malformed request and reset connection; those are
    counted where they happen (`GuardedServer`), so their records are dropped here."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body aiohttp drains after the answer (e.g. a refused
        # request's) that does not decode (a Content-Encoding that lies)
        return not isinstance(exc, HttpProcessingError | ConnectionError | RequestPayloadError)
