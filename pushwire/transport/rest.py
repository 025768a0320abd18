"""The Pusher REST API over aiohttp: parse, authenticate, call `pushwire.api`, render.

Errors are JSON `{"error": "..."}` with their status (400, 401, 403, 404, 413, 503); never a 200
for a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .. import api
from ..config import App, Config
from ..engine import Engine
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol.frames import loads_checked
from ..protocol.signing import RestAuthError, verify_rest

log = logging.getLogger("pushwire.rest")


def error(status: int, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


def ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


Action = Callable[[web.Request, App, Any], Awaitable[dict[str, Any]]]


class RestApi:
    def __init__(
        self, config: Config, engine: Engine, monitor: TrafficMonitor, metrics: Metrics
    ) -> None:
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
                body = await request.read()
                self._authenticate(request, app, body)
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
                return error(exc.status, exc.message)
            except RestAuthError as exc:
                return error(401, f"Authentication failed: {exc}")
            except web.HTTPRequestEntityTooLarge:
                return error(413, "Request body too large")

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

    def _authenticate(self, request: web.Request, app: App, body: bytes) -> None:
        params = list(request.query.items())
        paths = [request.path]
        raw = request.raw_path.split("?", 1)[0]
        if raw != request.path:
            paths.append(raw)
        for i, path in enumerate(paths):
            try:
                verify_rest(
                    key=app.key,
                    secret=app.secret,
                    method=request.method,
                    path=path,
                    params=params,
                    body=body,
                    now=time.time(),
                    window=self.config.server.timestamp_window,
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

    async def _terminate(self, request: web.Request, app: App, body: Any) -> dict[str, Any]:
        return await api.terminate(self.engine, app, request.match_info["user_id"])
