"""`pushwire serve | routes | --version`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from . import __version__
from .config import Config, ConfigError, load

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
    serve.add_argument("--workers", type=int, help="processes sharing the port (needs Redis)")
    serve.add_argument(
        "--role",
        choices=["all", "websocket", "api"],
        help="serve only the WebSocket side, only the REST API, or both",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    routes = sub.add_parser("routes", help="list the REST API routes")
    routes.add_argument("--config", help="TOML configuration file")
    return p


async def _serve(config: Config, reuse_port: bool = False) -> None:
    from .server import create_app

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.server.host,
        config.server.port,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None)
    port = sockets[0].getsockname()[1] if sockets else config.server.port
    log.info(
        "listening on http://%s:%d (WebSocket /app/{key}, REST /apps/{id}/...)",
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
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


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
    try:
        overrides = {}
        if args.command == "serve":
            overrides = {
                "host": args.host,
                "port": args.port,
                "log_level": args.log_level,
                "redis_url": args.redis_url,
                "workers": args.workers,
                "role": args.role,
            }
        config = load(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"pushwire: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "routes":
        from .server import rest_routes

        for method, path in rest_routes(config):
            print(f"{method:5} {path}")
        print("GET   /app/{key}  (WebSocket, Pusher protocol 7)")
        return 0
    _configure_logging(config.server.log_level, config.server.log_format)
    if config.server.workers > 1:
        return _run_workers(config, argv if argv is not None else sys.argv[1:])
    try:
        import uvloop

        uvloop.run(_serve(config, args.reuse_port))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(_serve(config, args.reuse_port))
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
    env = dict(__import__("os").environ, PUSHWIRE_WORKERS="1")
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
