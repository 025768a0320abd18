"""The composition root: the only place that picks concrete backends and wires the server."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from . import __version__
from .adapters.base import Adapter
from .adapters.local import LocalAdapter
from .config import Config
from .extensions import Extensions
from .extensions import load as load_extensions
from .handler import PusherHandler
from .hub import Hub
from .metrics import METRICS
from .monitor import TrafficMonitor
from .protocol.errors import ReconnectNow
from .transport.dashboard import Dashboard
from .transport.rest import RestApi
from .transport.tap import TapEndpoint
from .transport.ws import WsEndpoint
from .webhooks import MemoryStore, Webhooks, WebhookStore

log = logging.getLogger("pushwire")

SHUTDOWN_GRACE = 5.0  # seconds for clients to be told and connections to finish on SIGTERM
HANDLER_KEY = web.AppKey("pushwire_handler", PusherHandler)
MONITOR_KEY = web.AppKey("pushwire_monitor", TrafficMonitor)
WEBHOOKS_KEY = web.AppKey("pushwire_webhooks", Webhooks)
ADAPTER_KEY = web.AppKey("pushwire_adapter", Adapter)


def sweep_interval(config: Config) -> float:
    """How often the heartbeat timer runs: often enough to honour the smallest timeout."""
    s = config.server
    smallest = min(
        [float(s.activity_timeout), s.pong_timeout]
        + [a.user_authentication_timeout for a in config.apps if a.enable_user_authentication]
    )
    return max(0.05, min(5.0, smallest / 4))


def rest_routes(config: Config) -> list[tuple[str, str]]:
    api = RestApi(config, LocalAdapter(Hub(time.monotonic)))
    return [(method, path) for method, path, _ in api.routes()]


def make_adapter(config: Config) -> Adapter:
    """Single node (in-memory) unless a Redis URL is configured."""
    clock = time.monotonic
    if config.cluster.redis_url:
        from .adapters.redis import RedisAdapter  # the only place redis is imported

        return RedisAdapter(Hub(clock, cluster_presence=True), config)
    return LocalAdapter(Hub(clock))


def _api_only(mw: Any) -> Any:
    """Run an extension's API middleware on the REST API routes only."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/apps/", "/users/")):
            response: web.StreamResponse = await mw(request, handler)
            return response
        inner: web.StreamResponse = await handler(request)
        return inner

    return middleware


def _gauges(adapter: Adapter, webhooks: Webhooks) -> list[tuple[str, str, dict[str, str], float]]:
    out: list[tuple[str, str, dict[str, str], float]] = []
    for app_id, st in adapter.hub.apps.items():
        labels = {"app": app_id}
        out.append(
            ("pushwire_connections", "open connections on this node", labels, len(st.connections))
        )
        out.append(
            ("pushwire_channels", "occupied channels on this node", labels, len(st.channels))
        )
        out.append(
            (
                "pushwire_subscriptions",
                "channel subscriptions on this node",
                labels,
                sum(len(c.subscribers) for c in st.channels.values()),
            )
        )
        out.append(
            ("pushwire_signed_in_users", "signed-in users on this node", labels, len(st.users))
        )
    for name, value in (
        ("sent", webhooks.sent),
        ("failed", webhooks.failed),
        ("dropped", webhooks.dropped),
        ("given_up", webhooks.given_up),
    ):
        out.append(
            (
                "pushwire_webhooks",
                "webhook deliveries by outcome (counter)",
                {"outcome": name},
                value,
            )
        )
    out.append(
        (
            "pushwire_cluster_bus_up",
            "1 when the cluster bus (Redis) is reachable or not used",
            {},
            1.0 if getattr(adapter, "healthy", True) else 0.0,
        )
    )
    return out


def make_webhooks(config: Config, adapter: Adapter) -> Webhooks:
    """Webhook jobs live in Redis in a cluster (durable, sent once), else in memory."""
    store: WebhookStore
    if config.cluster.redis_url:
        from .adapters.redis import RedisAdapter, RedisWebhookStore

        assert isinstance(adapter, RedisAdapter)
        store = RedisWebhookStore(adapter, config.server.webhook_queue_size)
    else:
        store = MemoryStore(config.server.webhook_queue_size)
    return Webhooks(config, store)


def create_app(
    config: Config, adapter: Adapter | None = None, extensions: Extensions | None = None
) -> web.Application:
    """Build the aiohttp application: WebSocket at /app/{key}, REST API under /apps/.

    `server.role` = websocket or api serves only that side (separated deployment)."""
    clock = time.monotonic
    if adapter is None:
        adapter = make_adapter(config)
    webhooks = make_webhooks(config, adapter)
    adapter.listeners.append(
        lambda app, kind, channel, fields: webhooks.emit(app, kind, channel, **fields)
    )
    ext = extensions or load_extensions(config.extensions)
    monitor = TrafficMonitor("local")
    for watcher, cluster in ext.monitors:
        monitor.add(watcher, cluster)
    adapter.bind_extensions(ext, monitor)
    ext._publish_internal = adapter.publish_internal
    ext.adapter, ext.config = adapter, config
    handler = PusherHandler(config, adapter, clock, webhooks, ext, monitor)
    app = web.Application(
        client_max_size=config.server.max_request_body,
        middlewares=[_api_only(mw) for mw in ext.api_middlewares],
    )
    app[MONITOR_KEY] = monitor
    app[HANDLER_KEY] = handler
    app[ADAPTER_KEY] = adapter
    app[WEBHOOKS_KEY] = webhooks
    role = config.server.role
    if role in ("all", "api"):
        rest = RestApi(config, adapter, monitor)
        for method, path, fn in rest.routes():
            app.router.add_route(method, path, fn)

    async def up(request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok", "version": __version__})

    async def ready(request: web.Request) -> web.Response:
        """Readiness: not shutting down, and (in a cluster) Redis reachable."""
        healthy = getattr(adapter, "healthy", True)
        if state["stopping"] or not healthy:
            reason = "shutting down" if state["stopping"] else "cluster bus (Redis) unreachable"
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        return web.json_response({"status": "ready", "version": __version__})

    async def metrics(request: web.Request) -> web.Response:
        depth = await webhooks.queue_size()
        extra = METRICS.render() + (
            "# HELP pushwire_webhook_queue_depth webhooks waiting to be sent\n"
            "# TYPE pushwire_webhook_queue_depth gauge\n"
            f"pushwire_webhook_queue_depth {depth}\n"
        )
        return web.Response(
            text=extra,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    state = {"stopping": False}
    app.router.add_get("/up", up)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    METRICS.gauges.append(lambda: _gauges(adapter, webhooks))

    endpoint = WsEndpoint(handler)
    if role in ("all", "websocket"):
        app.router.add_get("/app/{key}", endpoint.handle)
    app.router.add_get("/tap", TapEndpoint(config, monitor).handle)
    Dashboard(config, adapter, monitor).routes(app.router)

    async def lifecycle(app: web.Application) -> Any:
        loop = asyncio.get_running_loop()
        interval = sweep_interval(config)
        timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal timer
            try:
                handler.sweep()
            except Exception:
                log.exception("heartbeat sweep failed")
            timer = loop.call_later(interval, tick)

        await adapter.start()
        await webhooks.start()
        timer = loop.call_later(interval, tick)
        yield
        timer.cancel()
        await webhooks.stop(SHUTDOWN_GRACE)  # queued, due webhooks get the grace time
        await adapter.stop()

    async def goodbye(app: web.Application) -> None:
        """Graceful stop, before aiohttp closes sockets: tell every client to reconnect (4200)
        and let each connection's handler finish, so the cluster sees members leave now."""
        state["stopping"] = True
        err = ReconnectNow("Server shutting down, reconnect")
        for st in adapter.hub.apps.values():
            for conn in list(st.connections.values()):
                conn.send_error_and_close(err)
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while endpoint.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    app.on_shutdown.append(goodbye)
    app.cleanup_ctx.append(lifecycle)
    return app
