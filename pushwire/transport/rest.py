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
from aiohttp.http_exceptions import PayloadEncodingError
from aiohttp.streams import EofStream

from .. import api
from ..config import App, Config
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


def ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


Action = Callable[[web.Request, App, Any], Awaitable[dict[str, Any]]]


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
    authenticate: Callable[[web.Request, App, bool], None],
) -> bytes:
    """Read a REST body only after every check that does not need it: size announced in
    Content-Length, app, key, timestamp and signature. The read is bounded in size and time;
    a client that goes away mid-upload costs one counter, not a traceback."""
    limit = config.server.max_request_body
    length = request.content_length
    if length is not None and length > limit:
        metrics.client_errors["body_too_large"] += 1
        raise BodyTooLarge(f"Request body too large: {length} bytes (limit {limit})")
    has_body = request.can_read_body
    authenticate(request, app, has_body)
    if not has_body:
        body = b""
    else:
        try:
            async with asyncio.timeout(config.server.body_timeout), budget.hold(length or limit):
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
    verify_body_md5(list(request.query.items()), body)
    return body


class RestApi:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        monitor: TrafficMonitor,
        metrics: Metrics,
        budget: BodyBudget,
    ) -> None:
        self.budget = budget
        self.config = config
        self.engine = engine
        self.monitor = monitor
        self.metrics = metrics

    def routes(self) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]]:
        return [
            ("POST", "/apps/{app_id}/events", self._wrap(self._events)),
            ("POST", "/apps/{app_id}/batch_events", self._wrap(self._batch)),
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

    def _wrap(self, action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            response = await run(request)
            route = request.match_info.route.resource
            self.metrics.rest[(route.canonical if route else "?", response.status)] += 1
            return response

        async def run(request: web.Request) -> web.Response:
            try:
                app = self._app(request)
                body = await read_body(
                    request, self.config, self.metrics, self.budget, app, self._authenticate
                )
                parsed: Any = None
                if request.method == "POST":
                    try:
                        parsed = loads_checked(body) if body else {}
                    except orjson.JSONDecodeError:
                        raise api.ApiError(400, "Request body is not valid JSON") from None
                    except ValueError as exc:
                        raise api.ApiError(400, f"Request body refused: {exc}") from None
                return ok(await action(request, app, parsed))
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

        return handler

    def _app(self, request: web.Request) -> App:
        app_id = request.match_info.get("app_id")
        if app_id is None:  # prefix-less route: the app is named by its key
            key = request.query.get("auth_key", "")
            app = self.config.app_by_key(key)
            if app is None:
                raise RestAuthError("Unknown auth_key")
        else:
            found = self.config.app_by_id(app_id)
            if found is None:
                raise api.ApiError(404, f"Unknown app id {app_id!r}")
            app = found
        if not app.enabled:
            raise api.ApiError(403, "Application disabled")
        return app

    def _authenticate(self, request: web.Request, app: App, has_body: bool) -> None:
        """Everything but the body's MD5: a request that is not signed with the app's secret
        (or is too old) is refused before its body is read."""
        params = list(request.query.items())
        paths = [request.path]
        raw = request.raw_path.split("?", 1)[0]
        if raw != request.path:
            paths.append(raw)
        for i, path in enumerate(paths):
            try:
                verify_rest(
                    key=app.key,
                    secret=app.secrets(time.time()),
                    method=request.method,
                    path=path,
                    params=params,
                    body=None,
                    now=time.time(),
                    window=self.config.server.timestamp_window,
                    has_body=has_body,
                )
                return
            except RestAuthError:
                if i == len(paths) - 1:
                    raise

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
