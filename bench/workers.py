#!/usr/bin/env python3
"""`--workers N` (issue 12): N processes on one port over Redis against one process, same load.

Each run: SUBSCRIBERS sockets of the compiled load generator (bench/loadgen) on one public
channel, spread by the kernel over the workers (SO_REUSEPORT), events triggered at each RATE
through the signed REST API (also spread over the workers); reports delivered messages/s,
p50/p99 from each event's scheduled send time, the server's CPU per delivered message (all
worker processes and Redis together) and which side saturated. The single process runs
without Redis (the default single node); the workers run over a redis-server started here.

    flock /tmp/pushwire-bench.lock .venv/bin/python bench/workers.py
    ... --rates 100,300,500 --workers 2 --subscribers 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import LoadGen, Server, start_redis  # noqa: E402
from bench.fanout import wait_port  # noqa: E402
from bench.scale import rate_run  # noqa: E402


def start(port: int, workers: int, redis_url: str) -> Server:
    fd, path = tempfile.mkstemp(prefix="pushwire-workers-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f'[server]\nhost = "127.0.0.1"\nport = {port}\nlog_level = "warning"\n')
        f.write(f"workers = {workers}\n\n")
        f.write('[[apps]]\nid = "app-id"\nkey = "app-key"\nsecret = "app-secret"\n')
        if redis_url:
            f.write(f'\n[cluster]\nredis_url = "{redis_url}"\n')
    cmd = [sys.executable, "-m", "pushwire", "serve", "--config", path]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    if workers > 1:  # every worker must listen before the load starts
        import time

        deadline = time.monotonic() + 30
        while len(psutil.Process(p.pid).children()) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    return Server("pushwire", port, p.pid, p, path)


class WithRedis(Server):
    """The workers' CPU includes Redis's: it is part of what running workers costs."""

    redis_pid: int = 0

    def cpu_s(self) -> float:
        total = super().cpu_s()
        try:
            t = psutil.Process(self.redis_pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
        return total


def run(name: str, workers: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    redis = None
    url = ""
    if workers > 1:
        redis, url = start_redis()
    server = start(args.port, workers, url)
    if redis is not None:
        server.__class__ = WithRedis
        server.redis_pid = redis.pid  # type: ignore[attr-defined]
    rows = []
    gen = LoadGen(args.port, args.subscribers, args.procs)
    try:
        gen.wait_subscribed(120)
        for rate in args.rates:
            ns = argparse.Namespace(size=100, drain=20.0)
            row = rate_run(server, gen, rate, args.duration, ns)
            row["server"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        gen.close()
        server.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--rates", default="50,200,400,600")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--procs", type=int, default=4, help="load generator processes")
    ap.add_argument("--port", type=int, default=7151)
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    one = run("1-process", 1, args)
    many = run(f"{args.workers}-workers-redis", args.workers, args)
    for a, b in zip(one, many, strict=True):
        print(
            json.dumps(
                {
                    "rate": a["rate"],
                    "ratio": f"{b['server']}/{a['server']}",
                    "msgs_per_s": round(b["msgs_per_s"] / max(a["msgs_per_s"], 1), 2),
                    "p99": round((b["p99_ms"] or 0) / max(a["p99_ms"] or 1e-9, 1e-9), 2),
                    "cpu_per_msg": round(b["server_us_per_msg"] / a["server_us_per_msg"], 2),
                }
            )
        )


if __name__ == "__main__":
    main()
