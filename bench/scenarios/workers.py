"""`--workers N` over Redis against one process (issue 12), the same load on both.

Each run: SUBSCRIBERS sockets of the compiled load generator (bench/loadgen) on one public
channel, spread by the kernel over the workers (SO_REUSEPORT), events triggered at each RATE
through the signed REST API (also spread over the workers); reports delivered messages/s,
p50/p99 from each event's scheduled send time, the server's CPU per delivered message (all
worker processes and Redis together) and which side saturated. The single process runs
without Redis (the default single node); the workers run over a redis-server started here.

    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench workers
    ... --rates 100,300,500 --workers 2 --subscribers 2000
    .venv/bin/python -m bench workers --quick     # a small run to check the tools
"""

from __future__ import annotations

from typing import Any

from bench.lib.loadgen import LoadGen, paced_fanout
from bench.lib.servers import Server, start_pushwire, start_redis
from bench.lib.stats import emit, ratio
from bench.scenarios import parse, parser


def run(name: str, workers: int, args: Any) -> list[dict[str, Any]]:
    redis: Server | None = None
    sections = {}
    if workers > 1:
        redis, url = start_redis()
        sections["cluster"] = {"redis_url": url}
    server = start_pushwire(args.port, server={"workers": workers}, sections=sections)
    if redis is not None:  # the workers' CPU includes Redis's: it is part of what they cost
        server.also.append(redis.pid)
    rows = []
    gen = LoadGen(args.port, args.subscribers, args.procs)
    try:
        gen.wait_subscribed(120)
        for rate in args.rates:
            row = paced_fanout(server, gen, rate, args.duration, drain=20.0)
            row["server"] = name
            rows.append(row)
            emit(row)
    finally:
        gen.close()
        server.stop()
        if redis is not None:
            redis.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--rates", default="50,200,400,600")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--procs", type=int, default=4, help="load generator processes")
    ap.add_argument("--port", type=int, default=7151)
    quick = {"subscribers": 200, "rates": "20", "duration": 2.0, "procs": 2}
    args = parse(ap, argv, quick)
    args.rates = [float(r) for r in args.rates.split(",")]
    one = run("1-process", 1, args)
    many = run(f"{args.workers}-workers-redis", args.workers, args)
    for a, b in zip(one, many, strict=True):
        emit(
            {
                "rate": a["rate"],
                "ratio": f"{b['server']}/{a['server']}",
                "msgs_per_s": ratio(b["msgs_per_s"], a["msgs_per_s"]),
                "p99": ratio(b["p99_ms"], a["p99_ms"]),
                "cpu_per_msg": ratio(b["server_us_per_msg"], a["server_us_per_msg"]),
            }
        )
