"""Soak: many subscribers over many channels, paced events for minutes, an exact account.

`--connections` sockets (default 10,000) are opened from `--procs` picows processes (one
process may open at most ~20,000 files here, so spread them), each socket subscribed to one
of `--channels` public channels (round-robin). For `--minutes` the publisher triggers
`--rate` events per second through the signed REST API, each to one channel (round-robin),
carrying a sequence number and its *scheduled* send time (CLOCK_MONOTONIC ns, shared by all
processes on the machine): latency counts from the schedule, so a publisher or server that
falls behind shows as latency. Every socket counts the sequence numbers it got.

Reported (one JSON line, then a one-line summary): messages expected (sum over accepted
events of that channel's subscriber count), delivered, lost (goal 0), duplicates, latency
p50/p99/max, the server's RSS at the start of the steady phase, every `--sample-s` seconds and
at the end (max and growth in %, goal flat within 10 %), the server's CPU seconds and CPU per
delivered message, and the load generator's CPU per message (each client process reports its
own process_time() for the steady phase; the busiest one's share of a core tells whether the
generator saturated). The machine's overall CPU use is reported too: on a shared machine the
figures are noisy.

    python -m bench soak                                  # start Pushwire, 10k sockets, 10 min
    python -m bench soak --minutes 1 --connections 2000 --procs 2     # a quick check
    python -m bench soak --quick                          # 200 sockets for 3 s
    python -m bench soak --url http://127.0.0.1:6001 --server-pid PID  # an existing server
    python -m bench soak --soketi                         # then the same soak against soketi
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.lib import procs
from bench.lib.publisher import PublishResult, publish
from bench.lib.servers import Server, external, start_pushwire, start_soketi
from bench.lib.stats import emit, percentile_ms
from bench.lib.subscribers import Spec, Subscribers
from bench.lib.wire import ws_url
from bench.scenarios import parse, parser


def soak(srv: Server, args: Any) -> dict[str, Any]:
    n_events = round(args.rate * args.minutes * 60)
    spec = Spec(
        (ws_url(f"{srv.host}:{srv.port}", "soak"),),
        channels=args.channels,
        timeout=args.setup_timeout,
    )
    t_setup = time.monotonic()
    with Subscribers(spec, args.procs) as subs:
        info = subs.open(args.connections, args.setup_timeout + 60)
        setup_s = time.monotonic() - t_setup
        subscribed = info["subscribed"]
        if subscribed < args.connections:
            print(
                f"warning: only {info['connected']} of {args.connections} sockets connected and "
                f"{subscribed} subscribed ({info['connect_errors']} connect errors): "
                f"{info['errors'][:3]}",
                file=sys.stderr,
            )
        if not subscribed:
            raise RuntimeError(f"no socket subscribed: {info['errors']}")
        print(
            f"{srv.name}: {subscribed} sockets subscribed in {setup_s:.1f} s; "
            f"soaking {args.minutes} min at {args.rate:g} events/s",
            file=sys.stderr,
            flush=True,
        )
        # steady phase
        subs.count(n_events)
        sampler = procs.Sampler([srv.pid] if srv.pid else [], args.sample_s, args.progress)
        machine0 = procs.machine_busy()
        pub = publish(
            srv.port,
            n_events,
            args.rate,
            size=args.size,
            conns=args.inflight,
            channels=args.channels,
            host=srv.host,
        )
        got = subs.collect(pub.failed, args.drain)
        sampler.stop()
        machine_busy = procs.machine_busy() - machine0
    return figures(srv, args, info, setup_s, n_events, pub, got, sampler, machine_busy)


def figures(
    srv: Server,
    args: Any,
    info: dict[str, Any],
    setup_s: float,
    n_events: int,
    pub: PublishResult,
    got: dict[str, Any],
    sampler: procs.Sampler,
    machine_busy: float,
) -> dict[str, Any]:
    subs = info["subs"]
    failed = set(pub.failed)
    expected = sum(subs[s % args.channels] for s in range(n_events) if s not in failed)
    delivered = got["delivered"]
    lat = got["latencies"]
    server = bool(srv.pid)
    samples, rss0 = sampler.samples, sampler.rss0
    duration, rss1, cpu = samples[-1]
    rss_max = max([rss0] + [s[1] for s in samples])
    client_cpu = got["cpu_s"]
    ours = cpu + client_cpu + pub.cpu_s

    def mb(b: int) -> float:
        return round(b / 2**20, 1)

    def per_msg(seconds: float) -> float | None:
        return round(seconds / delivered * 1e6, 2) if delivered else None

    return {
        "server": srv.name,
        "connections": args.connections,
        "connections_subscribed": info["subscribed"],
        "connect_errors": info["connect_errors"],
        "procs": args.procs,
        "channels": args.channels,
        "subscribers_per_channel": [min(subs), max(subs)],
        "rate": args.rate,
        "minutes": args.minutes,
        "size": args.size,
        "setup_s": round(setup_s, 1),
        "steady_s": round(duration, 1),
        "events": n_events,
        "trigger_errors": len(failed),
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "duplicates": got["duplicates"],
        "sockets_with_loss": got["sockets_with_loss"],
        "disconnects": got["disconnects"],
        "pusher_errors": got["errors"],
        "unknown_messages": got["unknown"],
        "pings_answered": got["pings"],
        "msgs_per_s": round(delivered / pub.duration_s) if pub.duration_s else None,
        "p50_ms": percentile_ms(lat, 50),
        "p99_ms": percentile_ms(lat, 99),
        "p999_ms": percentile_ms(lat, 99.9),
        "max_ms": percentile_ms(lat, 100),
        # how late the publisher sent (vs. the schedule) and how long a trigger took
        "publish_lag_p99_ms": pub.lag_p99_ms,
        "publish_lag_max_ms": pub.lag_max_ms,
        "trigger_p50_ms": pub.rtt_p50_ms,
        "trigger_p99_ms": pub.rtt_p99_ms,
        "trigger_max_ms": pub.rtt_max_ms,
        "server_rss_start_mb": mb(rss0) if server else None,
        "server_rss_end_mb": mb(rss1) if server else None,
        "server_rss_max_mb": mb(rss_max) if server else None,
        "server_rss_growth_pct": round((rss1 - rss0) / rss0 * 100, 1) if server else None,
        "server_rss_max_growth_pct": round((rss_max - rss0) / rss0 * 100, 1) if server else None,
        "server_rss_samples_mb": [mb(s[1]) for s in samples] if server else None,
        "server_cpu_s": round(cpu, 2) if server else None,
        "server_cpu_pct": round(cpu / duration * 100, 1) if server else None,
        "server_us_per_msg": per_msg(cpu) if server else None,
        # the load generator: subscriber processes (each its own process_time() for the
        # steady phase) and the publisher; a busiest process near 100 % of a core saturated
        "client_cpu_s": round(client_cpu, 2),
        "client_us_per_msg": per_msg(client_cpu),
        "client_busiest_proc_pct": round(got["busiest"] * 100, 1),
        "publisher_cpu_s": round(pub.cpu_s, 2),
        "generator_us_per_msg": per_msg(client_cpu + pub.cpu_s),
        # the whole machine (shared: anything here that is not ours is someone else's work)
        "cpus": procs.cores(),
        "machine_busy_cpu_s": round(machine_busy, 1),
        "other_cpu_s": round(machine_busy - ours, 1) if server else None,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "lossless": expected == delivered and not failed,
        "rss_flat": max(abs(rss1 - rss0), rss_max - rss0) / rss0 <= 0.10 if server else None,
        "errors": (info["errors"] + pub.error_samples)[:5] + got["error_samples"][:5],
    }


def summary(r: dict[str, Any]) -> str:
    s = (
        f"{r['server']} soak: {r['connections_subscribed']} sockets x {r['channels']} channels, "
        f"{r['events']} events at {r['rate']:g}/s over {r['steady_s']:.0f} s: delivered "
        f"{r['delivered']}/{r['expected']} (lost {r['lost']}, dup {r['duplicates']}, "
        f"trigger errors {r['trigger_errors']}, disconnects {r['disconnects']}); "
        f"latency p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']} ms"
    )
    if r["server_rss_start_mb"] is not None:
        s += (
            f"; RSS {r['server_rss_start_mb']} -> {r['server_rss_end_mb']} MB "
            f"(max {r['server_rss_max_mb']}, {r['server_rss_growth_pct']:+}%); "
            f"server CPU {r['server_cpu_s']} s ({r['server_cpu_pct']}% of a core) = "
            f"{r['server_us_per_msg']} us/msg"
        )
    s += (
        f"; generator {r['generator_us_per_msg']} us/msg "
        f"(busiest client process {r['client_busiest_proc_pct']}% of a core)"
        f"; machine busy {r['machine_busy_cpu_s']} CPU-s on {r['cpus']} CPUs"
    )
    return s


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=5, help="subscriber processes")
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=50, help="events per second, paced")
    ap.add_argument("--size", type=int, default=100, help="bytes of event data (about)")
    ap.add_argument("--inflight", type=int, default=64, help="triggers in flight at most")
    ap.add_argument("--sample-s", type=float, default=10, help="server RSS sampling period")
    ap.add_argument("--drain", type=float, default=30, help="s to wait for stragglers")
    ap.add_argument("--setup-timeout", type=float, default=300)
    ap.add_argument("--progress", action="store_true", help="print each sample")
    ap.add_argument("--url", help="soak an already running server at this base URL")
    ap.add_argument("--server-pid", type=int, help="its PID, for RSS and CPU")
    ap.add_argument("--port", type=int, default=6121)
    ap.add_argument("--server-log", help="append the started server's output here")
    ap.add_argument("--soketi", action="store_true", help="then soak soketi the same way")
    ap.add_argument("--soketi-port", type=int, default=6122)
    quick = {"connections": 200, "procs": 2, "channels": 10, "minutes": 0.05, "sample_s": 1.0}
    args = parse(ap, argv, quick)
    if args.connections / args.procs > 19_000:
        ap.error("at most ~19,000 sockets per process here: raise --procs")
    if args.rate <= 0 or args.channels <= 0 or args.connections <= 0:
        ap.error("--rate, --channels and --connections must be positive")

    rows = []
    if args.url:
        rows.append(soak(external(args.url, args.server_pid), args))
    else:
        srv = start_pushwire(args.port, log=args.server_log)
        try:
            rows.append(soak(srv, args))
        finally:
            srv.stop()
        if args.soketi:
            srv = start_soketi(args.soketi_port)
            try:
                rows.append(soak(srv, args))
            finally:
                srv.stop()
    for row in rows:
        emit(row)
    for row in rows:
        print(summary(row))
