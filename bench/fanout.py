#!/usr/bin/env python3
"""Broadcast fan-out benchmark: N WebSocket subscribers on one channel, E events triggered
back-to-back through the signed REST API. Prints one JSON line per server measured.

Measures delivered messages/s (all receipts / time from the first trigger to the last
receipt), trigger-to-receipt latency p50/p99/max (CLOCK_MONOTONIC is shared by all processes
on the machine), and the server's CPU seconds and peak RSS. The load generator runs in
`--procs` processes (picows clients), spreading sockets over 127.0.0.x source addresses.

    python bench/fanout.py                       # start Pushwire, measure it
    python bench/fanout.py --soketi              # also start soketi 1.6.1 and report ratios
    python bench/fanout.py --url http://127.0.0.1:6001 --server-pid PID   # an existing server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pushwire.protocol.signing import sign_rest  # noqa: E402

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
CHANNEL = "bench"


# ---------------------------------------------------------------------------- subscribers
def subscriber_proc(*args: Any) -> None:
    """Process entry point: run `_subscribers(*args)` on uvloop."""
    import uvloop

    uvloop.run(_subscribers(*args))


async def _subscribers(
    ws_url: str,
    n: int,
    index: int,
    ready: Any,
    go: Any,
    results: Any,
    expected: int,
    timeout: float,
) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    latencies: list[int] = []
    subscribed = 0
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    all_subscribed = loop.create_future()
    sub_msg = orjson.dumps({"event": "pusher:subscribe", "data": {"channel": CHANNEL}})
    mono = time.monotonic_ns
    target = expected * n

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal subscribed
            if frame.msg_type != WSMsgType.TEXT:
                return
            raw = frame.get_payload_as_bytes()
            if raw.startswith(b'{"event":"bench"'):
                # data is the JSON string {"s":..,"t":<ns>,..}, escaped inside the frame
                i = raw.index(b'\\"t\\":') + 6
                latencies.append(mono() - int(raw[i : raw.index(b",", i)]))
                if len(latencies) >= target:
                    done.set()
            elif b"connection_established" in raw:
                transport.send(WSMsgType.TEXT, sub_msg)
            elif b"subscription_succeeded" in raw:
                subscribed += 1
                if subscribed == n and not all_subscribed.done():
                    all_subscribed.set_result(None)

    transports = []
    host_port = ws_url.split("//", 1)[1].split("/", 1)[0]
    port = int(host_port.rsplit(":", 1)[1])
    for i in range(n):
        src = f"127.0.{(index % 200) + 1}.{(i // 20000) + 1}"
        t, _ = await ws_connect(Listener, ws_url, local_addr=(src, 0))
        transports.append(t)
        if i % 200 == 199:
            await asyncio.sleep(0)
    del port
    await asyncio.wait_for(all_subscribed, timeout)
    ready.put(index)
    await loop.run_in_executor(None, go.wait)
    cpu0 = time.process_time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    results.put((index, latencies, time.process_time() - cpu0))
    for t in transports:
        t.disconnect()


# ------------------------------------------------------------------------------ publisher
async def publish(base: str, events: int, size: int, concurrency: int, rate: float) -> float:
    path = f"/apps/{APP_ID}/events"
    if rate:  # paced events must not queue behind a slow answer
        concurrency = max(concurrency, 16)
    pad = "x" * max(0, size - 40)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        sem = asyncio.Semaphore(concurrency)

        async def one(seq: int) -> None:
            if rate:  # open loop: event seq is due at t0 + seq / rate
                await asyncio.sleep(max(0.0, t0 / 1e9 + seq / rate - time.monotonic()))
            async with sem:
                # latency counts from the scheduled send time (paced), so a publisher or
                # server that falls behind shows as latency instead of hiding it
                sent = t0 + int(seq * 1e9 / rate) if rate else time.monotonic_ns()
                data = orjson.dumps({"s": seq, "t": sent, "p": pad}).decode()
                body = orjson.dumps({"name": "bench", "channel": CHANNEL, "data": data})
                q = sign_rest(KEY, SECRET, "POST", path, {}, body)
                async with s.post(
                    base + path, params=q, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"trigger failed: {r.status} {await r.text()}")
                    await r.read()

        t0 = time.monotonic_ns()
        await asyncio.gather(*(one(i) for i in range(events)))
        return (time.monotonic_ns() - t0) / 1e9


def percentile(sorted_vals: list[int], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, round(p / 100 * (len(sorted_vals) - 1)))
    return sorted_vals[k] / 1e6


def measure(
    name: str,
    base: str,
    pid: int | list[int] | None,
    args: argparse.Namespace,
    sub_bases: list[str] | None = None,
    aux_pids: list[int] | None = None,
) -> dict[str, Any]:
    """Publish to `base`; subscribers connect round-robin to `sub_bases` (default: base)."""
    sub_bases = sub_bases or [base]
    ws_urls = [
        b.replace("http", "ws", 1) + f"/app/{KEY}?protocol=7&client=bench&version=1.0"
        for b in sub_bases
    ]
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = [
        args.subscribers // args.procs + (1 if i < args.subscribers % args.procs else 0)
        for i in range(args.procs)
    ]
    procs = [
        ctx.Process(
            target=subscriber_proc,
            args=(ws_urls[i % len(ws_urls)], n, i, ready, go, results, args.events, args.timeout),
        )
        for i, n in enumerate(per)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=args.timeout)
    pids = [] if pid is None else [pid] if isinstance(pid, int) else pid
    servers = [psutil.Process(p) for p in pids]
    server = bool(servers)
    cpu0 = sum(sum(sv.cpu_times()[:2]) for sv in servers)
    aux = [psutil.Process(p) for p in aux_pids or []]
    aux0 = sum(sum(a.cpu_times()[:2]) for a in aux)
    rss_peak = sum(sv.memory_info().rss for sv in servers)
    t0 = time.monotonic_ns()
    go.set()
    publish_s = asyncio.run(publish(base, args.events, args.size, args.concurrency, args.rate))
    lat: list[int] = []
    client_cpu = 0.0
    for _ in procs:
        _, l_, c_ = results.get(timeout=args.timeout + 30)
        lat.extend(l_)
        client_cpu += c_
    t_end = time.monotonic_ns()
    # the last receipt time: t0 + max over (send time + latency) is not known exactly; use the
    # wall time until every worker reported, minus nothing (workers report right after the last
    # message), which slightly under-reports the rate.
    if server:
        rss_peak = max(rss_peak, sum(sv.memory_info().rss for sv in servers))
        cpu = sum(sum(sv.cpu_times()[:2]) for sv in servers) - cpu0
    aux_cpu = sum(sum(a.cpu_times()[:2]) for a in aux) - aux0
    for p in procs:
        p.join(10)
    lat.sort()
    expected = args.subscribers * args.events
    elapsed = (t_end - t0) / 1e9
    return {
        "server": name,
        "subscribers": args.subscribers,
        "events": args.events,
        "size": args.size,
        "rate": args.rate or "back-to-back",
        "delivered": len(lat),
        "expected": expected,
        "msgs_per_s": round(len(lat) / elapsed),
        "elapsed_s": round(elapsed, 3),
        "publish_s": round(publish_s, 3),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(lat[-1] / 1e6, 2) if lat else None,
        "server_cpu_s": round(cpu, 2) if server else None,
        # CPU per delivered message, in microseconds: the server's, Redis's (cluster), and the
        # load generator's (if it is close to the server's, the generator is what saturates)
        "server_us_per_msg": round(cpu / len(lat) * 1e6, 2) if server and lat else None,
        "redis_us_per_msg": round(aux_cpu / len(lat) * 1e6, 2) if aux and lat else None,
        "client_us_per_msg": round(client_cpu / len(lat) * 1e6, 2) if lat else None,
        "server_rss_mb": round(rss_peak / 2**20, 1) if server else None,
    }


def start_pushwire(port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pushwire",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def start_soketi(port: int) -> int:
    script = ROOT.parent / "shared" / "peers" / "soketi" / "start.sh"
    out = subprocess.run(["sh", str(script), str(port)], capture_output=True, text=True, check=True)
    pid = int(re.findall(r"\d+", out.stdout)[-1])
    wait_port(port, 120)
    # the started PID is node's; measure the whole process tree's main process
    return pid


def measure_cluster(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        rport = sk.getsockname()[1]
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(rport),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(rport)
    url = f"redis://127.0.0.1:{rport}/0"
    a_port, b_port = args.port + 10, args.port + 11
    nodes = [start_pushwire(p, "--redis-url", url) for p in (a_port, b_port)]
    try:
        a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        return measure(
            "pushwire-2-nodes", a, [n.pid for n in nodes], args, [a, b], [redis.pid]
        )
    finally:
        for n in nodes:
            n.send_signal(signal.SIGTERM)
            n.wait(30)
        redis.terminate()
        redis.wait(10)


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--size", type=int, default=100, help="bytes of event data")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
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
    args = ap.parse_args()

    rows = []
    if args.url:
        rows.append(measure("external", args.url, args.server_pid, args))
    else:
        proc = start_pushwire(args.port)
        try:
            rows.append(measure("pushwire", f"http://127.0.0.1:{args.port}", proc.pid, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if args.cluster:
            rows.append(measure_cluster(args))
        if args.soketi:
            pid = start_soketi(args.soketi_port)
            try:
                rows.append(measure("soketi", f"http://127.0.0.1:{args.soketi_port}", pid, args))
            finally:
                os.kill(pid, signal.SIGTERM)
    for row in rows:
        print(json.dumps(row))
    base = rows[0]
    for other in rows[1:]:  # ratios against the first row (single-node Pushwire)
        print(
            json.dumps(
                {
                    "ratio": f"{other['server']}/{base['server']}",
                    "msgs_per_s": round(other["msgs_per_s"] / base["msgs_per_s"], 2),
                    "p50": round(other["p50_ms"] / base["p50_ms"], 2),
                    "p99": round(other["p99_ms"] / base["p99_ms"], 2),
                    "server_cpu_per_msg": _ratio(other, base, "server_us_per_msg"),
                    "server_and_redis_cpu_per_msg": _ratio(
                        other, base, "server_us_per_msg", "redis_us_per_msg"
                    ),
                }
            )
        )


def _ratio(other: dict[str, Any], base: dict[str, Any], *keys: str) -> float | None:
    try:
        return round(sum(other[k] or 0 for k in keys) / sum(base[k] or 0 for k in keys), 2)
    except (TypeError, ZeroDivisionError, KeyError):
        return None


if __name__ == "__main__":
    main()
