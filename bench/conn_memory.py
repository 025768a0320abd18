#!/usr/bin/env python3
"""Server memory per idle, subscribed WebSocket connection (issue 12).

Starts a server (Pushwire with a temporary TOML config, or soketi), measures its RSS once it
is warm, then opens idle connections in steps (`--connections 10000,19000`) from `--procs`
picows processes, each on its own 127.0.N.x source address; every socket subscribes to one of
`--channels` public channels (round-robin) and then stays idle. At each step, once every socket
has its `subscription_succeeded` and the server's RSS has settled, it reports
(RSS - RSS before the first connection) / connections. One JSON line per step, then a table.

    python bench/conn_memory.py                                      # aiohttp and raw, 10k + 19k
    python bench/conn_memory.py --transport raw --connections 10000
    python bench/conn_memory.py --soketi                             # soketi 1.6.1 too
    python bench/conn_memory.py --profile 3000 --transport aiohttp   # where the bytes go

`--profile N` runs the server under tracemalloc instead (RSS is then meaningless: tracemalloc
itself costs memory), opens N connections, and prints what one connection costs, attributed
two ways: Python allocations by the line that made them (tracemalloc snapshot difference) and
GC-tracked objects by type (counts and shallow sizes per connection).

Run it under `flock /tmp/pushwire-bench.lock ...` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.fanout import wait_port  # noqa: E402

KEY = "app-key"
PER_PROC_MAX = 9_000  # sockets per client process (fd limit 20,000; one source address each)


# ------------------------------------------------------------------------------ clients
def client_proc(ws_url: str, index: int, channels: int, cmd: Any, out: Any) -> None:
    import uvloop

    uvloop.run(_client(ws_url, index, channels, cmd, out))


async def _client(ws_url: str, index: int, channels: int, cmd: Any, out: Any) -> None:
    """Waits for commands: an int (open that many sockets in total) or None (close, exit)."""
    import resource

    import orjson
    from picows import WSListener, WSMsgType, ws_connect

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    state = {"subscribed": 0, "target": 0, "lost": 0}
    waiter: list[asyncio.Future[None]] = []
    pong = orjson.dumps({"event": "pusher:pong", "data": {}})

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self, g: int) -> None:
            self.sub = orjson.dumps(
                {"event": "pusher:subscribe", "data": {"channel": f"mem-{g % channels}"}}
            )

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            raw = frame.get_payload_as_bytes()
            if b"connection_established" in raw:
                transport.send(WSMsgType.TEXT, self.sub)
            elif b"subscription_succeeded" in raw:
                state["subscribed"] += 1
                if state["subscribed"] >= state["target"] and waiter and not waiter[0].done():
                    waiter[0].set_result(None)
            elif b"pusher:ping" in raw:
                transport.send(WSMsgType.TEXT, pong)

        def on_ws_disconnected(self, transport: Any) -> None:
            state["lost"] += 1

    transports: list[Any] = []
    src = f"127.0.{index + 1}.1"
    while True:
        target = await loop.run_in_executor(None, cmd.get)
        if target is None:
            break
        state["target"] = target
        waiter[:] = [loop.create_future()]
        t0 = time.monotonic()
        while len(transports) < target:
            g = index * 100_000 + len(transports)
            t, _ = await ws_connect(lambda g=g: Listener(g), ws_url, local_addr=(src, 0))
            transports.append(t)
            if len(transports) % 100 == 0:
                await asyncio.sleep(0)
        if state["subscribed"] < target:
            await asyncio.wait_for(waiter[0], 120)
        out.put((index, len(transports), state["subscribed"], state["lost"], time.monotonic() - t0))
    for t in transports:
        t.disconnect()
    await asyncio.sleep(0.5)
    out.put((index, 0, 0, state["lost"], 0.0))


class Clients:
    def __init__(self, ws_url: str, procs: int, channels: int) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.cmds = [ctx.Queue() for _ in range(procs)]
        self.procs = [
            ctx.Process(target=client_proc, args=(ws_url, i, channels, q, self.out), daemon=True)
            for i, q in enumerate(self.cmds)
        ]
        for p in self.procs:
            p.start()

    def open(self, total: int) -> dict[str, Any]:
        n = len(self.procs)
        for i, q in enumerate(self.cmds):
            q.put(total // n + (1 if i < total % n else 0))
        rows = [self.out.get(timeout=300) for _ in self.procs]
        return {
            "open": sum(r[1] for r in rows),
            "subscribed": sum(r[2] for r in rows),
            "lost": sum(r[3] for r in rows),
            "open_s": round(max(r[4] for r in rows), 1),
        }

    def close(self) -> None:
        for q in self.cmds:
            q.put(None)
        for _ in self.procs:
            with contextlib.suppress(Exception):
                self.out.get(timeout=30)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------------ servers
CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
log_level = "warning"
{extra}

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
"""


def write_config(tmp: str, port: int, transport: str | None) -> str:
    extra = f'ws_transport = "{transport}"' if transport else ""
    path = os.path.join(tmp, f"pushwire-{port}.toml")
    with open(path, "w") as fh:
        fh.write(CONFIG.format(port=port, extra=extra))
    return path


def start_pushwire(config: str, port: int, traced: str | None = None) -> subprocess.Popen[bytes]:
    if traced:
        cmd = [sys.executable, __file__, "--traced-server", config, traced]
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "pushwire"), "serve", "--config", config]
        if not Path(cmd[0]).exists():
            cmd = [sys.executable, "-m", "pushwire", "serve", "--config", config]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    wait_port(port)
    return proc


def settle_rss(pid: int, seconds: float = 3.0) -> int:
    """The RSS once it stopped moving (or after `seconds`)."""
    p = psutil.Process(pid)
    last = p.memory_info().rss
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = p.memory_info().rss
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def warm_up(port: int) -> None:
    """One connection opened and closed, so lazily imported code is loaded before the
    baseline is taken."""

    async def once() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{port}/app/{KEY}?protocol=7") as ws:
                await ws.receive(timeout=5)
                await ws.send_str('{"event":"pusher:subscribe","data":{"channel":"mem-0"}}')
                await ws.receive(timeout=5)
            async with s.get(f"http://127.0.0.1:{port}/up") as r:
                await r.read()

    asyncio.run(once())


def measure(
    name: str, port: int, pid: int, steps: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    warm_up(port)
    base = settle_rss(pid)
    clients = Clients(
        f"ws://127.0.0.1:{port}/app/{KEY}?protocol=7&client=mem&version=1.0",
        args.procs,
        args.channels,
    )
    rows = []
    try:
        for n in steps:
            got = clients.open(n)
            time.sleep(args.settle)
            rss = settle_rss(pid)
            row = {
                "server": name,
                "connections": got["subscribed"],
                "lost": got["lost"],
                "rss_base_mb": round(base / 2**20, 1),
                "rss_mb": round(rss / 2**20, 1),
                "kb_per_conn": round((rss - base) / max(1, got["subscribed"]) / 1024, 2),
                "open_s": got["open_s"],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        clients.close()
    return rows


# ------------------------------------------------------------------------------ profile
def traced_server(config_path: str, out: str) -> None:
    """Run `pushwire serve` under tracemalloc; SIGUSR2 writes a snapshot and a census of
    GC-tracked objects by type to `out`.<n>.pickle."""
    import tracemalloc

    tracemalloc.start(12)
    from pushwire import cli
    from pushwire.config import load

    config = load(config_path)
    cli._configure_logging(config.server.log_level)
    count = [0]

    def dump() -> None:
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

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)
        await cli._serve(config)

    import uvloop

    uvloop.run(main())


def profile(args: argparse.Namespace, transport: str | None) -> None:
    import tracemalloc  # noqa: F401  (unpickling snapshots)

    n = args.profile
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(tmp, args.port, transport)
        out = os.path.join(tmp, "snap")
        proc = start_pushwire(config, args.port, traced=out)
        clients = None
        try:
            warm_up(args.port)

            def snap(i: int) -> dict[str, Any]:
                proc.send_signal(signal.SIGUSR2)
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

            before = snap(0)
            clients = Clients(
                f"ws://127.0.0.1:{args.port}/app/{KEY}?protocol=7", args.procs, args.channels
            )
            got = clients.open(n)
            time.sleep(args.settle)
            after = snap(1)
        finally:
            if clients is not None:
                clients.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    n = got["subscribed"]
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
def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--traced-server":
        traced_server(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", default="10000,19000", help="steps, comma-separated")
    ap.add_argument(
        "--transport",
        default="aiohttp,raw",
        help="Pushwire ws_transport values to measure, comma-separated ('' = default)",
    )
    ap.add_argument("--procs", type=int, default=0, help="client processes (0: one per 9,000)")
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--port", type=int, default=7310)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    ap.add_argument("--soketi", action="store_true", help="also measure soketi 1.6.1")
    ap.add_argument("--soketi-port", type=int, default=7301)
    ap.add_argument("--profile", type=int, default=0, help="tracemalloc attribution at N")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
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
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_pushwire(write_config(tmp, args.port, t), args.port)
            try:
                rows += measure(f"pushwire-{t or 'default'}", args.port, proc.pid, steps, args)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        time.sleep(1.0)
    if args.soketi:
        # the peer's config with user authentication off (else soketi closes every socket
        # that has not signed in after 30 s), as bench/scale.py starts it
        from bench.common import start_soketi_server

        soketi = start_soketi_server(args.soketi_port)
        try:
            rows += measure("soketi", args.soketi_port, soketi.pid, steps, args)
        finally:
            soketi.stop()
    print("\n| server | connections | RSS before | RSS after | KB per connection |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['server']} | {r['connections']:,} | {r['rss_base_mb']} MB | "
            f"{r['rss_mb']} MB | {r['kb_per_conn']} |"
        )


if __name__ == "__main__":
    main()
