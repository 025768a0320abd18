#!/usr/bin/env python3
"""Triggers per second through REST clients against one Pushwire node started here:
the official `pusher` PyPI SDK (requests) as the baseline, Pushwire's sync `RestClient`
(one kept-alive connection) and `AsyncRestClient` (sequential, and 16 in flight).
Prints one JSON line per client and the ratios against the baseline."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import wait_port  # noqa: E402
from pushwire.client import AsyncRestClient, RestClient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="triggers per client")
    ap.add_argument("--port", type=int, default=6131)
    args = ap.parse_args()
    cfg = ROOT / "bench" / ".rest-bench.toml"
    cfg.write_text(
        f'[server]\nport = {args.port}\nlog_level = "warning"\n'
        '[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pushwire", "serve", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(args.port)
        rows = []

        def row(name: str, seconds: float) -> None:
            rows.append(
                {"client": name, "triggers": args.n, "triggers_per_s": round(args.n / seconds)}
            )

        import pusher

        sdk = pusher.Pusher(
            app_id="1", key="k", secret="s", host="127.0.0.1", port=args.port, ssl=False
        )
        t0 = time.perf_counter()
        for i in range(args.n):
            sdk.trigger("bench", "e", {"i": i})
        row("pusher (PyPI) sync", time.perf_counter() - t0)

        with RestClient("1", "k", "s", port=args.port) as rc:
            t0 = time.perf_counter()
            for i in range(args.n):
                rc.trigger("bench", "e", {"i": i})
            row("pushwire RestClient (keep-alive)", time.perf_counter() - t0)

        async def run_async(concurrency: int) -> float:
            async with AsyncRestClient("1", "k", "s", port=args.port) as ac:
                sem = asyncio.Semaphore(concurrency)

                async def one(i: int) -> None:
                    async with sem:
                        await ac.trigger("bench", "e", {"i": i})

                t0 = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(args.n)))
                return time.perf_counter() - t0

        row("pushwire AsyncRestClient sequential", asyncio.run(run_async(1)))
        row("pushwire AsyncRestClient 16 in flight", asyncio.run(run_async(16)))
        base = rows[0]["triggers_per_s"]
        for r in rows:
            r["ratio_vs_pusher_sdk"] = round(r["triggers_per_s"] / base, 2)
            print(json.dumps(r))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        cfg.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
