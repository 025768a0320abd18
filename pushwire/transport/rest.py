"""The Pusher REST API over aiohttp: parse, authenticate, call `pushwire.api`, render.

Errors are JSON `{"error": "..."}` with their status (400, 401, 403, 404, 413, 503); never a 200
for a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientPayloadError, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import PayloadEncodingError
from aiohttp.streams import EofStream

from .. import api
from ..apps.index import AppIndex
from ..apps.model import App
from ..config import Config
from ..engine import Engine
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol.frames import loads_checked
from ..protocol.signing import RestAuthError, verify_body_md5, verify_rest

log = logging.getLogger("pushwire.rest")


def error(status: int, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


EMPTY = b"{}"  # most answers (every trigger without `info`)


def ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body) if body else EMPTY, content_type="application/json")


_EMPTY_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nDate: "
_EMPTY_TAIL = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n{{}}"


class EmptyOk(web.Response):
    """`200 {}`, the answer of nearly every trigger, written as one piece: byte for byte what
    aiohttp writes for `ok({})` on a kept-alive HTTP/1.1 connection (status line,
    Content-Type, Content-Length, Date, Server), without building, filling and serialising a
    header map for each request (~5 us). Only for the direct dispatch (transport/http.py),
    where no middleware or response signal could want to see or change the headers; any other
    case (HTTP/1.0, a connection that closes, a response already started) is aiohttp's own.
    Public API only (`request.writer`, and `prepared`, `keep_alive`, `write_eof` overridden);
    tests/unit/test_rest_wire.py compares the bytes with aiohttp's on every run."""

    _written = False  # the bytes went out through prepare(): aiohttp has nothing left to do

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = request.writer
        if (
            self.prepared
            or self.keep_alive is False
            or request.version != HttpVersion11
            or not request.keep_alive
            or writer is None
        ):
            return await super().prepare(request)
        await writer.write(empty_ok_bytes())
        await writer.write_eof()
        await writer.drain()  # a client that does not read its answers is not read either
        self._written = True
        return None

    @property
    def prepared(self) -> bool:
        return self._written or super().prepared

    @property
    def keep_alive(self) -> bool | None:
        return True if self._written else super().keep_alive

    async def write_eof(self, data: bytes = b"") -> None:
        if not self._written:
            await super().write_eof(data)


def empty_ok_bytes() -> bytes:
    return (_EMPTY_HEAD + rfc822_formatted_time() + _EMPTY_TAIL).encode()


def wire(response: web.Response) -> bytes:
    """`response` as aiohttp writes it on a kept-alive HTTP/1.1 connection (status line, its
    headers in order, Content-Length, Date, Server, the body), for the raw transport's REST
    fast path (transport/fastpath.py). `EmptyOk` is the prebuilt piece; other answers are
    rendered by the same rules as aiohttp's `Response._start` / `_prepare_headers`."""
    if type(response) is EmptyOk:
        return empty_ok_bytes()
    body = response.body
    assert isinstance(body, bytes) and not response.chunked
    headers = response.headers.copy()
    headers["Content-Length"] = str(len(body))
    if body:
        headers.setdefault("Content-Type", "application/octet-stream")
    if "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    headers.setdefault("Server", SERVER_SOFTWARE)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {response.status} {response.reason}\r\n{lines}\r\n".encode() + body


def ok_direct(body: dict[str, Any]) -> web.Response:
    """`ok()` for the direct dispatch: `EmptyOk` for the empty answer."""
    if not body:
        return EmptyOk(body=EMPTY, content_type="application/json")
    return web.Response(body=orjson.dumps(body), content_type="application/json")


Action = Callable[[web.Request, App, Any], Awaitable[dict[str, Any]]]
Params = list[tuple[str, str]]  # a request's query, in order


EVENTS = "/apps/{app_id}/events"
BATCH_EVENTS = "/apps/{app_id}/batch_events"


class RestRoute:
    """One REST route. `handle` is its aiohttp handler (the app id from the router's match);
    `direct` serves a request whose app id the HTTP layer took from the path itself, without
    the router (transport/http.py's direct dispatch: the ingest routes, when no middleware
    is installed). Both count the request in `pushwire_rest_requests_total`."""

    __slots__ = ("action", "api", "canonical", "counts")

    def __init__(self, api: RestApi, action: Action, canonical: str | None) -> None:
        self.api = api
        self.action = action
        self.canonical = canonical
        self.counts = api.metrics.rest

    async def handle(self, request: web.Request) -> web.Response:
        response = await self.api._run(request, request.match_info.get("app_id"), self.action)
        canonical = self.canonical
        if canonical is None:
            route = request.match_info.route.resource
            canonical = route.canonical if route else "?"
        self.counts[(canonical, response.status)] += 1
        return response

    async def direct(self, request: web.Request, app_id: str) -> web.Response:
        response = await self.api._run(request, app_id, self.action, ok_direct)
        self.counts[(self.canonical or "?", response.status)] += 1
        return response


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class ClientGone(Exception):
    """The client went away mid-request (an aborted upload): nothing to answer."""


class BodyBudget:
    """Bytes of request bodies being read at once. Past `limit` a reader waits for its turn
    while the kernel holds its data (aiohttp stops reading a socket whose buffer is full), so
    hundreds of slow or aborted uploads cannot grow the process's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.limit)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()


async def read_body(
    request: web.Request,
    config: Config,
    metrics: Metrics,
    budget: BodyBudget,
    app: App,
    authenticate: Callable[[web.Request, App, bool, Params], None],
    params: Params,
) -> bytes:
    """Read a REST body only after every check that does not need it: size announced in
    Content-Length, app, key, timestamp and signature. The read is bounded in size and time;
    a client that goes away mid-upload costs one counter, not a traceback. `params` is the
    request's query, parsed once by the caller."""
    limit = config.server.max_request_body
    length = request.content_length
    if length is not None and length > limit:
        metrics.client_errors["body_too_large"] += 1
        raise BodyTooLarge(f"Request body too large: {length} bytes (limit {limit})")
    has_body = request.can_read_body
    authenticate(request, app, has_body, params)
    if not has_body:
        body = b""
    else:
        try:
            if request.content.is_eof():
                # the whole body came with the headers (small requests): it is in memory
                # already, so no time limit or budget applies, and no timer is armed
                body = await request.read()
            else:
                async with (
                    asyncio.timeout(config.server.body_timeout),
                    budget.hold(length or limit),
                ):
                    body = await request.read()
        except TimeoutError:
            metrics.client_errors["body_timeout"] += 1
            raise BodyTimeout(
                f"Request body not received within {config.server.body_timeout:g} s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            metrics.client_errors["body_too_large"] += 1
            raise BodyTooLarge(f"Request body too large (limit {limit} bytes)") from None
        except (ConnectionError, EofStream, ClientPayloadError, PayloadEncodingError) as exc:
            metrics.client_errors["aborted_upload"] += 1
            # the request's stream keeps this exception, and its traceback keeps the frames
            # that keep the stream and its buffered body: a cycle only the garbage collector
            # would free, eventually. Cut it now, so the memory goes with the request.
            exc.__traceback__ = None
            raise ClientGone() from None
    verify_body_md5(params, body)
    return body


class RestApi:
    def __init__(
        self,
        config: Config,
        apps: AppIndex,
        engine: Engine,
        monitor: TrafficMonitor,
        metrics: Metrics,
        budget: BodyBudget,
    ) -> None:
        self.budget = budget
        self.config = config
        self.apps = apps
        self.engine = engine
        self.monitor = monitor
        self.metrics = metrics

    def routes(self) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]]:
        return [
            ("POST", EVENTS, self._wrap(self._events, EVENTS)),
            ("POST", BATCH_EVENTS, self._wrap(self._batch, BATCH_EVENTS)),
            ("GET", "/apps/{app_id}/channels", self._wrap(self._channels)),
            ("GET", "/apps/{app_id}/channels/{channel_name}", self._wrap(self._channel)),
            ("GET", "/apps/{app_id}/channels/{channel_name}/users", self._wrap(self._users)),
            ("GET", "/apps/{app_id}/channels/{channel_name}/history", self._wrap(self._history)),
            (
                "POST",
                "/apps/{app_id}/users/{user_id}/terminate_connections",
                self._wrap(self._terminate),
            ),
            # pusher-http-python sends terminate_connections without the /apps/{id} prefix.
            ("POST", "/users/{user_id}/terminate_connections", self._wrap(self._terminate)),
        ]

    def _wrap(
        self, action: Action, canonical: str | None = None
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """aiohttp's handler for `action`. With `canonical` (the route's path pattern), the
        route can also be served by the HTTP layer's direct dispatch (`RestRoute.direct`)."""
        return RestRoute(self, action, canonical).handle

    async def _run(
        self,
        request: web.Request,
        app_id: str | None,
        action: Action,
        render: Callable[[dict[str, Any]], web.Response] = ok,
    ) -> web.Response:
        """One REST call, every failure rendered: app, size, signature, body, JSON, action."""
        try:
            app = self._app(request, app_id)
            params = list(request.query.items())  # parsed once, for every check
            body = await read_body(
                request,
                self.config,
                self.metrics,
                self.budget,
                app,
                self._authenticate,
                params,
            )
            parsed: Any = None
            if request.method == "POST":
                try:
                    parsed = loads_checked(body) if body else {}
                except orjson.JSONDecodeError:
                    raise api.ApiError(400, "Request body is not valid JSON") from None
                except ValueError as exc:
                    raise api.ApiError(400, f"Request body refused: {exc}") from None
            return render(await action(request, app, parsed))
        except api.ApiError as exc:
            response = error(exc.status, exc.message)
            if exc.retry_after:
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            return response
        except RestAuthError as exc:
            return error(401, f"Authentication failed: {exc}")
        except BodyTooLarge as exc:
            return error(413, str(exc))
        except BodyTimeout as exc:
            return error(408, str(exc))
        except ClientGone:
            return error(400, "The client went away during the request")

    def _app(self, request: web.Request, app_id: str | None) -> App:
        if app_id is None:  # prefix-less route: the app is named by its key
            key = request.query.get("auth_key", "")
            app = self.apps.by_key(key)
            if app is None:
                raise RestAuthError("Unknown auth_key")
        else:
            found = self.apps.by_id(app_id)
            if found is None:
                raise api.ApiError(404, f"Unknown app id {app_id!r}")
            app = found
        if not app.enabled:
            raise api.ApiError(403, "Application disabled")
        return app

    def _authenticate(
        self, request: web.Request, app: App, has_body: bool, params: Params | None = None
    ) -> None:
        """Everything but the body's MD5: a request that is not signed with the app's secret
        (or is too old) is refused before its body is read."""
        if params is None:
            params = list(request.query.items())
        now = time.time()
        secrets = app.secrets(now)
        window = self.config.server.timestamp_window
        path = request.path

        def verify(signed_path: str) -> None:
            verify_rest(
                key=app.key,
                secret=secrets,
                method=request.method,
                path=signed_path,
                params=params,
                body=None,
                now=now,
                window=window,
                has_body=has_body,
            )

        try:
            verify(path)
        except RestAuthError:
            raw = request.raw_path.split("?", 1)[0]
            if raw == path:
                raise
            verify(raw)  # signed over the path as sent (percent-escapes kept), as some SDKs do

    async def _events(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.trigger(self.engine, app, body, self.monitor)

    async def _batch(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.trigger_batch(self.engine, app, body, self.monitor)

    async def _channels(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.channels(self.engine, app, dict(request.query))

    async def _channel(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        name = request.match_info["channel_name"]
        return await api.channel(self.engine, app, name, dict(request.query))

    async def _users(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.users(self.engine, app, request.match_info["channel_name"])

    async def _history(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        name = request.match_info["channel_name"]
        return await api.history(self.engine, app, name, dict(request.query))

    async def _terminate(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.terminate(self.engine, app, request.match_info["user_id"])
