"""Broadcast fan-out: N picows subscribers on one channel, E events through the signed REST API.

Measures delivered messages/s (all receipts / time from the first trigger to the last
receipt), trigger-to-receipt latency p50/p99/max (CLOCK_MONOTONIC is shared by all processes
on the machine), the server's CPU seconds and peak RSS, and CPU per delivered message of the
servers, of Redis (--cluster) and of the subscribers (if the subscribers' is close to the
server's, they are what saturates). Events go back-to-back (each connection sends its next
trigger when the previous one is answered; --concurrency connections) or paced (--rate,
latency then counts from each event's scheduled time). Prints one JSON line per server
measured, then the ratios against the first.

    python -m bench fanout                       # start Pushwire, measure it
    python -m bench fanout --soketi              # also start soketi 1.6.1 and report ratios
    python -m bench fanout --cluster --rate 25   # also 2 nodes over Redis
    python -m bench fanout --url http://127.0.0.1:6001 --server-pid PID   # an existing server
    python -m bench fanout --quick               # a small run to check the tools
"""

from __future__ import annotations

from typing import Any

from bench.lib.fanout import fanout_run
from bench.lib.servers import Server, external, start_pushwire, start_redis, start_soketi
from bench.lib.stats import emit, ratio
from bench.scenarios import parse, parser


def measure(
    name: str,
    target: Server,
    servers: list[Server],
    args: Any,
    sub_servers: list[Server] | None = None,
    aux: list[Server] | None = None,
) -> dict[str, Any]:
    """Publish to `target`; subscriber processes connect round-robin to `sub_servers`
    (default: the target). CPU and RSS are those of `servers`, Redis's of `aux`."""
    return fanout_run(
        name, target, servers,
        subscribers=args.subscribers, events=args.events, procs=args.procs, rate=args.rate,
        size=args.size, concurrency=args.concurrency, timeout=args.timeout,
        sub_servers=sub_servers,
        aux=(lambda: {a.name: a.cpu_s() for a in aux}) if aux else None,
    )  # fmt: skip


def measure_cluster(args: Any) -> dict[str, Any]:
    """2 Pushwire nodes over a local redis-server: publisher on node A, subscribers split
    over A and B."""
    redis, url = start_redis()
    nodes: list[Server] = []
    try:
        for port in (args.port + 10, args.port + 11):
            nodes.append(start_pushwire(port, sections={"cluster": {"redis_url": url}}))
        return measure("pushwire-2-nodes", nodes[0], nodes, args, nodes, [redis])
    finally:
        for n in nodes:
            n.stop()
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--size", type=int, default=100, help="bytes of event data")
    ap.add_argument("--procs", type=int, default=2, help="subscriber processes")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="triggers in flight (1 = back-to-back, each awaits its answer)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="events per second, paced (0 = back-to-back, as fast as answered)",
    )
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--url", help="measure an already running server at this base URL")
    ap.add_argument("--server-pid", type=int)
    ap.add_argument("--port", type=int, default=6101)
    ap.add_argument("--soketi", action="store_true", help="also measure soketi side by side")
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="also measure 2 Pushwire nodes over a local redis-server: publisher "
        "on node A, subscribers split over A and B",
    )
    ap.add_argument("--soketi-port", type=int, default=6102)
    args = parse(ap, argv, quick={"subscribers": 100, "events": 20, "procs": 1})

    rows = []
    if args.url:
        srv = external(args.url, args.server_pid)
        rows.append(measure("external", srv, [srv], args))
    else:
        srv = start_pushwire(args.port)
        try:
            rows.append(measure("pushwire", srv, [srv], args))
        finally:
            srv.stop()
        if args.cluster:
            rows.append(measure_cluster(args))
        if args.soketi:
            srv = start_soketi(args.soketi_port)
            try:
                rows.append(measure("soketi", srv, [srv], args))
            finally:
                srv.stop()
    for row in rows:
        emit(row)
    base = rows[0]
    for other in rows[1:]:  # ratios against the first row (single-node Pushwire)
        emit(
            {
                "ratio": f"{other['server']}/{base['server']}",
                "msgs_per_s": ratio(other["msgs_per_s"], base["msgs_per_s"]),
                "p50": ratio(other["p50_ms"], base["p50_ms"]),
                "p99": ratio(other["p99_ms"], base["p99_ms"]),
                "server_cpu_per_msg": ratio(other["server_us_per_msg"], base["server_us_per_msg"]),
                "server_and_redis_cpu_per_msg": ratio(
                    (other["server_us_per_msg"] or 0) + (other["redis_us_per_msg"] or 0),
                    base["server_us_per_msg"],
                ),
            }
        )
