"""Triggers per second through REST clients against one Pushwire node started here.

The official `pusher` PyPI SDK (requests) is the baseline; then Pushwire's sync `RestClient`
(one kept-alive connection) and `AsyncRestClient` (sequential, and 16 in flight). Prints one
JSON line per client with its ratio against the baseline.

    python -m bench rest_clients [--n 2000]
"""

from __future__ import annotations

import asyncio
import time

from bench.lib.servers import start_pushwire
from bench.lib.stats import emit
from bench.lib.wire import KEY, SECRET
from bench.scenarios import parse, parser

APP_ID = "1"  # the PyPI SDK takes only numeric app ids


async def _async_client(port: int, n: int, concurrency: int) -> float:
    from pushwire.client import AsyncRestClient

    async with AsyncRestClient(APP_ID, KEY, SECRET, port=port) as ac:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await ac.trigger("bench", "e", {"i": i})

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    import pusher  # type: ignore[import-untyped]

    from pushwire.client import RestClient

    ap = parser(__name__, __doc__)
    ap.add_argument("--n", type=int, default=2000, help="triggers per client")
    ap.add_argument("--port", type=int, default=6131)
    args = parse(ap, argv, quick={"n": 100})
    n = args.n
    srv = start_pushwire(args.port, app={"id": APP_ID})
    try:
        timings: list[tuple[str, float]] = []
        sdk = pusher.Pusher(
            app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=args.port, ssl=False
        )
        t0 = time.perf_counter()
        for i in range(n):
            sdk.trigger("bench", "e", {"i": i})
        timings.append(("pusher (PyPI) sync", time.perf_counter() - t0))

        with RestClient(APP_ID, KEY, SECRET, port=args.port) as rc:
            t0 = time.perf_counter()
            for i in range(n):
                rc.trigger("bench", "e", {"i": i})
            timings.append(("pushwire RestClient (keep-alive)", time.perf_counter() - t0))

        for name, concurrency in (("sequential", 1), ("16 in flight", 16)):
            secs = asyncio.run(_async_client(args.port, n, concurrency))
            timings.append((f"pushwire AsyncRestClient {name}", secs))
    finally:
        srv.stop()
    base = n / timings[0][1]
    for name, secs in timings:
        emit(
            {
                "client": name,
                "triggers": n,
                "triggers_per_s": round(n / secs),
                "ratio_vs_pusher_sdk": round(n / secs / base, 2),
            }
        )
