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

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..apps.base import AppExists, AppMissing, ReadOnlyStore, StoreError, StoreUnavailable
from ..apps.registry import AppRegistry
from ..config import App, Config, ConfigError, app_settings, parse_app
from ..engine import Engine
from ..protocol.frames import loads_checked

ADMIN_BODY = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json"
    )


class AdminApi:
    def __init__(self, config: Config, registry: AppRegistry, engine: Engine) -> None:
        self.config = config
        self.registry = registry
        self.store = registry.store
        self.engine = engine

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
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            token = self.config.server.admin_token
            if not hmac.compare_digest(given.encode(), token.encode()):
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
        raw = await request.content.read(ADMIN_BODY + 1)
        if not raw:
            return {}
        try:
            body = loads_checked(raw)
        except ValueError:
            raise ConfigError("admin API: the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ConfigError("admin API: expected a JSON object")
        return body

    def _app(self, request: web.Request) -> App:
        app_id = request.match_info["app_id"]
        app = self.config.app_by_id(app_id)
        if app is None:
            raise AppMissing(f"no app {app_id!r}")
        return app

    async def _view(self, app: App) -> dict[str, Any]:
        out = app_settings(app)
        out["connections"] = await self.engine.connection_count(app)
        return out

    async def _write(self, app_id: str, settings: dict[str, Any], create: bool) -> App:
        app = parse_app(settings, f"app {app_id!r}")  # the config file's checks
        for other in self.config.apps:
            if other.key == app.key and other.id != app.id:
                raise AppExists(f"key {app.key!r} belongs to app {other.id!r}")
        if create:
            await self.store.create(app_settings(app))
        else:
            await self.store.update(app_id, app_settings(app))
        await self.registry.reload()  # applied on this node before the answer
        return app

    async def list(self, request: web.Request) -> web.Response:
        return _json({"apps": [await self._view(a) for a in self.config.apps]})

    async def show(self, request: web.Request) -> web.Response:
        return _json(await self._view(self._app(request)))

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        body.setdefault("key", secrets.token_hex(10))
        body.setdefault("secret", secrets.token_hex(20))
        app_id = str(body.get("id", ""))
        if self.config.app_by_id(app_id) is not None:
            raise AppExists(f"app {app_id!r} exists already")
        app = await self._write(app_id, body, create=True)
        return _json(await self._view(app), 201)

    async def update(self, request: web.Request) -> web.Response:
        app = self._app(request)
        body = await self._body(request)
        if "id" in body and body["id"] != app.id:
            raise ConfigError("admin API: an app's id cannot change")
        updated = await self._write(app.id, {**app_settings(app), **body}, create=False)
        return _json(await self._view(updated))

    async def _set_enabled(self, request: web.Request, enabled: bool) -> web.Response:
        app = self._app(request)
        updated = await self._write(
            app.id, {**app_settings(app), "enabled": enabled}, create=False
        )
        return _json(await self._view(updated))

    async def disable(self, request: web.Request) -> web.Response:
        return await self._set_enabled(request, False)

    async def enable(self, request: web.Request) -> web.Response:
        return await self._set_enabled(request, True)

    async def rotate(self, request: web.Request) -> web.Response:
        """A new secret; the old one stays valid for REST signatures and channel/user auth
        for `grace` seconds (default `[apps_store] secret_grace`). Webhooks are signed with
        the new one at once."""
        app = self._app(request)
        body = await self._body(request)
        grace = body.get("grace", self.config.apps_store.secret_grace)
        if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
            raise ConfigError("admin API: 'grace' must be a number of seconds >= 0")
        new = body.get("secret") or secrets.token_hex(20)
        if not isinstance(new, str) or new == app.secret:
            raise ConfigError("admin API: 'secret' must be a new string")
        settings = {
            **app_settings(app),
            "secret": new,
            "previous_secret": app.secret,
            "previous_secret_until": time.time() + float(grace),
        }
        updated = await self._write(app.id, settings, create=False)
        return _json(await self._view(updated))

    async def delete(self, request: web.Request) -> web.Response:
        app = self._app(request)
        await self.store.delete(app.id)
        await self.registry.reload()
        return _json({"deleted": app.id})
