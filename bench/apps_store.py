#!/usr/bin/env python3
"""Handshakes/s and REST triggers/s with the apps in the TOML file against the apps in
PostgreSQL, in the same run (the server must never ask the store per request).

    python bench/apps_store.py [--handshakes 3000] [--triggers 5000] [--rounds 3]

Starts a throwaway PostgreSQL (as the tests do), then alternates the two servers `--rounds`
times and reports the medians and their ratio (postgres / toml)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pushwire.protocol.signing import sign_rest  # noqa: E402
from tests.conftest import start_node, stop_node  # noqa: E402
from tests.pg import start_postgres  # noqa: E402

APP = '[[apps]]\nid = "app-id"\nkey = "app-key"\nsecret = "app-secret"\n'
SERVER = '[server]\nhost = "127.0.0.1"\nport = 0\n'


async def handshakes(port: int, n: int, concurrency: int = 50) -> float:
    url = f"ws://127.0.0.1:{port}/app/app-key?protocol=7&client=bench&version=1"
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            async with sem, s.ws_connect(url) as ws:
                msg = await ws.receive(timeout=10)
                assert b"connection_established" in msg.data.encode()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


async def triggers(port: int, n: int, concurrency: int = 32) -> float:
    path = "/apps/app-id/events"
    body = orjson.dumps({"name": "e", "channel": "c", "data": "x"})
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one() -> None:
            async with sem:
                q = sign_rest("app-key", "app-secret", "POST", path, {}, body)
                async with s.post(f"http://127.0.0.1:{port}{path}", params=q, data=body) as r:
                    assert r.status == 200, await r.text()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--handshakes", type=int, default=3000)
    ap.add_argument("--triggers", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pg = start_postgres()
    tmp = Path(tempfile.mkdtemp(prefix="pw-apps-bench-"))
    try:
        pg_cfg = SERVER + f'[apps_store]\nkind = "postgres"\ndsn = "{pg.dsn}"\n'
        cfg = tmp / "pg.toml"
        cfg.write_text(pg_cfg)
        run = [sys.executable, "-m", "pushwire", "apps"]
        subprocess.run([*run, "migrate", "--config", str(cfg)], check=True, cwd=ROOT)
        subprocess.run(
            [*run, "create", "--id", "app-id", "--set", "key=app-key", "--set",
             "secret=app-secret", "--config", str(cfg)],
            check=True, cwd=ROOT, capture_output=True,
        )  # fmt: skip
        results: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.rounds):
            for name, text in (("toml", SERVER + APP), ("postgres", pg_cfg)):
                proc, port, _ = start_node(tmp, text)
                try:
                    hs = asyncio.run(handshakes(port, args.handshakes))
                    tr = asyncio.run(triggers(port, args.triggers))
                finally:
                    stop_node(proc)
                r = results.setdefault(name, {"handshakes_per_s": [], "triggers_per_s": []})
                r["handshakes_per_s"].append(hs)
                r["triggers_per_s"].append(tr)
        med = {
            name: {k: round(statistics.median(v)) for k, v in r.items()}
            for name, r in results.items()
        }
        for name, r in med.items():
            print(json.dumps({"store": name, **r}))
        print(
            json.dumps(
                {
                    "ratio": "postgres/toml",
                    **{
                        k: round(med["postgres"][k] / med["toml"][k], 3)
                        for k in ("handshakes_per_s", "triggers_per_s")
                    },
                }
            )
        )
    finally:
        pg.close()


if __name__ == "__main__":
    main()
