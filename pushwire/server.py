"""The composition root: the only place that picks concrete backends and wires the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import __version__
from .apps.base import AppStore
from .apps.index import AppIndex
from .apps.registry import AppRegistry
from .apps.stores import make_app_store
from .cluster.base import Broker, ClusterState, Liveness
from .cluster.memory import Backplane, MemoryBroker, MemoryLiveness, MemoryState
from .config import Config
from .engine import Engine
from .extensions import ExtensionApi, Extensions
from .extensions import load as load_extensions
from .handler import PusherHandler
from .hub import Hub
from .metrics import Metrics
from .monitor import TrafficMonitor
from .protocol.errors import ReconnectNow
from .protocol.signing import same_token
from .transport.admin import AdminApi
from .transport.dashboard import Dashboard
from .transport.http import bearer_token
from .transport.rest import BodyBudget, RestApi
from .transport.tap import TapEndpoint
from .transport.ws import WS_ENDPOINT, WsEndpoint
from .webhooks import MemoryWebhookStore, Webhooks, WebhookStore

log = logging.getLogger("pushwire")

SHUTDOWN_GRACE = 5.0  # seconds for clients to be told and connections to finish on SIGTERM


def sweep_interval(config: Config) -> float:
    """How often the heartbeat timer runs: often enough to honour the smallest timeout."""
    s = config.server
    smallest = min(
        [float(s.activity_timeout), s.pong_timeout]
        + [a.user_authentication_timeout for a in config.apps if a.enable_user_authentication]
    )
    return max(0.05, min(5.0, smallest / 4))


def rest_routes(config: Config) -> list[tuple[str, str]]:
    node = build_node(config)
    api = RestApi(
        config, node.registry.apps, node.engine, node.monitor, node.metrics, BodyBudget(1)
    )
    return [(method, path) for method, path, _ in api.routes()]


@dataclass
class Backends:
    broker: Broker
    state: ClusterState
    liveness: Liveness
    webhook_store: WebhookStore
    close: Callable[[], Awaitable[None]]
    # per backplane role: (role, the primary's address, new primaries seen since start)
    primaries: Callable[[], list[tuple[str, str, int]]] = lambda: []


async def _nothing() -> None:
    return None


def memory_backends(config: Config, node: str, plane: Backplane) -> Backends:
    """The single-node backend (or one node of an in-process cluster sharing `plane`)."""
    return Backends(
        MemoryBroker(plane, node),
        MemoryState(plane, node),
        MemoryLiveness(plane, node),
        MemoryWebhookStore(config.server.webhook_queue_size),
        _nothing,
    )


def make_backends(config: Config, node: str, clock: Callable[[], float]) -> Backends:
    """Redis when a URL is configured (the only place that picks it), else memory."""
    c = config.cluster
    if c.bus_url:
        from .cluster.redis import RedisBackend
        from .cluster.redis.urls import RedisKind, parse_redis_url
        from .cluster.rediscluster import RedisClusterBackend

        target = parse_redis_url(c.bus_url)
        rb: RedisBackend | RedisClusterBackend
        if target.kind is RedisKind.CLUSTER:  # bus and state alike (checked by config)
            rb = RedisClusterBackend(target, c.key_prefix, node, c.node_timeout)
        else:
            rb = RedisBackend(
                target, parse_redis_url(c.state_url), c.key_prefix, node, c.node_timeout
            )
        return Backends(
            rb.broker,
            rb.state,
            rb.liveness,
            rb.webhook_store(config.server.webhook_queue_size),
            rb.aclose,
            rb.primaries,
        )
    plane = Backplane(clock, c.node_timeout)
    path = config.server.history_file
    if not path:
        return memory_backends(config, node, plane)
    try:
        log.info("channel history: %d channel(s) read from %s", plane.load_history(path), path)
    except (OSError, ValueError) as exc:
        log.error("channel history not read (clients will not recover): %s", exc)

    async def save() -> None:
        try:
            log.info("channel history: %d channel(s) written to %s", plane.save_history(path), path)
        except OSError as exc:
            log.error("channel history not written to %s: %s", path, exc)

    return dataclasses.replace(memory_backends(config, node, plane), close=save)


@dataclass
class Node:
    """Everything one server instance is made of, wired through constructors."""

    config: Config
    registry: AppRegistry
    engine: Engine
    handler: PusherHandler
    monitor: TrafficMonitor
    metrics: Metrics
    webhooks: Webhooks
    extensions: Extensions
    backends: Backends
    draining: bool = False  # set on SIGTERM: /ready answers 503 from then on

    async def start(self) -> None:
        await self.registry.start()  # the apps, before anyone connects
        await self.engine.start()
        await self.webhooks.start()

    async def stop(self) -> None:
        await self.webhooks.stop(SHUTDOWN_GRACE)  # queued, due webhooks get the grace time
        await self.engine.stop()
        await self.registry.stop()
        await self.backends.close()


NODE_KEY = web.AppKey("pushwire_node", Node)


def build_node(
    config: Config,
    backends: Backends | None = None,
    clock: Callable[[], float] = time.monotonic,
    node_id: str | None = None,
    store: AppStore | None = None,
) -> Node:
    node = node_id or uuid.uuid4().hex[:12]
    if backends is None:
        backends = make_backends(config, node, clock)
    metrics = Metrics()
    monitor = TrafficMonitor(node, backends.broker, clock)
    apps = AppIndex(config.apps)  # the registry's: it loads the store into it at start
    webhooks = Webhooks(config, apps, backends.webhook_store)
    engine = Engine(
        config,
        apps,
        Hub(),
        backends.broker,
        backends.state,
        backends.liveness,
        webhooks,
        monitor,
        metrics,
        clock,
    )
    ext = load_extensions(config.extensions, Extensions(ExtensionApi(engine)))
    for watcher, cluster in ext.monitors:
        monitor.add(watcher, cluster)
    handler = PusherHandler(config, apps, engine, clock, monitor, webhooks, ext)
    registry = AppRegistry(apps, store or make_app_store(config), engine.apply_app_changes)
    return Node(config, registry, engine, handler, monitor, metrics, webhooks, ext, backends)


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


def _gauges(node: Node) -> list[tuple[str, str, dict[str, str], float]]:
    out: list[tuple[str, str, dict[str, str], float]] = []
    for app_id, st in node.engine.hub.apps.items():
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
    webhooks = node.webhooks
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
    for role, address, changes in node.backends.primaries():
        out.append(
            (
                "pushwire_redis_failovers_total",
                "new Redis primaries found per role since start: failovers, restarts (counter)",
                {"role": role},
                changes,
            )
        )
        out.append(
            (
                "pushwire_redis_primary",
                "the Redis primary each role reaches now (1)",
                {"role": role, "address": address},
                1.0,
            )
        )
    out.append(
        (
            "pushwire_cluster_bus_up",
            "1 when the shared state and bus (Redis) are reachable or not used",
            {},
            1.0 if node.engine.ready else 0.0,
        )
    )
    return out


def create_app(config: Config, node: Node | None = None) -> web.Application:
    """Build the aiohttp application: WebSocket at /app/{key}, REST API under /apps/.

    `server.role` = websocket or api serves only that side (separated deployment)."""
    if node is None:
        node = build_node(config)
    engine, monitor, metrics, handler = node.engine, node.monitor, node.metrics, node.handler
    app = web.Application(
        client_max_size=config.server.max_request_body,
        middlewares=[_api_only(mw) for mw in node.extensions.api_middlewares],
    )
    app[NODE_KEY] = node
    budget = BodyBudget(config.server.request_body_budget)
    role = config.server.role
    if role in ("all", "api"):
        rest = RestApi(config, node.registry.apps, engine, monitor, metrics, budget)
        for method, path, fn in rest.routes():
            app.router.add_route(method, path, fn)

    async def up(request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok", "version": __version__})

    async def ready(request: web.Request) -> web.Response:
        """Readiness: not shutting down, and (in a cluster) Redis reachable."""
        if node.draining or not engine.ready:
            reason = "shutting down" if node.draining else "cluster bus (Redis) unreachable"
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        return web.json_response({"status": "ready", "version": __version__})

    async def metrics_page(request: web.Request) -> web.Response:
        token = config.server.metrics_token
        if token and not same_token(bearer_token(request), token):
            return web.json_response(
                {"error": "metrics need Authorization: Bearer <metrics_token>"}, status=401
            )
        depth = await node.webhooks.queue_size()
        extra = metrics.render() + (
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

    app.router.add_get("/up", up)
    app.router.add_get("/ready", ready)
    if not config.server.metrics_port:  # else on its own port (see lifecycle)
        app.router.add_get("/metrics", metrics_page)
    metrics.gauges.append(lambda: _gauges(node))

    endpoint = WsEndpoint(handler, metrics)
    app[WS_ENDPOINT] = endpoint  # the raw listener hands it the upgrades it reads
    if role in ("all", "websocket"):
        app.router.add_get("/app/{key}", endpoint.handle)
    app.router.add_get("/tap", TapEndpoint(config, node.registry.apps, monitor).handle)
    Dashboard(config, node.registry.apps, engine, monitor, metrics).install(app)
    AdminApi(config, node.registry, engine).routes(app.router)

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

        await node.start()
        timer = loop.call_later(interval, tick)
        metrics_runner = None
        if config.server.metrics_port:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", metrics_page)
            metrics_runner = web.AppRunner(metrics_app, access_log=None)
            await metrics_runner.setup()
            await web.TCPSite(
                metrics_runner, config.server.host, config.server.metrics_port
            ).start()
            log.info(
                "metrics on http://%s:%d/metrics", config.server.host, config.server.metrics_port
            )
        yield
        timer.cancel()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await node.stop()

    async def goodbye(app: web.Application) -> None:
        """Graceful stop, before aiohttp closes sockets: tell every client to reconnect (4200)
        and let each connection's handler finish, so the cluster sees members leave now."""
        node.draining = True
        err = ReconnectNow("Server shutting down, reconnect")
        for conn in engine.connections():
            conn.send_error_and_close(err)
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while endpoint.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    app.on_shutdown.append(goodbye)
    app.cleanup_ctx.append(lifecycle)
    return app
