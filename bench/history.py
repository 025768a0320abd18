#!/usr/bin/env python3
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

    .venv/bin/python bench/history.py                        # both, default sizes
    .venv/bin/python bench/history.py --storm 0              # fan-out only
    .venv/bin/python bench/history.py --cluster              # also over Redis (2 nodes)

Subscribers are picows clients in --procs processes spread over 127.0.x.y source addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import KEY, publish, start_pushwire, start_redis  # noqa: E402

CHANNEL = "bench"


def config(port: int, history: int, redis_url: str = "") -> str:
    fd, path = tempfile.mkstemp(prefix="pushwire-history-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f'[server]\nhost = "127.0.0.1"\nport = {port}\nlog_level = "warning"\n\n')
        f.write('[[apps]]\nid = "app-id"\nkey = "app-key"\nsecret = "app-secret"\n')
        f.write(f"history_size = {history}\nhistory_ttl = 600\n")
        if redis_url:
            f.write(f'\n[cluster]\nredis_url = "{redis_url}"\n')
    return path


# ------------------------------------------------------------------------------ subscribers
def subscriber_proc(*args: Any) -> None:
    import uvloop

    uvloop.run(_subscribers(*args))


async def _subscribers(
    url: str, n: int, index: int, positioned: bool, ctl: Any, out: Any, expected: int,
    inflight: int,
) -> None:
    """Connect `n` sockets and subscribe. Commands from `ctl`: "count" (receive `expected`
    events each, report latencies and CPU), "close" (close them all), "storm" (reconnect all
    with their last position, report when all recovered)."""
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()
    mono = time.monotonic_ns

    class Sock(WSListener):
        def __init__(self) -> None:
            self.transport: Any = None
            self.position: tuple[str, int] | None = None
            self.ready: asyncio.Future[bool] = loop.create_future()
            self.events = 0
            self.offsets: list[int] = []
            self.recovered: bool | None = None
            self.done_at = 0

        def on_ws_connected(self, transport: Any) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            raw = frame.get_payload_as_bytes()
            if raw.startswith(b'{"event":"bench"'):
                self.events += 1
                if positioned:
                    m = orjson.loads(raw)
                    self.position = (m["epoch"], m["offset"])
                    self.offsets.append(m["offset"])
                if lat is not None:
                    i = raw.index(b'\\"t\\":') + 6
                    lat.append(mono() - int(raw[i : raw.index(b",", i)]))
                if self.events >= want and not self.ready.done():
                    self.done_at = mono()
                    self.ready.set_result(True)
            elif b"connection_established" in raw:
                sub: dict[str, Any] = {"channel": CHANNEL}
                if positioned:
                    pos = self.position
                    sub["recover"] = {} if pos is None else {"epoch": pos[0], "offset": pos[1]}
                transport.send(
                    WSMsgType.TEXT, orjson.dumps({"event": "pusher:subscribe", "data": sub})
                )
            elif b"subscription_succeeded" in raw:
                m = orjson.loads(raw)
                if "epoch" in m and self.position is None:
                    self.position = (m["epoch"], m["offset"])
                self.recovered = m.get("recovered")
                if (want == 0 or self.events >= want) and not self.ready.done():
                    self.done_at = mono()
                    self.ready.set_result(True)

    lat: list[int] | None = None
    want = 0
    socks: list[Sock] = []

    async def open_all() -> None:
        """Connect every socket, `inflight` handshakes at a time (a storm, not a queue)."""
        nonlocal socks
        fresh = socks or [Sock() for _ in range(n)]
        gate = asyncio.Semaphore(inflight)

        async def one(i: int, s: Sock) -> None:
            s.ready = loop.create_future()
            s.events = 0
            src = f"127.0.{(index % 200) + 20}.{(i // 20000) + 1}"
            async with gate:
                await ws_connect(
                    lambda: s, url, local_addr=(src, 0), websocket_handshake_timeout=120
                )

        await asyncio.gather(*(one(i, s) for i, s in enumerate(fresh)))
        socks = fresh
        await asyncio.wait([s.ready for s in socks], timeout=180)

    await open_all()
    out.put(("ready", index))
    while True:
        cmd = await loop.run_in_executor(None, ctl.get)
        if cmd == "count":
            lat, want = [], expected
            for s in socks:
                s.ready = loop.create_future()
                s.events = 0
            cpu0 = time.process_time()
            await asyncio.wait_for(asyncio.gather(*(s.ready for s in socks)), 120)
            out.put(("counted", index, lat, time.process_time() - cpu0))
            lat, want = None, 0
        elif cmd == "close":
            for s in socks:
                s.transport.disconnect()
            await asyncio.sleep(0.5)
            out.put(("closed", index))
        elif cmd == "storm":
            want, cpu0 = expected, time.process_time()
            before = [(len(s.offsets), s.position[1] if s.position else -1) for s in socks]
            await open_all()
            done = max((s.done_at for s in socks if s.ready.done()), default=mono())
            verdicts = collections.Counter(
                "recovered" if s.recovered and s.offsets[b:] == list(range(p + 1, p + 1 + want))
                else f"recovered={s.recovered} events={len(s.offsets) - b}"
                for s, (b, p) in zip(socks, before, strict=True)
            )
            out.put(("stormed", index, done, dict(verdicts), time.process_time() - cpu0))
            want = 0
        elif cmd == "stop":
            for s in socks:
                s.transport.disconnect()
            return


class Subscribers:
    def __init__(
        self, port: int, n: int, procs: int, positioned: bool, expected: int, inflight: int = 64
    ) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.ctls = [ctx.Queue() for _ in range(procs)]
        url = f"ws://127.0.0.1:{port}/app/{KEY}?protocol=7&client=bench&version=1.0"
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.procs = [
            ctx.Process(
                target=subscriber_proc,
                args=(url, k, i, positioned, self.ctls[i], self.out, expected, inflight),
            )
            for i, k in enumerate(per)
        ]
        for p in self.procs:
            p.start()
        self.gather("ready", 300)

    def gather(self, kind: str, timeout: float = 180) -> list[tuple[Any, ...]]:
        got = []
        for _ in self.procs:
            msg = self.out.get(timeout=timeout)
            assert msg[0] == kind, msg
            got.append(msg)
        return got

    def command(self, cmd: str) -> None:
        for q in self.ctls:
            q.put(cmd)

    def stop(self) -> None:
        self.command("stop")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def pct(vals: list[int], p: float) -> float:
    if not vals:
        return float("nan")
    return round(vals[min(len(vals) - 1, round(p / 100 * (len(vals) - 1)))] / 1e6, 2)


def fanout_run(
    name: str, history: int, positioned: bool, args: argparse.Namespace
) -> dict[str, Any]:
    port = args.port
    server = start_pushwire(port, config(port, history))
    try:
        subs = Subscribers(port, args.subscribers, args.procs, positioned, args.events)
        cpu0 = server.cpu_s()
        subs.command("count")
        res = publish(port, args.rate, args.events)
        counted = subs.gather("counted")
        cpu = server.cpu_s() - cpu0
        subs.stop()
    finally:
        server.stop()
    lat = sorted(x for c in counted for x in c[2])
    gen_cpu = sum(c[3] for c in counted)
    delivered = len(lat)
    return {
        "run": name,
        "subscribers": args.subscribers,
        "events": args.events,
        "rate": args.rate,
        "delivered": delivered,
        "failed_triggers": res.failed,
        "server_us_per_event": round(cpu / args.events * 1e6, 1),
        "server_us_per_msg": round(cpu / max(delivered, 1) * 1e6, 2),
        "client_us_per_msg": round(gen_cpu / max(delivered, 1) * 1e6, 2),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
    }


def loadgen_run(name: str, history: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same paced fan-out with the compiled load generator (Pusher V1 subscribers, well
    under 1 us per message): server CPU per message, and which side was saturated."""
    from bench.common import LoadGen
    from bench.scale import rate_run

    port = args.port
    server = start_pushwire(port, config(port, history))
    gen = LoadGen(port, args.subscribers, args.procs)
    try:
        gen.wait_subscribed(120)
        ns = argparse.Namespace(size=100, drain=30.0)
        row = rate_run(server, gen, args.rate, args.events / args.rate, ns)
    finally:
        gen.close()
        server.stop()
    row["run"] = name
    return row


def storm_run(args: argparse.Namespace, redis_url: str = "") -> dict[str, Any]:
    port = args.port
    server = start_pushwire(port, config(port, max(100, args.storm_events), redis_url))
    try:
        t = time.monotonic()
        subs = Subscribers(port, args.storm, args.procs, True, args.storm_events, args.inflight)
        connect_s = time.monotonic() - t
        subs.command("close")
        subs.gather("closed")
        res = publish(port, 200, args.storm_events)
        cpu0 = server.cpu_s()
        t0 = time.monotonic_ns()
        subs.command("storm")
        stormed = subs.gather("stormed", 600)
        cpu = server.cpu_s() - cpu0
        subs.stop()
    finally:
        server.stop()
    last = max(s[2] for s in stormed)
    verdicts: collections.Counter[str] = collections.Counter()
    for s in stormed:
        verdicts.update(s[3])
    return {
        "run": "reconnect-storm" + ("-redis" if redis_url else ""),
        "clients": args.storm,
        "events_missed_each": args.storm_events,
        "failed_triggers": res.failed,
        "initial_connect_s": round(connect_s, 2),
        "all_recovered_s": round((last - t0) / 1e9, 2),
        "trigger_statuses": res.statuses,
        # "recovered": recovered: true and exactly the missed events, in order, once each
        "sockets": dict(verdicts),
        "server_cpu_s": round(cpu, 2),
        "client_cpu_s": round(sum(s[4] for s in stormed), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    args = ap.parse_args()
    print(json.dumps({"cpus": psutil.cpu_count(), "load": os.getloadavg()}))
    if args.subscribers:
        rows = [
            fanout_run("history-off", 0, False, args),
            fanout_run("history-on-v1-subscribers", 100, False, args),
            fanout_run("history-on-positioned-subscribers", 100, True, args),
        ]
        for r in rows:
            print(json.dumps(r))
        base = rows[0]
        for r in rows[1:]:
            print(
                json.dumps(
                    {
                        "ratio": f"{r['run']}/{base['run']}",
                        "server_cpu_per_event": round(
                            r["server_us_per_event"] / base["server_us_per_event"], 2
                        ),
                        "p99": round(r["p99_ms"] / base["p99_ms"], 2),
                    }
                )
            )
    if args.subscribers and args.loadgen:
        off = loadgen_run("loadgen-history-off", 0, args)
        on = loadgen_run("loadgen-history-on-v1-subscribers", 100, args)
        for r in (off, on):
            print(json.dumps(r))
        print(
            json.dumps(
                {
                    "ratio": "loadgen history-on/off",
                    "server_cpu_per_msg": round(
                        on["server_us_per_msg"] / off["server_us_per_msg"], 2
                    ),
                }
            )
        )
    if args.storm:
        print(json.dumps(storm_run(args)))
        if args.cluster:
            redis, url = start_redis()
            try:
                print(json.dumps(storm_run(args, url)))
            finally:
                redis.terminate()
                redis.wait(10)


if __name__ == "__main__":
    main()
