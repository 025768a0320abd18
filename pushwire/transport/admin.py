"""`/admin/apps`: manage apps in the app store while the servers run.

Off (404) unless `[server] admin_token` is set; every call needs `Authorization: Bearer
<admin_token>`, compared in constant time. Settings are checked with the same rules as the
config file (400 naming the key and the problem). A change is applied on this node before
the answer, and reaches the other nodes through the store (PostgreSQL: within a second).

    GET    /admin/apps                      every app, with its live connection count
    POST   /admin/apps                      create (settings as a [[apps]] table, JSON)
    GET    /admin/apps/{id}
    PATCH  /admin/apps/{id}                 change some settings
    POST   /admin/apps/{id}/disable | /enable
    POST   /admin/apps/{id}/rotate-secret   {"secret"?: new, "grace"?: seconds}
    DELETE /admin/apps/{id}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..apps.base import AppExists, AppMissing, ReadOnlyStore, StoreError, StoreUnavailable
from ..apps.management import AppAdmin
from ..apps.model import App, app_settings
from ..apps.registry import AppRegistry
from ..config import Config
from ..engine import Engine
from ..protocol.frames import loads_checked
from ..protocol.signing import same_token
from ..tables import ConfigError
from .http import bearer_token

ADMIN_BODY = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json"
    )


class AdminApi:
    def __init__(self, config: Config, registry: AppRegistry, engine: Engine) -> None:
        self.config = config
        self.apps = registry.apps
        self.engine = engine
        self.admin = AppAdmin(registry.store, config.apps_store.secret_grace, registry.reload)

    def routes(self, router: web.UrlDispatcher) -> None:
        if not self.config.server.admin_token:
            return
        g = self._guard
        router.add_get("/admin/apps", g(self.list))
        router.add_post("/admin/apps", g(self.create))
        router.add_get("/admin/apps/{app_id}", g(self.show))
        router.add_patch("/admin/apps/{app_id}", g(self.update))
        router.add_delete("/admin/apps/{app_id}", g(self.delete))
        router.add_post("/admin/apps/{app_id}/disable", g(self.disable))
        router.add_post("/admin/apps/{app_id}/enable", g(self.enable))
        router.add_post("/admin/apps/{app_id}/rotate-secret", g(self.rotate))

    def _guard(self, fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            if not same_token(bearer_token(request), self.config.server.admin_token):
                return _json({"error": "admin API: Authorization: Bearer <admin_token>"}, 401)
            try:
                return await fn(request)
            except ConfigError as exc:
                return _json({"error": str(exc)}, 400)
            except AppMissing as exc:
                return _json({"error": str(exc)}, 404)
            except (AppExists, ReadOnlyStore) as exc:
                return _json({"error": str(exc)}, 409)
            except StoreUnavailable as exc:
                return _json({"error": f"app store unavailable: {exc}"}, 503)
            except StoreError as exc:
                return _json({"error": str(exc)}, 400)

        return handler

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if (request.content_length or 0) > ADMIN_BODY:
            raise ConfigError(f"admin API: body larger than {ADMIN_BODY} bytes")
        try:
            async with asyncio.timeout(self.config.server.body_timeout):
                raw = await request.read()  # bounded by the app's client_max_size
        except TimeoutError:
            raise ConfigError("admin API: the body did not arrive in time") from None
        if not raw:
            return {}
        try:
            body = loads_checked(raw)
        except ValueError:
            raise ConfigError("admin API: the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ConfigError("admin API: expected a JSON object")
        return body

    async def _view(self, app: App) -> dict[str, Any]:
        out = app_settings(app)
        out["connections"] = await self.engine.connection_count(app)
        return out

    def _id(self, request: web.Request) -> str:
        return request.match_info["app_id"]

    async def list(self, request: web.Request) -> web.Response:
        return _json({"apps": [await self._view(a) for a in self.apps.apps]})

    async def show(self, request: web.Request) -> web.Response:
        app = self.apps.by_id(self._id(request))
        if app is None:
            raise AppMissing(f"no app {self._id(request)!r}")
        return _json(await self._view(app))

    async def create(self, request: web.Request) -> web.Response:
        app = await self.admin.create(await self._body(request))
        return _json(await self._view(app), 201)

    async def update(self, request: web.Request) -> web.Response:
        app = await self.admin.update(self._id(request), await self._body(request))
        return _json(await self._view(app))

    async def disable(self, request: web.Request) -> web.Response:
        return _json(await self._view(await self.admin.set_enabled(self._id(request), False)))

    async def enable(self, request: web.Request) -> web.Response:
        return _json(await self._view(await self.admin.set_enabled(self._id(request), True)))

    async def rotate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        app = await self.admin.rotate_secret(
            self._id(request), body.get("secret"), body.get("grace")
        )
        return _json(await self._view(app))

    async def delete(self, request: web.Request) -> web.Response:
        await self.admin.delete(self._id(request))
        return _json({"deleted": self._id(request)})
