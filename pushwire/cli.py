"""`pushwire serve | routes | health | tap | apps | --version`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, ConfigError, load

if TYPE_CHECKING:
    from .server import Node

log = logging.getLogger("pushwire")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pushwire", description=__doc__)
    p.add_argument("--version", action="version", version=f"pushwire {__version__}")
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (WebSocket + REST API on one port)")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 6001; 0 = any)")
    serve.add_argument("--log-level", help="debug, info, warning or error")
    serve.add_argument("--redis-url", help="join a cluster through this Redis (redis://...)")
    serve.add_argument("--bus-url", help="Redis for the bus (pub/sub, history) apart")
    serve.add_argument("--state-url", help="Redis for the state (presence, counts...) apart")
    serve.add_argument("--workers", type=int, help="processes sharing the port (needs Redis)")
    serve.add_argument(
        "--role",
        choices=["all", "websocket", "api"],
        help="serve only the WebSocket side, only the REST API, or both",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    tap = sub.add_parser("tap", help="print the live traffic of an app (like a debug console)")
    tap.add_argument("--url", default="http://127.0.0.1:6001", help="a Pushwire node")
    tap.add_argument("--config", help="TOML configuration file (for the app's key and secret)")
    tap.add_argument("--app", help="app id (default: the first configured app)")
    tap.add_argument("--key", help="app key (default: from the config)")
    tap.add_argument("--secret", help="app secret (default: from the config)")
    tap.add_argument("--channel", default="", help="only events of channels with this prefix")
    tap.add_argument("--count", type=int, default=0, help="stop after this many events")
    tap.add_argument("--seconds", type=float, default=0, help="stop after this long")
    routes = sub.add_parser("routes", help="list the REST API routes")
    routes.add_argument("--config", help="TOML configuration file")
    health = sub.add_parser(
        "health", help="probe a node's /ready: exit 0 when ready (for container health checks)"
    )
    health.add_argument("--config", help="TOML configuration file (for the default URL)")
    health.add_argument("--url", help="what to probe (default: this config's port, /ready)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    from .apps.command import add_parser as add_apps_parser

    add_apps_parser(sub)
    return p


def _no_key_password() -> str:
    raise ValueError("the key is encrypted; give an unencrypted PEM key")


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context when `[server] tls_cert` and `tls_key` are set (TLS 1.2+)."""
    if not (config.server.tls_cert and config.server.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    # never prompt on a terminal for an encrypted key's password (a supervised start would hang)
    ctx.load_cert_chain(config.server.tls_cert, config.server.tls_key, _no_key_password)
    return ctx


def listen_backlog() -> int:
    """The kernel's limit for a listen queue (net.core.somaxconn): after a restart every
    client reconnects at once, and a short queue (aiohttp's 128) drops their SYNs, which the
    clients then retry only after 1, 2, 4 ... 64 s."""
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            return max(128, int(fh.read().strip()))
    except (OSError, ValueError):
        return 4096


async def _serve(
    config: Config,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    from .server import NODE_KEY, create_app
    from .transport.fastpath import RawSite
    from .transport.http import GuardedRunner, QuietClientErrors

    app = create_app(config)
    node = app[NODE_KEY]
    metrics = node.metrics
    logging.getLogger("aiohttp.server").addFilter(QuietClientErrors())
    runner = GuardedRunner(
        app,
        metrics,
        config.server.handshake_timeout,
        # an idle keep-alive connection is closed as fast as a silent new one
        keepalive_timeout=config.server.handshake_timeout,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = RawSite(
        runner,
        config.server.host,
        config.server.port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        ssl_context=ssl_context,
        backlog=listen_backlog(),
    )
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None)
    port = sockets[0].getsockname()[1] if sockets else config.server.port
    log.info(
        "listening on %s://%s:%d (WebSocket /app/{key}, REST /apps/{id}/...)",
        "https" if ssl_context else "http",
        config.server.host,
        port,
    )
    for a in config.apps:
        log.info("app id=%s key=%s", a.id, a.key)
    if config.demo_credentials:
        log.warning(
            "no app configured: using the DEMO credentials app-id / app-key / app-secret; "
            "do not use them in production (pass --config or PUSHWIRE_APP_ID/KEY/SECRET)"
        )
    # Objects alive after start-up (modules, config, the app) never become garbage: keep the
    # collector from rescanning them on every full collection (tail latency under fan-out).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    loop.add_signal_handler(signal.SIGHUP, node.registry.changed)  # reload the apps
    await stop.wait()
    await _drain(node, config.server.drain_delay, stop)
    log.info("shutting down")
    await runner.cleanup()


async def _drain(node: Node, delay: float, again: asyncio.Event) -> None:
    """Report not ready (503 on /ready) for `delay` seconds while still serving, so load
    balancers send new clients elsewhere before this node tells its own to reconnect; a second
    SIGTERM/SIGINT ends the wait at once."""
    node.draining = True
    if delay <= 0:
        return
    log.info("draining: /ready answers 503; clients are told to reconnect in %g s", delay)
    again.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await again.wait()


def _dump_tasks() -> None:
    """SIGUSR1: log what every task is waiting for (diagnosing a stuck process)."""
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("task %s\n%s", task.get_name(), out.getvalue())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson

        out = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def _configure_logging(level: str, fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "apps" and args.url:  # through a running server: no config needed
        from .apps.command import run as run_apps

        return run_apps(args, None)
    try:
        overrides = {}
        if args.command == "serve":
            overrides = {
                "host": args.host,
                "port": args.port,
                "log_level": args.log_level,
                "redis_url": args.redis_url,
                "bus_url": args.bus_url,
                "state_url": args.state_url,
                "workers": args.workers,
                "role": args.role,
            }
        config = load(args.config or os.environ.get("PUSHWIRE_CONFIG"), overrides=overrides)
    except ConfigError as exc:
        print(f"pushwire: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and config.extensions:
        from .extensions import ExtensionError
        from .extensions import check as check_extensions

        try:
            check_extensions(config.extensions)  # fail fast, with one line
        except ExtensionError as exc:
            print(f"pushwire: {exc}", file=sys.stderr)
            return 2
    if args.command == "tap":
        return _tap(args, config)
    if args.command == "health":
        return _health(args, config)
    if args.command == "apps":
        from .apps.command import run as run_apps

        return run_apps(args, config)
    if args.command == "routes":
        from .server import rest_routes

        for method, path in rest_routes(config):
            print(f"{method:5} {path}")
        print("GET   /app/{key}  (WebSocket, Pusher protocol 7)")
        return 0
    try:
        ssl_context = _ssl_context(config)  # checked here so that --workers fails fast too
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        print(
            "pushwire: configuration error: [server] tls_cert / tls_key: cannot load the "
            f"certificate and key: {exc}",
            file=sys.stderr,
        )
        return 2
    _configure_logging(config.server.log_level, config.server.log_format)
    if config.server.workers > 1:
        return _run_workers(config, argv if argv is not None else sys.argv[1:])
    try:
        import uvloop

        uvloop.run(_serve(config, args.reuse_port, ssl_context))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(_serve(config, args.reuse_port, ssl_context))
    except OSError as exc:
        print(
            f"pushwire: cannot listen on {config.server.host}:{config.server.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_workers(config: Config, argv: list[str]) -> int:
    """Start `workers` processes on one port (SO_REUSEPORT), each its own cluster node."""
    import subprocess

    if config.server.port == 0:
        print("pushwire: --workers needs a fixed --port", file=sys.stderr)
        return 2
    base = [a for a in argv if not a.startswith("--workers")]
    if "--workers" in argv:  # drop the value that followed the flag
        i = argv.index("--workers")
        base = argv[:i] + argv[i + 2 :]
    env = dict(os.environ, PUSHWIRE_WORKERS="1")
    procs = [
        subprocess.Popen([sys.executable, "-m", "pushwire", *base, "--reuse-port"], env=env)
        for _ in range(config.server.workers)
    ]
    log.info("started %d workers on port %d", len(procs), config.server.port)

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes)


def _health(args: argparse.Namespace, config: Config) -> int:
    from .health import default_url, probe

    if not args.url and config.server.port == 0:
        print("pushwire health: the port is 0 (any); give --url", file=sys.stderr)
        return 2
    ok, line = probe(args.url or default_url(config), args.timeout, verify=bool(args.url))
    if not args.quiet:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _tap(args: argparse.Namespace, config: Config) -> int:
    import time

    import aiohttp

    from .apps.index import AppIndex
    from .protocol.signing import sign_rest

    app = AppIndex(config.apps).by_id(args.app) if args.app else config.apps[0]
    app_id = args.app or app.id if app else args.app
    key = args.key or (app.key if app else None)
    secret = args.secret or (app.secret if app else None)
    if not (app_id and key and secret):
        print("pushwire tap: unknown app; give --app, --key and --secret", file=sys.stderr)
        return 2
    params = {"app": app_id}
    if args.channel:
        params["channel"] = args.channel
    query = sign_rest(key, secret, "GET", "/tap", params)
    url = args.url.rstrip("/").replace("http", "ws", 1) + "/tap"

    async def run() -> int:
        seen = 0
        deadline = time.monotonic() + args.seconds if args.seconds else None
        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(url, params=query)
            except aiohttp.WSServerHandshakeError as exc:
                print(
                    f"pushwire tap: refused ({exc.status}): check --app/--key/--secret",
                    file=sys.stderr,
                )
                return 1
            except aiohttp.ClientError as exc:
                print(f"pushwire tap: cannot connect to {url}: {exc}", file=sys.stderr)
                return 1
            print(f"# tapping app {app_id} at {url}", file=sys.stderr, flush=True)
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    return 0
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return 0
                print(msg.data, flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    await ws.close()
                    return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
