"""Scale (issue 12): Pushwire, soketi 1.6.1 and a C floor under the compiled load generator.

The servers are started one after the other in the same invocation, with the same load from
the compiled load generator (bench/loadgen/loadgen.c, built by gcc on first use), and ratios
between them are printed.

Scenarios (each selected by its flag; --all for every one):
  --memory      RSS per subscribed idle connection at 10,000 and 19,000 connections
                (server RSS after subscribing minus before, over N)
  --sparse      10,000 subscribers of one channel, 5 events/s: p99 latency, CPU per message
  --rates       2,000 subscribers at 25 and 50 events/s: the same
  --max-rate    2,000 subscribers: the highest rate (of a stepped list) with p99 <= 100 ms
  --handshakes  connect + subscribe throughput of 10,000 clients (first connect to last
                subscription_succeeded)
  --storm       10,000 subscribed clients, the server is stopped with SIGTERM (graceful) and
                started again on the same port; every client reconnects at once on a 4200
                close (a refused connect is retried after 25 ms doubling up to 200 ms):
                time from SIGTERM until the last client is subscribed again

--servers picks who runs, in order (default pushwire,soketi). "base" is Pushwire run from
another checkout (--baseline-tree), for before/after ratios in one invocation. Two more are
the kernel's floor, bench/floor/floor.c, built by gcc on first use: "floor" writes each event
to each subscriber with one send() and does nothing else (no authentication, no buffering, no
JSON parsing), "floor-uring" does the same with io_uring SENDs submitted in batches (needs
liburing-dev).
A server's CPU per message against the floor's is what its own work adds to the kernel's.

Latency counts from each event's SCHEDULED send time (the publisher writes that
CLOCK_MONOTONIC ns into the event; the generator samples 1 event in --sample). Every row
shows the server's and the generator's CPU per delivered message and each side's CPU
utilisation over the run window (1.0 = one core busy), and says which side saturated.

    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench scale --all
    .venv/bin/python -m bench scale --rates --quick        # a small run to check the tools
    .venv/bin/python -m bench scale --sparse --servers pushwire
    .venv/bin/python -m bench scale --sparse --rates --servers pushwire,soketi,floor,floor-uring
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.lib import procs
from bench.lib.loadgen import LoadGen, handshakes, paced_fanout
from bench.lib.servers import Server, start_floor, start_pushwire, start_soketi
from bench.lib.stats import emit, git_commit, ratio, ratio_row, saturation
from bench.scenarios import parse, parser

# every pair (a, b) of servers in this order that ran the same scenario gets a ratio row a/b
PAIRS = [
    ("pushwire", "soketi"),
    ("pushwire", "base"),
    ("base", "soketi"),
    ("pushwire", "floor"),
    ("soketi", "floor"),
    ("pushwire", "floor-uring"),
    ("floor-uring", "floor"),
]
P99_LIMIT_MS = 100


def start(name: str, args: Any) -> Server:
    if name == "pushwire":
        return start_pushwire(args.port)
    if name == "base":
        if not args.baseline_tree:
            raise SystemExit("--servers base needs --baseline-tree")
        return start_pushwire(args.base_port, name="base", tree=args.baseline_tree)
    if name in ("floor", "floor-uring"):
        return start_floor(args.floor_port, uring=name == "floor-uring")
    return start_soketi(args.soketi_port)


def connect_run(name: str, n: int, args: Any) -> dict[str, Any]:
    """Fresh server, N clients connect and subscribe; RSS and handshake figures."""
    srv = start(name, args)
    gen = None
    try:
        time.sleep(1.5)
        rss0 = srv.rss()
        row, gen = handshakes(srv, n, args.procs, inflight=args.inflight, sample=args.sample)
        time.sleep(args.settle)
        rss1 = srv.rss()
        return {
            "server": name,
            "connections": n,
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_after_mb": round(rss1 / 2**20, 1),
            "rss_per_conn_kb": round((rss1 - rss0) / n / 1024, 2),
            **{k: v for k, v in row.items() if k not in ("server", "connections")},
        }
    finally:
        if gen:
            gen.close()
        srv.stop()


def fanout_runs(
    name: str, n: int, rates: list[float], duration: float, args: Any, stop_p99: bool = False
) -> list[dict[str, Any]]:
    srv = start(name, args)
    gen = None
    rows = []
    try:
        gen = LoadGen(srv.port, n, args.procs, inflight=args.inflight, sample=args.sample)
        gen.wait_subscribed(args.timeout)
        time.sleep(1)
        for rate in rates:
            row = paced_fanout(srv, gen, rate, duration, args.size, args.drain)
            emit(row)
            rows.append(row)
            if stop_p99 and not passes(row):
                break
            time.sleep(0.5)
    finally:
        if gen:
            gen.close()
        srv.stop()
    return rows


def passes(row: dict[str, Any]) -> bool:
    return bool(
        row["lost"] == 0
        and row["triggers_ok"] == row["events"]
        and row["p99_ms"] is not None
        and row["p99_ms"] <= P99_LIMIT_MS
    )


def storm_run(name: str, n: int, args: Any) -> dict[str, Any]:
    srv = start(name, args)
    gen = None
    try:
        gen = LoadGen(
            srv.port,
            n,
            args.procs,
            inflight=args.inflight,
            sample=args.sample,
            reconnect=True,
            handshake_timeout_ms=args.handshake_timeout_ms,
        )
        gen.wait_subscribed(args.timeout)
        time.sleep(1)
        gen.start_window()
        m0, ld0 = procs.machine_busy(), procs.listen_drops()
        t0 = time.monotonic_ns()
        stop_s = srv.stop()
        t_exit = time.monotonic_ns()
        srv = srv.restart()
        t_listen = time.monotonic_ns()
        cpu0 = srv.cpu_s()  # the new server's CPU from its start
        deadline = time.monotonic() + args.timeout
        while True:
            reps = gen.report()
            subscribed = sum(r["subscribed"] for r in reps)
            resub = sum(r["resubscribed"] for r in reps)
            if (subscribed == n and resub >= n) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t_done = max(r["t_last_resub_ns"] for r in reps)
        cpu1, m1, ld1 = srv.cpu_s(), procs.machine_busy(), procs.listen_drops()
        total = (t_done - t0) / 1e9
        gen_cpu = [r["cpu_user_s"] + r["cpu_sys_s"] for r in reps]
        after_listen = (t_done - t_listen) / 1e9
        server_util = (cpu1 - cpu0) / max(after_listen, 1e-3)
        gen_max = max(gen_cpu) / total
        machine = (m1 - m0) / ((time.monotonic_ns() - t0) / 1e9)
        return {
            "server": name,
            "clients": n,
            "all_back": subscribed == n and resub >= n,
            "resubscribed": resub,
            "closed_42xx": sum(r["closed_42xx"] for r in reps),
            "other_closes": sum(r["other_closes"] for r in reps),
            "refused_retries": sum(r["retries"] for r in reps),
            "handshake_timeout_ms": args.handshake_timeout_ms,
            "handshake_timeouts": sum(r["handshake_timeouts"] for r in reps),
            "listen_overflows": ld1["ListenOverflows"] - ld0["ListenOverflows"],
            "old_exit_s": round((t_exit - t0) / 1e9, 3),
            "stop_call_s": round(stop_s, 3),
            "new_listening_s": round((t_listen - t0) / 1e9, 3),
            "last_resubscribed_s": round(total, 3),
            "listen_to_last_s": round(after_listen, 3),
            "resubscribe_per_s_after_listen": round(n / after_listen) if after_listen > 0 else None,
            "server_us_per_client": round((cpu1 - cpu0) / n * 1e6, 1),
            "gen_us_per_client": round(sum(gen_cpu) / n * 1e6, 1),
            "server_util_after_listen": round(server_util, 2),
            "gen_util_max": round(gen_max, 2),
            "machine_util": round(machine, 2),
            "saturated": saturation(
                procs.cores(), server=server_util, generator=gen_max, machine=machine
            ),
        }
    finally:
        if gen:
            gen.close()
        srv.stop()


def ratios(scenario: str, rows: list[dict[str, Any]], keys: list[str], match: list[str]) -> None:
    for x, y in PAIRS:
        for a in (r for r in rows if r["server"] == x):
            for b in (r for r in rows if r["server"] == y):
                if all(a.get(k) == b.get(k) for k in match):
                    extra = {"scenario": scenario, **{k: a.get(k) for k in match}}
                    emit(ratio_row(f"{x}/{y}", a, b, keys, **extra))


def max_rate(servers: list[str], n: int, args: Any) -> None:
    steps = [float(s) for s in args.steps.split(",")]
    best: dict[str, dict[str, Any] | None] = {}
    for name in servers:
        rows = fanout_runs(name, n, steps, args.step_duration, args, stop_p99=True)
        ok = [r for r in rows if passes(r)]
        best[name] = ok[-1] if ok else None
        emit(
            {
                "server": name,
                "max_rate_p99_le_100ms": ok[-1]["rate"] if ok else None,
                "msgs_per_s": ok[-1]["msgs_per_s"] if ok else None,
                "first_failing": rows[-1]["rate"] if rows and not passes(rows[-1]) else None,
            }
        )
    bp, bs = best.get("pushwire"), best.get("soketi")
    if bp and bs:
        rate = ratio(bp["rate"], bs["rate"])
        emit({"ratio": "pushwire/soketi", "scenario": "max-rate", "rate": rate})


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    for flag in ("memory", "sparse", "rates", "max-rate", "handshakes", "storm", "all"):
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--servers", default="pushwire,soketi")
    ap.add_argument("--port", type=int, default=7101)
    ap.add_argument("--soketi-port", type=int, default=7102)
    ap.add_argument("--floor-port", type=int, default=7103)
    ap.add_argument("--base-port", type=int, default=7104)
    ap.add_argument(
        "--baseline-tree",
        help='server "base": Pushwire run from this checkout instead (e.g. `git worktree add '
        "/tmp/base HEAD~1`), for a before/after ratio in one invocation",
    )
    ap.add_argument("--procs", type=int, default=4, help="load-generator processes")
    ap.add_argument(
        "--inflight",
        type=int,
        default=24,
        help="handshakes in flight per process (all processes together stay under the "
        "servers' listen backlog)",
    )
    ap.add_argument("--sample", type=int, default=4, help="latency from 1 event in K")
    ap.add_argument("--size", type=int, default=100, help="bytes of event data")
    ap.add_argument("--duration", type=float, default=20, help="seconds per paced run")
    ap.add_argument("--step-duration", type=float, default=6, help="seconds per --max-rate step")
    ap.add_argument(
        "--steps",
        default="10,20,30,40,50,75,100,150,200,300,400,500,700,1000",
        help="events/s tried by --max-rate, in order, until p99 > 100 ms or a loss",
    )
    ap.add_argument("--memory-counts", default="10000,19000")
    ap.add_argument(
        "--handshake-timeout-ms",
        type=int,
        default=0,
        help="--storm: a client abandons a connect + handshake + subscribe not done in this "
        "time and tries again (0 = never, it waits for the kernel)",
    )
    ap.add_argument("--clients", type=int, default=10000, help="--handshakes / --storm / --sparse")
    ap.add_argument("--subscribers", type=int, default=2000, help="--rates / --max-rate")
    ap.add_argument("--drain", type=float, default=10, help="seconds to wait for stragglers")
    ap.add_argument("--settle", type=float, default=3, help="seconds before the RSS reading")
    ap.add_argument("--timeout", type=float, default=180)
    quick = {"clients": 1000, "subscribers": 200, "memory_counts": "1000,1900"}
    args = parse(ap, argv, {**quick, "duration": 5, "step_duration": 3})
    if args.all:
        for f in ("memory", "sparse", "rates", "max_rate", "handshakes", "storm"):
            setattr(args, f, True)
    servers = [s for s in args.servers.split(",") if s]
    given = sys.argv[1:] if argv is None else argv
    emit({"commit": git_commit(), "cores": procs.cores(), "argv": given, "pid": os.getpid()})

    if args.memory or args.handshakes:
        counts = [int(c) for c in args.memory_counts.split(",")] if args.memory else []
        if args.handshakes and args.clients not in counts:
            counts.append(args.clients)
        rows = []
        for n in counts:
            for name in servers:
                row = connect_run(name, n, args)
                emit(row)
                rows.append(row)
        keys = ["rss_per_conn_kb", "handshakes_per_s", "server_us_per_handshake"]
        ratios("connect", rows, keys, ["connections"])
    keys = ["p50_ms", "p99_ms", "server_us_per_msg", "msgs_per_s"]
    if args.sparse:
        rows = []
        for name in servers:
            rows += fanout_runs(name, args.clients, [5], args.duration, args)
        ratios("sparse", rows, keys, ["subscribers", "rate"])
    if args.rates:
        rows = []
        for name in servers:
            rows += fanout_runs(name, args.subscribers, [25, 50], args.duration, args)
        ratios("rates", rows, keys, ["subscribers", "rate"])
    if args.max_rate:
        max_rate(servers, args.subscribers, args)
    if args.storm:
        rows = []
        for name in servers:
            row = storm_run(name, args.clients, args)
            emit(row)
            rows.append(row)
        keys = ["last_resubscribed_s", "listen_to_last_s", "server_us_per_client"]
        ratios("storm", rows, keys, ["clients"])
