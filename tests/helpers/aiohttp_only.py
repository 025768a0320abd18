"""A reference server for the differential HTTP tests: the same app as `pushwire serve`, on
aiohttp's own TCPSite, without the raw listener (transport/fastpath.py) in front. The raw
listener must answer every request it takes exactly as this one does.

`aiohttp_only(tmp, config)` starts it in a process of its own (`python -m
tests.helpers.aiohttp_only CONFIG`), stopped afterwards; it may not log a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT, TIMEOUT, Server, stop_node


async def _serve(path: str) -> None:
    import logging

    from aiohttp import web

    from pushwire.config import load
    from pushwire.server import NODE_KEY, create_app
    from pushwire.transport.http import GuardedRunner, QuietClientErrors

    logging.basicConfig(level=logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(QuietClientErrors())
    config = load(path, env={})
    app = create_app(config)
    timeout = config.server.handshake_timeout
    runner = GuardedRunner(
        app,
        app[NODE_KEY].metrics,
        timeout,
        keepalive_timeout=timeout,
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


@contextlib.contextmanager
def aiohttp_only(tmp: Path, config: str) -> Iterator[Server]:
    cfg = tmp / f"aiohttp-only-{time.monotonic_ns()}.toml"
    cfg.write_text(textwrap.dedent(config))
    log = cfg.with_suffix(".log")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.aiohttp_only", str(cfg)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reference server did not start: {log.read_text()}")
            time.sleep(0.05)
        port = int(log.read_text().split("listening on http://127.0.0.1:")[1].split()[0])
        yield Server([proc], [port], [log])
    finally:
        stop_node(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
