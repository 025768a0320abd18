"""Server memory per idle, subscribed WebSocket connection (issue 12).

Starts a server (Pushwire with a temporary TOML config, or soketi), measures its RSS once it
is warm, then opens idle connections in steps (`--connections 10000,19000`) from `--procs`
picows processes, each on its own 127.0.N.x source addresses; every socket subscribes to one
of `--channels` public channels (round-robin) and then stays idle. At each step, once every
socket has its `subscription_succeeded` and the server's RSS has settled, it reports
(RSS - RSS before the first connection) / connections. One JSON line per step, then a table.

    python -m bench conn_memory                                      # 10k + 19k
    python -m bench conn_memory --connections 10000
    python -m bench conn_memory --soketi                             # soketi 1.6.1 too
    python -m bench conn_memory --profile 3000                       # where the bytes go
    python -m bench conn_memory --quick                              # a small run

`--profile N` runs the server under tracemalloc instead (RSS is then meaningless: tracemalloc
itself costs memory), opens N connections, and prints what one connection costs, attributed
two ways: Python allocations by the line that made them (tracemalloc snapshot difference) and
GC-tracked objects by type (counts and shallow sizes per connection).

Run it under `flock /tmp/pushwire-bench.lock ...` on a shared machine.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench.lib import ROOT, procs
from bench.lib.servers import Server, start_pushwire, start_soketi
from bench.lib.stats import emit
from bench.lib.subscribers import Spec, Subscribers
from bench.lib.wire import channel_name, ws_url
from bench.scenarios import parse, parser

PER_PROC_MAX = 9_000  # sockets per client process


def warm_up(port: int, channels: int) -> None:
    """One connection opened, subscribed and closed, and one HTTP request, so that lazily
    imported code is loaded before the baseline is taken."""

    async def once() -> None:
        import aiohttp
        import orjson

        sub = {"event": "pusher:subscribe", "data": {"channel": channel_name(0, channels)}}
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(ws_url(f"127.0.0.1:{port}", "mem")) as ws:
                await ws.receive(timeout=5)
                await ws.send_bytes(orjson.dumps(sub))
                await ws.receive(timeout=5)
            async with s.get(f"http://127.0.0.1:{port}/up") as r:
                await r.read()

    asyncio.run(once())


def spec(port: int, args: Any) -> Spec:
    return Spec((ws_url(f"127.0.0.1:{port}", "mem"),), channels=args.channels)


def measure(srv: Server, steps: list[int], args: Any) -> list[dict[str, Any]]:
    warm_up(srv.port, args.channels)
    base = procs.settled_rss([srv.pid])
    rows = []
    with Subscribers(spec(srv.port, args), args.procs) as subs:
        for n in steps:
            got = subs.open(n)
            time.sleep(args.settle)
            rss = procs.settled_rss([srv.pid])
            row = {
                "server": srv.name,
                "connections": got["subscribed"],
                "lost": got["lost"],
                "rss_base_mb": round(base / 2**20, 1),
                "rss_mb": round(rss / 2**20, 1),
                "kb_per_conn": round((rss - base) / max(1, got["subscribed"]) / 1024, 2),
                "open_s": got["open_s"],
            }
            emit(row)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ profile
def traced_server(out: str, argv: list[str]) -> None:
    """`pushwire` (argv: serve --config ...) under tracemalloc; SIGUSR2 writes a snapshot and
    a census of GC-tracked objects by type to `out`.<n>.pickle."""
    import tracemalloc

    tracemalloc.start(12)
    count = [0]

    def dump(*_: object) -> None:
        gc.collect()
        census: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for o in gc.get_objects():
            t = type(o)
            name = f"{t.__module__}.{t.__qualname__}"
            census[name] += 1
            sizes[name] += sys.getsizeof(o)
        snap = tracemalloc.take_snapshot()
        snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        with open(f"{out}.{count[0]}.pickle", "wb") as fh:
            pickle.dump({"snapshot": snap, "census": census, "sizes": sizes}, fh)
        count[0] += 1

    signal.signal(signal.SIGUSR2, dump)
    from pushwire.cli import main

    sys.exit(main(argv))


def _snapshot(srv: Server, out: str, i: int) -> dict[str, Any]:
    os.kill(srv.pid, signal.SIGUSR2)
    path = f"{out}.{i}.pickle"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if os.path.exists(path):
            time.sleep(1.0)  # let the write finish
            try:
                with open(path, "rb") as fh:
                    loaded: dict[str, Any] = pickle.load(fh)
                    return loaded
            except (EOFError, pickle.UnpicklingError):
                continue
    raise RuntimeError("no snapshot")


def profile(args: Any, transport: str | None) -> None:
    import tracemalloc  # noqa: F401  (unpickling snapshots)

    server = {"ws_transport": transport} if transport else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "snap")
        command = ["-m", "bench", "conn_memory", "--traced-server", out, "serve"]
        srv = start_pushwire(args.port, server=server, command=command)
        try:
            warm_up(args.port, args.channels)
            before = _snapshot(srv, out, 0)
            with Subscribers(spec(args.port, args), args.procs) as subs:
                n = subs.open(args.profile)["subscribed"]
                time.sleep(args.settle)
                after = _snapshot(srv, out, 1)
        finally:
            srv.stop(60)
    diff = after["snapshot"].compare_to(before["snapshot"], "traceback")
    total = sum(d.size_diff for d in diff)
    print(
        f"\n== {transport or 'default'}: {n} connections; Python allocations "
        f"(tracemalloc) {total / n:.0f} B per connection; top allocation sites:"
    )
    for d in diff[: args.top]:
        if d.size_diff / n < 16:
            break
        frames = [f for f in d.traceback if "/asyncio/" not in f.filename][-3:] or list(
            d.traceback
        )[-1:]
        where = " <- ".join(
            f"{f.filename.split('site-packages/')[-1].replace(str(ROOT) + '/', '')}:{f.lineno}"
            for f in reversed(frames)
        )
        print(f"{d.size_diff / n:8.0f} B {d.count_diff / n:6.2f} blocks  {where}")
    print("\nGC-tracked objects per connection (count, shallow bytes):")
    rows = []
    for name, c in after["census"].items():
        dc = (c - before["census"].get(name, 0)) / n
        ds = (after["sizes"][name] - before["sizes"].get(name, 0)) / n
        if dc >= 0.5:
            rows.append((ds, dc, name))
    for ds, dc, name in sorted(rows, reverse=True)[: args.top]:
        print(f"{ds:8.0f} B {dc:6.2f}  {name}")


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--traced-server"]:
        traced_server(argv[1], argv[2:])
        return
    ap = parser(__name__, __doc__)
    ap.add_argument("--connections", default="10000,19000", help="steps, comma-separated")
    ap.add_argument(
        "--transport",
        default="",
        help="Pushwire ws_transport values to measure, comma-separated ('' = default; only "
        "raw remains)",
    )
    ap.add_argument("--procs", type=int, default=0, help="client processes (0: one per 9,000)")
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--port", type=int, default=7310)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    ap.add_argument("--soketi", action="store_true", help="also measure soketi 1.6.1")
    ap.add_argument("--soketi-port", type=int, default=7301)
    ap.add_argument("--profile", type=int, default=0, help="tracemalloc attribution at N")
    ap.add_argument("--top", type=int, default=25)
    args = parse(ap, argv, quick={"connections": "200,400", "settle": 0.5})
    steps = [int(s) for s in args.connections.split(",") if s]
    if not args.procs:
        args.procs = max(2, -(-max([*steps, args.profile]) // PER_PROC_MAX))
    transports = [t or None for t in args.transport.split(",")]
    if args.profile:
        for t in transports:
            profile(args, t)
        return
    rows: list[dict[str, Any]] = []
    for t in transports:
        server = {"ws_transport": t} if t else {}
        srv = start_pushwire(args.port, name=f"pushwire-{t or 'default'}", server=server)
        try:
            rows += measure(srv, steps, args)
        finally:
            srv.stop(60)
        time.sleep(1.0)
    if args.soketi:
        srv = start_soketi(args.soketi_port)
        try:
            rows += measure(srv, steps, args)
        finally:
            srv.stop()
    print("\n| server | connections | RSS before | RSS after | KB per connection |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['server']} | {r['connections']:,} | {r['rss_base_mb']} MB | "
            f"{r['rss_mb']} MB | {r['kb_per_conn']} |"
        )
