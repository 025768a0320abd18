#!/usr/bin/env python3
"""Soak benchmark: many WebSocket subscribers spread over many channels, a steady paced
stream of REST-triggered events for minutes, and an exact account of what arrived.

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

    python bench/soak.py                                  # start Pushwire, 10k sockets, 10 min
    python bench/soak.py --minutes 1 --connections 2000 --procs 2     # a quick check
    python bench/soak.py --url http://127.0.0.1:6001 --server-pid PID  # an existing server
    python bench/soak.py --soketi                         # then the same soak against soketi
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import time
import traceback
from array import array
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.fanout import percentile, start_soketi, wait_port  # noqa: E402
from pushwire.protocol.signing import sign_rest  # noqa: E402

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
EVENT = "soak"
PER_SOURCE_ADDRESS = 10_000  # sockets per 127.0.N.x source address (ephemeral ports)


def channel_name(c: int) -> str:
    return f"soak-{c}"


def events_of(channel: int, n_events: int, channels: int) -> int:
    """How many of the events 0..n_events-1 go to `channel` (event s goes to s % channels)."""
    return len(range(channel, n_events, channels))


# ---------------------------------------------------------------------------- subscribers
def subscriber_proc(*args: Any) -> None:
    """Process entry point: run `_subscribers(*args)` on uvloop, report a crash."""
    import uvloop

    index, out = args[1], args[5]
    try:
        uvloop.run(_subscribers(*args))
    except BaseException:
        out.put(("crash", index, traceback.format_exc()))
        raise


async def _subscribers(
    ws_url: str,
    index: int,
    first: int,
    n: int,
    cfg: dict[str, Any],
    out: Any,
    ctrl: Any,
    go: Any,
) -> None:
    """Sockets `first`..`first+n-1` (socket g subscribes to channel g % channels)."""
    import resource

    from picows import WSListener, WSMsgType, ws_connect

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256 if hard == resource.RLIM_INFINITY else min(hard, n + 256)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    channels, n_events = cfg["channels"], cfg["events"]
    loop = asyncio.get_running_loop()
    mono = time.monotonic_ns
    latencies = array("q")  # first receipt of each (socket, event), ns from the schedule
    stats = {"subscribed": 0, "pings": 0, "disconnects": 0, "errors": 0, "unknown": 0}
    error_samples: list[str] = []
    all_subscribed = loop.create_future()
    state = {"closing": False, "connected": 0}
    unique = 0  # first receipts so far, over all sockets of this process
    pong = orjson.dumps({"event": "pusher:pong", "data": {}})

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self, channel: int) -> None:
            self.channel = channel
            self.sub_msg = orjson.dumps(
                {"event": "pusher:subscribe", "data": {"channel": channel_name(channel)}}
            )
            # receipts per event of this channel: event s is slot s // channels
            self.counts = bytearray(events_of(channel, n_events, channels))
            self.subscribed = False

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal unique
            if frame.msg_type != WSMsgType.TEXT:
                return
            now = mono()
            msg = orjson.loads(frame.get_payload_as_bytes())
            event = msg.get("event")
            if event == EVENT:
                data = orjson.loads(msg["data"])
                s = data["s"]
                k, r = divmod(s, channels)
                if r != self.channel or k >= len(self.counts):
                    stats["unknown"] += 1
                    return
                c = self.counts[k]
                if c == 0:
                    unique += 1
                    latencies.append(now - data["t"])
                if c < 255:
                    self.counts[k] = c + 1
            elif event == "pusher:ping":
                stats["pings"] += 1
                transport.send(WSMsgType.TEXT, pong)
            elif event == "pusher:connection_established":
                transport.send(WSMsgType.TEXT, self.sub_msg)
            elif event == "pusher_internal:subscription_succeeded":
                if not self.subscribed:
                    self.subscribed = True
                    stats["subscribed"] += 1
                    if stats["subscribed"] == n and not all_subscribed.done():
                        all_subscribed.set_result(None)
            elif event in ("pusher:error", "pusher_internal:subscription_error"):
                stats["errors"] += 1
                if len(error_samples) < 5:
                    error_samples.append(str(msg)[:300])

        def on_ws_disconnected(self, transport: Any) -> None:
            if not state["closing"]:
                stats["disconnects"] += 1

    # connect
    listeners: list[Any] = []
    transports: list[Any] = []
    connect_errors = 0
    t_setup = time.monotonic()
    for i in range(n):
        g = first + i
        src = f"127.0.{(index % 250) + 1}.{(i // PER_SOURCE_ADDRESS) + 1}"
        try:
            t, lst = await ws_connect(
                lambda *_, g=g: Listener(g % channels), ws_url, local_addr=(src, 0)
            )
        except Exception as e:
            connect_errors += 1
            if len(error_samples) < 5:
                error_samples.append(f"connect #{i} from {src}: {e!r}"[:300])
            if connect_errors >= 50:
                break
            continue
        transports.append(t)
        listeners.append(lst)
        if i % 200 == 199:
            await asyncio.sleep(0)
    state["connected"] = len(transports)
    if len(transports) == n:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_subscribed, cfg["setup_timeout"])
    else:  # give the ones that did connect a moment to subscribe
        await asyncio.sleep(5)
    subs = [0] * channels
    for lst in listeners:
        if lst.subscribed:
            subs[lst.channel] += 1
    out.put(
        (
            "ready",
            index,
            {
                "connected": len(transports),
                "subscribed": sum(subs),
                "subs": subs,
                "connect_errors": connect_errors,
                "errors": list(error_samples),
                "setup_s": time.monotonic() - t_setup,
            },
        )
    )

    # steady phase: from `go` until every expected message arrived (or the drain ran out)
    await loop.run_in_executor(None, go.wait)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for k in ("pings", "disconnects", "errors", "unknown"):
        stats[k] = 0
    cmd, failed = await loop.run_in_executor(None, ctrl.get)
    if cmd != "stop":  # the soak was abandoned
        state["closing"] = True
        for t in transports:
            t.disconnect()
        return
    failed_by_channel: dict[int, set[int]] = {}
    for s in failed:
        failed_by_channel.setdefault(s % channels, set()).add(s // channels)
    expected = sum(
        len(lst.counts) - len(failed_by_channel.get(lst.channel, ()))
        for lst in listeners
        if lst.subscribed
    )
    deadline = time.monotonic() + cfg["drain"]
    while unique < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0

    delivered = duplicates = lost = conns_with_loss = 0
    for lst in listeners:
        if not lst.subscribed:
            continue
        counts, fails = lst.counts, failed_by_channel.get(lst.channel, ())
        got = len(counts) - counts.count(0)
        extra = sum(counts) - got
        for k in fails:  # events whose trigger failed are not expected (nor counted)
            if counts[k]:
                got -= 1
                extra -= counts[k] - 1
        missing = len(counts) - len(fails) - got
        delivered += got
        duplicates += extra
        lost += missing
        conns_with_loss += missing > 0
    out.put(
        (
            "result",
            index,
            {
                "delivered": delivered,
                "duplicates": duplicates,
                "lost": lost,
                "conns_with_loss": conns_with_loss,
                "latencies": latencies.tobytes(),
                "cpu_s": cpu,
                "wall_s": wall,
                "pings": stats["pings"],
                "disconnects": stats["disconnects"],
                "errors": stats["errors"],
                "unknown": stats["unknown"],
                "error_samples": list(error_samples),
            },
        )
    )
    # keep the sockets open until the server's figures are taken
    await loop.run_in_executor(None, ctrl.get)
    state["closing"] = True
    for t in transports:
        t.disconnect()
    await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------ publisher
async def publish(
    base: str, args: argparse.Namespace, n_events: int, sampler: Any
) -> dict[str, Any]:
    """Trigger events 0..n_events-1, event s due at t0 + s / rate, to channel s % channels."""
    path = f"/apps/{APP_ID}/events"
    pad = "x" * max(0, args.size - 50)
    mono = time.monotonic_ns
    failed: list[int] = []
    samples: list[str] = []
    lags, rtts = array("q"), array("q")
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.inflight)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(seq: int, due: int) -> None:
            data = orjson.dumps({"s": seq, "t": due, "p": pad}).decode()
            channel = channel_name(seq % args.channels)
            body = orjson.dumps({"name": EVENT, "channel": channel, "data": data})
            q = sign_rest(KEY, SECRET, "POST", path, {}, body)
            start = mono()
            lags.append(start - due)
            try:
                async with session.post(base + path, params=q, data=body, headers=headers) as r:
                    text = await r.read()
                    if r.status != 200:
                        failed.append(seq)
                        if len(samples) < 5:
                            samples.append(f"{r.status} {text[:200]!r}")
            except Exception as e:
                failed.append(seq)
                if len(samples) < 5:
                    samples.append(repr(e)[:300])
            rtts.append(mono() - start)

        tasks: set[asyncio.Task[None]] = set()
        sample_task = asyncio.create_task(sampler())
        t0 = mono()
        for seq in range(n_events):
            due = t0 + int(seq * 1e9 / args.rate)
            delay = (due - mono()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(seq, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        sample_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sample_task
        lags_s, rtts_s = sorted(lags), sorted(rtts)
        return {
            "publish_s": (mono() - t0) / 1e9,
            "failed": failed,
            "error_samples": samples,
            "lag_p99_ms": percentile(lags_s, 99),
            "lag_max_ms": lags_s[-1] / 1e6 if lags_s else None,
            "rtt_p50_ms": percentile(rtts_s, 50),
            "rtt_p99_ms": percentile(rtts_s, 99),
            "rtt_max_ms": rtts_s[-1] / 1e6 if rtts_s else None,
        }


# ------------------------------------------------------------------------------- the soak
def _get(q: Any, timeout: float, procs: list[Any]) -> tuple[str, int, Any]:
    """The next worker message; fail early if a worker died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = q.get(timeout=1)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError("client processes did not answer in time") from None
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                with contextlib.suppress(queue.Empty):
                    msg = q.get(timeout=2)
                    if msg[0] == "crash":
                        raise RuntimeError(f"client process {msg[1]} crashed:\n{msg[2]}") from None
                raise RuntimeError(f"client processes exited with {dead}") from None
            continue
        if msg[0] == "crash":
            raise RuntimeError(f"client process {msg[1]} crashed:\n{msg[2]}")
        return msg


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def soak(name: str, base: str, pid: int | None, args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    n_events = round(args.rate * args.minutes * 60)
    ws_url = base.replace("http", "ws", 1) + f"/app/{KEY}?protocol=7&client=soak&version=1.0"
    cfg = {
        "channels": args.channels,
        "events": n_events,
        "setup_timeout": args.setup_timeout,
        "drain": args.drain,
    }
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    ctrls = [ctx.Queue() for _ in range(args.procs)]
    per = [
        args.connections // args.procs + (1 if i < args.connections % args.procs else 0)
        for i in range(args.procs)
    ]
    firsts = [sum(per[:i]) for i in range(args.procs)]
    procs = [
        ctx.Process(
            target=subscriber_proc,
            args=(ws_url, i, firsts[i], per[i], cfg, out, ctrls[i], go),
            daemon=True,
        )
        for i in range(args.procs)
    ]
    servers = [psutil.Process(pid)] if pid else []
    t_setup = time.monotonic()
    for p in procs:
        p.start()
    try:
        return _run(name, base, args, n_events, servers, procs, out, go, ctrls, uvloop, t_setup)
    finally:
        for c in ctrls:
            c.put(("close", None))
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def _run(
    name: str,
    base: str,
    args: argparse.Namespace,
    n_events: int,
    servers: list[psutil.Process],
    procs: list[Any],
    out: Any,
    go: Any,
    ctrls: list[Any],
    uvloop: Any,
    t_setup: float,
) -> dict[str, Any]:
    subs = [0] * args.channels
    connected = connect_errors = 0
    setup_errors: list[str] = []
    for _ in procs:
        _, _, info = _get(out, args.setup_timeout + 60, procs)
        connected += info["connected"]
        connect_errors += info["connect_errors"]
        setup_errors.extend(info["errors"])
        subs = [a + b for a, b in zip(subs, info["subs"], strict=True)]
    setup_s = time.monotonic() - t_setup
    subscribed = sum(subs)
    if subscribed < args.connections:
        print(
            f"warning: only {connected} of {args.connections} sockets connected and "
            f"{subscribed} subscribed ({connect_errors} connect errors): {setup_errors[:3]}",
            file=sys.stderr,
        )
    if not subscribed:
        raise RuntimeError(f"no socket subscribed: {setup_errors[:5]}")
    print(
        f"{name}: {subscribed} sockets subscribed in {setup_s:.1f} s; "
        f"soaking {args.minutes} min at {args.rate:g} events/s",
        file=sys.stderr,
        flush=True,
    )

    # steady phase
    samples: list[tuple[float, int, float]] = []  # (s since start, rss, server cpu s)
    rss0, cpu0 = _rss(servers), _cpu(servers)
    machine0 = psutil.cpu_times()
    pub_cpu0, t0 = time.process_time(), time.monotonic()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(args.sample_s)
            samples.append((time.monotonic() - t0, _rss(servers), _cpu(servers) - cpu0))
            if args.progress and samples:
                el, rss, cpu = samples[-1]
                print(
                    f"  {el:6.0f} s  server RSS {rss / 2**20:7.1f} MB  CPU {cpu:7.1f} s",
                    file=sys.stderr,
                    flush=True,
                )

    go.set()
    pub = uvloop.run(publish(base, args, n_events, sampler))
    pub_cpu = time.process_time() - pub_cpu0
    failed = pub["failed"]
    for c in ctrls:
        c.put(("stop", failed))
    results = [_get(out, args.drain + 120, procs)[2] for _ in procs]
    duration = time.monotonic() - t0
    rss1, cpu = _rss(servers), _cpu(servers) - cpu0
    machine1 = psutil.cpu_times()
    samples.append((duration, rss1, cpu))

    # figures
    failed_set = set(failed)
    expected = sum(subs[s % args.channels] for s in range(n_events) if s not in failed_set)
    delivered = sum(r["delivered"] for r in results)
    lat_arr = array("q")
    for r in results:
        lat_arr.frombytes(r["latencies"])
    lat = sorted(lat_arr)
    del lat_arr
    client_cpu = sum(r["cpu_s"] for r in results)
    busiest = max(r["cpu_s"] / r["wall_s"] for r in results if r["wall_s"]) * 100
    machine_busy = (sum(machine1) - machine1.idle - machine1.iowait) - (
        sum(machine0) - machine0.idle - machine0.iowait
    )
    ours = cpu + client_cpu + pub_cpu
    server = bool(servers)
    rss_max = max([rss0] + [s[1] for s in samples])

    def mb(b: int) -> float:
        return round(b / 2**20, 1)

    def per_msg(seconds: float) -> float | None:
        return round(seconds / delivered * 1e6, 2) if delivered else None

    def ms(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(v, 2)

    return {
        "server": name,
        "connections": args.connections,
        "connections_subscribed": subscribed,
        "connect_errors": connect_errors,
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
        "duplicates": sum(r["duplicates"] for r in results),
        "sockets_with_loss": sum(r["conns_with_loss"] for r in results),
        "disconnects": sum(r["disconnects"] for r in results),
        "pusher_errors": sum(r["errors"] for r in results),
        "unknown_messages": sum(r["unknown"] for r in results),
        "pings_answered": sum(r["pings"] for r in results),
        "msgs_per_s": round(delivered / pub["publish_s"]) if pub["publish_s"] else None,
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "p999_ms": ms(percentile(lat, 99.9)),
        "max_ms": ms(lat[-1] / 1e6) if lat else None,
        # how late the publisher sent (vs. the schedule) and how long a trigger took
        "publish_lag_p99_ms": ms(pub["lag_p99_ms"]),
        "publish_lag_max_ms": ms(pub["lag_max_ms"]),
        "trigger_p50_ms": ms(pub["rtt_p50_ms"]),
        "trigger_p99_ms": ms(pub["rtt_p99_ms"]),
        "trigger_max_ms": ms(pub["rtt_max_ms"]),
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
        "client_busiest_proc_pct": round(busiest, 1),
        "publisher_cpu_s": round(pub_cpu, 2),
        "generator_us_per_msg": per_msg(client_cpu + pub_cpu),
        # the whole machine (shared: anything here that is not ours is someone else's work)
        "cpus": psutil.cpu_count(),
        "machine_busy_cpu_s": round(machine_busy, 1),
        "other_cpu_s": round(machine_busy - ours, 1) if server else None,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "lossless": expected == delivered and len(failed) == 0,
        "rss_flat": max(abs(rss1 - rss0), rss_max - rss0) / rss0 <= 0.10 if server else None,
        "errors": (setup_errors + pub["error_samples"])[:5]
        + [e for r in results for e in r["error_samples"]][:5],
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


def start_pushwire(port: int, log: str | None) -> subprocess.Popen[bytes]:
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "pushwire", "serve", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, stdout=err, stderr=err)
    wait_port(port)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    ap.add_argument("--progress", action="store_true", help="print each sample to stderr")
    ap.add_argument("--url", help="soak an already running server at this base URL")
    ap.add_argument("--server-pid", type=int, help="its PID, for RSS and CPU")
    ap.add_argument("--port", type=int, default=6121)
    ap.add_argument("--server-log", help="append the started server's output here")
    ap.add_argument("--soketi", action="store_true", help="then soak soketi the same way")
    ap.add_argument("--soketi-port", type=int, default=6122)
    args = ap.parse_args()
    if args.connections / args.procs > 19_000:
        ap.error("at most ~19,000 sockets per process here: raise --procs")
    if args.rate <= 0 or args.channels <= 0 or args.connections <= 0:
        ap.error("--rate, --channels and --connections must be positive")

    rows = []
    if args.url:
        rows.append(soak("external", args.url, args.server_pid, args))
    else:
        proc = start_pushwire(args.port, args.server_log)
        try:
            rows.append(soak("pushwire", f"http://127.0.0.1:{args.port}", proc.pid, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if args.soketi:
            pid = start_soketi(args.soketi_port)
            try:
                rows.append(soak("soketi", f"http://127.0.0.1:{args.soketi_port}", pid, args))
            finally:
                os.kill(pid, signal.SIGTERM)
    for row in rows:
        print(json.dumps(row))
    for row in rows:
        print(summary(row))


if __name__ == "__main__":
    main()
