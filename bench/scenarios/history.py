"""Channel history (issue 11): what keeping history costs, and a reconnect storm that recovers.

1. Fan-out, same invocation, same paced load: SUBSCRIBERS sockets on one channel of a node
   (a) without history, (b) with history and Pusher (V1) subscribers, (c) with history and
   subscribers that opted in to positions (`recover: {}`: each gets its own frame with offset
   and epoch). Reports the server's CPU per event and per delivered message, p50/p99 latency
   (from each event's scheduled send time) and the subscribers' own CPU per message.
2. Reconnect storm: STORM sockets subscribed with `recover: {}` close at once, EVENTS events
   are triggered while they are away, then all reconnect at once and subscribe again with their
   last position; reports the time from the reconnect signal until the last one has its 20
   events and `recovered: true`, and checks that every socket got every event once, in order.

    .venv/bin/python -m bench history                        # both, default sizes
    .venv/bin/python -m bench history --storm 0              # fan-out only
    .venv/bin/python -m bench history --cluster              # also over Redis (2 nodes)
    .venv/bin/python -m bench history --quick                # a small run to check the tools

Subscribers are picows clients in --procs processes spread over 127.0.x.y source addresses.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.lib import procs
from bench.lib.loadgen import LoadGen, paced_fanout
from bench.lib.publisher import publish
from bench.lib.servers import Server, start_pushwire, start_redis
from bench.lib.stats import emit, percentile_ms, ratio
from bench.lib.subscribers import Accounting, Spec, Subscribers
from bench.lib.wire import ws_url
from bench.scenarios import parse, parser


def start(port: int, history: int, redis_url: str = "") -> Server:
    sections = {"cluster": {"redis_url": redis_url}} if redis_url else {}
    app = {"history_size": history, "history_ttl": 600}
    return start_pushwire(port, app=app, sections=sections)


def fanout_run(name: str, history: int, positioned: bool, args: Any) -> dict[str, Any]:
    server = start(args.port, history)
    try:
        url = ws_url(f"127.0.0.1:{args.port}")
        spec = Spec((url,), Accounting.RECEIPTS, positioned=positioned, inflight=64)
        with Subscribers(spec, args.procs) as subs:
            subs.open(args.subscribers)
            subs.count(args.events)
            cpu0 = server.cpu_s()
            res = publish(args.port, args.events, args.rate)
            got = subs.collect(res.failed, drain=120)
            cpu = server.cpu_s() - cpu0
    finally:
        server.stop()
    lat = got["latencies"]
    delivered = len(lat)
    return {
        "run": name,
        "subscribers": args.subscribers,
        "events": args.events,
        "rate": args.rate,
        "delivered": delivered,
        "failed_triggers": len(res.failed),
        "server_us_per_event": round(cpu / args.events * 1e6, 1),
        "server_us_per_msg": round(cpu / max(delivered, 1) * 1e6, 2),
        "client_us_per_msg": round(got["cpu_s"] / max(delivered, 1) * 1e6, 2),
        "p50_ms": percentile_ms(lat, 50),
        "p99_ms": percentile_ms(lat, 99),
    }


def loadgen_run(name: str, history: int, args: Any) -> dict[str, Any]:
    """The same paced fan-out with the compiled load generator (Pusher V1 subscribers, well
    under 1 us per message): server CPU per message, and which side was saturated."""
    server = start(args.port, history)
    gen = LoadGen(args.port, args.subscribers, args.procs)
    try:
        gen.wait_subscribed(120)
        row = paced_fanout(server, gen, args.rate, args.events / args.rate, drain=30.0)
    finally:
        gen.close()
        server.stop()
    row["run"] = name
    return row


def storm_run(args: Any, redis_url: str = "") -> dict[str, Any]:
    server = start(args.port, max(100, args.storm_events), redis_url)
    try:
        url = ws_url(f"127.0.0.1:{args.port}")
        spec = Spec((url,), positioned=True, inflight=args.inflight, timeout=180)
        with Subscribers(spec, args.procs) as subs:
            t = time.monotonic()
            subs.open(args.storm)
            connect_s = time.monotonic() - t
            subs.close()
            res = publish(args.port, args.storm_events, 200)
            cpu0 = server.cpu_s()
            t0 = time.monotonic_ns()
            stormed = subs.reopen(args.storm_events)
            cpu = server.cpu_s() - cpu0
    finally:
        server.stop()
    return {
        "run": "reconnect-storm" + ("-redis" if redis_url else ""),
        "clients": args.storm,
        "events_missed_each": args.storm_events,
        "failed_triggers": len(res.failed),
        "initial_connect_s": round(connect_s, 2),
        "all_recovered_s": round((stormed["done_at"] - t0) / 1e9, 2),
        "trigger_statuses": res.statuses,
        # "recovered": recovered: true and exactly the missed events, in order, once each
        "sockets": stormed["verdicts"],
        "server_cpu_s": round(cpu, 2),
        "client_cpu_s": round(stormed["cpu_s"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--rate", type=float, default=25, help="events per second, paced")
    ap.add_argument("--storm", type=int, default=10000, help="clients of the storm (0: none)")
    ap.add_argument("--storm-events", type=int, default=20)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--inflight", type=int, default=64, help="handshakes in flight per process")
    ap.add_argument("--port", type=int, default=6151)
    ap.add_argument("--cluster", action="store_true", help="also the storm over Redis")
    ap.add_argument(
        "--loadgen",
        action="store_true",
        help="also history off / on with the compiled load generator (V1 subscribers)",
    )
    quick = {"subscribers": 100, "events": 25, "storm": 200, "procs": 2}
    args = parse(ap, argv, quick)
    emit({"cpus": procs.cores(), "load": os.getloadavg()})
    if args.subscribers:
        rows = [
            fanout_run("history-off", 0, False, args),
            fanout_run("history-on-v1-subscribers", 100, False, args),
            fanout_run("history-on-positioned-subscribers", 100, True, args),
        ]
        for r in rows:
            emit(r)
        base = rows[0]
        for r in rows[1:]:
            emit(
                {
                    "ratio": f"{r['run']}/{base['run']}",
                    "server_cpu_per_event": ratio(
                        r["server_us_per_event"], base["server_us_per_event"]
                    ),
                    "p99": ratio(r["p99_ms"], base["p99_ms"]),
                }
            )
    if args.subscribers and args.loadgen:
        off = loadgen_run("loadgen-history-off", 0, args)
        on = loadgen_run("loadgen-history-on-v1-subscribers", 100, args)
        for r in (off, on):
            emit(r)
        emit(
            {
                "ratio": "loadgen history-on/off",
                "server_cpu_per_msg": ratio(on["server_us_per_msg"], off["server_us_per_msg"]),
            }
        )
    if args.storm:
        emit(storm_run(args))
        if args.cluster:
            redis, url = start_redis()
            try:
                emit(storm_run(args, url))
            finally:
                redis.stop()
