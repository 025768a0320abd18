"""`/pushwire.js` (the browser client) and `/dashboard` (live view of an app).

The dashboard page itself holds no data. Its API answers only with a bearer token that is the
app's secret (that app only) or the server's `dashboard_token` (every app), compared in
constant time, only to `/dashboard/api/session`, which gives a short-lived signed session
token; `/dashboard/api/stats`, `/dashboard/api/trigger` and the WebSocket `/dashboard/api/live`
(the session token in its query: browsers cannot set WebSocket headers; never the secret)
take that session token.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .. import api
from ..apps.index import AppIndex
from ..apps.model import App
from ..config import Config
from ..engine import Engine
from ..metrics import Metrics
from ..monitor import TrafficMonitor
from ..protocol.frames import loads_checked
from ..protocol.signing import same_token
from ..rates import RateHistory
from .http import bearer_token
from .tap import stream_traffic

DASHBOARD_BODY = 64 * 1024  # the trigger form's largest request
SESSION_TTL = 600  # seconds a dashboard session token is valid (the page renews it)
SESSION_PREFIX = "pwds."


def session_token(app: App, expires: int) -> str:
    """`pwds.<app>.<expiry>.<HMAC>`: signed with the app's secret, so every node of a cluster
    can check it, and rotating the secret ends every session."""
    payload = f"{app.id}.{expires}"
    return f"{SESSION_PREFIX}{payload}.{_session_mac(app, payload)}"


def verify_session(app: App, token: str, now: float) -> bool:
    try:
        app_id, expires, mac = token[len(SESSION_PREFIX) :].rsplit(".", 2)
        alive = int(expires) > now
    except ValueError:
        return False
    good = _session_mac(app, f"{app_id}.{expires}")
    return same_token(mac, good) and app_id == app.id and alive


def _session_mac(app: App, payload: str) -> str:
    msg = b"dashboard-session:" + payload.encode()
    return hmac.new(app.secret.encode(), msg, "sha256").hexdigest()


STATIC = Path(__file__).resolve().parent.parent / "static"


class Dashboard:
    def __init__(
        self,
        config: Config,
        apps: AppIndex,
        engine: Engine,
        monitor: TrafficMonitor,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.apps = apps
        self.engine = engine
        self.monitor = monitor
        self.metrics = metrics
        self.js = (STATIC / "pushwire.js").read_bytes()
        self.html = (STATIC / "dashboard.html").read_bytes()
        self.apps_html = (STATIC / "apps.html").read_bytes()
        self.rates = RateHistory(lambda: (metrics.frames_in, metrics.frames_out))

    def install(self, app: web.Application) -> None:
        """The routes, and the rate sampler for the lifetime of `app`."""
        self.routes(app.router)

        async def sampling(app: web.Application) -> Any:
            self.rates.start()
            yield
            self.rates.stop()

        app.cleanup_ctx.append(sampling)

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/pushwire.js", self.script)
        router.add_get("/dashboard", self.page)
        router.add_get("/dashboard/apps", self.apps_page)
        router.add_post("/dashboard/api/session", self.session)
        router.add_get("/dashboard/api/stats", self.stats)
        router.add_post("/dashboard/api/trigger", self.trigger)
        router.add_get("/dashboard/api/live", self.live)

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.js,
            content_type="application/javascript",
            headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
        )

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.html, content_type="text/html", headers={"X-Frame-Options": "DENY"}
        )

    async def apps_page(self, request: web.Request) -> web.Response:
        """The apps page (admin token): it holds no data and talks to /admin/apps."""
        return web.Response(
            body=self.apps_html, content_type="text/html", headers={"X-Frame-Options": "DENY"}
        )

    def _auth(
        self, request: web.Request, app_id: str, token: str | None = None, login: bool = False
    ) -> App:
        """The app, if `token` (else the bearer token) is a valid session token for it, or
        with `login`, the app's secret or the server's dashboard_token."""
        app = self.apps.by_id(app_id)
        if app is None:
            raise web.HTTPNotFound(text='{"error": "Unknown app"}', content_type="application/json")
        if token is None:
            token = bearer_token(request)
        if token.startswith(SESSION_PREFIX):
            ok = verify_session(app, token, time.time())
        elif login:
            admin = self.config.server.dashboard_token
            ok = same_token(token, app.secret) or (bool(admin) and same_token(token, admin))
        else:
            ok = False
        if not ok:
            raise web.HTTPUnauthorized(
                text='{"error": "Bad token: sign in with the app secret or the dashboard token"}',
                content_type="application/json",
            )
        return app

    async def session(self, request: web.Request) -> web.Response:
        """Exchange the app secret, the dashboard token or a valid session token for a new
        short-lived session token: the page keeps only that, and never puts a secret in a
        URL (the live stream's WebSocket URL carries the session token)."""
        app = self._auth(request, request.query.get("app", ""), login=True)
        expires = int(time.time()) + SESSION_TTL
        return web.json_response(
            {"session": session_token(app, expires), "expires_in": SESSION_TTL},
            headers={"Cache-Control": "no-store"},
        )

    async def stats(self, request: web.Request) -> web.Response:
        app = self._auth(request, request.query.get("app", ""))
        channels = await self.engine.channels(app)
        presence: dict[str, list[dict[str, Any]]] = {}
        for name in channels:
            if name.startswith("presence-"):
                members = await self.engine.members(app, name)
                presence[name] = [{"id": k, "info": v} for k, v in list(members.items())[:100]]
        body = {
            "app": app.id,
            "connections": await self.engine.connection_count(app),
            "channels": {
                n: {
                    "subscription_count": s.subscription_count,
                    **({"user_count": s.user_count} if s.user_count is not None else {}),
                }
                for n, s in sorted(channels.items())
            },
            "presence": presence,
            "node": {
                "frames_in": self.metrics.frames_in,
                "frames_out": self.metrics.frames_out,
                "bytes_in": self.metrics.bytes_in,
                "bytes_out": self.metrics.bytes_out,
            },
            "rates": self.rates.series(),
        }
        return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())

    async def trigger(self, request: web.Request) -> web.Response:
        if not bearer_token(request):
            return web.json_response({"error": "Bearer token required"}, status=401)
        if request.content_length is None or request.content_length > DASHBOARD_BODY:
            return web.json_response(
                {"error": f"Body required, at most {DASHBOARD_BODY} bytes"}, status=413
            )
        try:
            async with asyncio.timeout(self.config.server.body_timeout):
                raw = await request.read()  # bounded: Content-Length checked above
        except TimeoutError:
            return web.json_response({"error": "Body not received in time"}, status=408)
        except ConnectionError as exc:
            exc.__traceback__ = None  # see transport/rest.py: free the request's buffers now
            return web.json_response({"error": "client went away"}, status=400)
        try:
            body = loads_checked(raw)
        except ValueError:
            return web.json_response({"error": "Request body is not valid JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "Expected a JSON object"}, status=400)
        app = self._auth(request, str(body.get("app", "")))
        event = {
            "name": body.get("event"),
            "channel": body.get("channel"),
            "data": body.get("data", ""),
        }
        try:
            result = await api.trigger(self.engine, app, event, self.monitor)
        except api.ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.json_response(result)

    async def live(self, request: web.Request) -> web.StreamResponse:
        session = request.query.get("session", "")
        app = self._auth(request, request.query.get("app", ""), session)
        apps = self.apps

        def still_allowed() -> bool:  # the same app settings, and the session not expired
            return apps.by_id(app.id) == app and verify_session(app, session, time.time())

        return await stream_traffic(
            request,
            self.monitor,
            lambda event: event.get("app") == app.id,
            1000,
            still_allowed,
        )
