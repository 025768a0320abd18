"""The same fan-out on three WebSocket transports: aiohttp, picows, a plain asyncio.Protocol.

Issue 12, "measure before choosing": aiohttp's `WebSocketResponse`, picows in server mode,
and a plain `asyncio.Protocol` whose frames come from the protocol core
(`pushwire.protocol.frames`, what `ws_transport = "raw"` uses). Each is a minimal server in
this module, run in its own process on uvloop (`--serve KIND`):

  - upgrade, then `pusher:connection_established`; a text frame containing
    `pusher:subscribe` gets `pusher_internal:subscription_succeeded` and makes the socket a
    subscriber;
  - on SIGUSR1 it sends --events events at --rate per second to every subscriber, each encoded
    once and written to each socket with one write (picows: its own `send`, which frames the
    payload per socket in C). Each event carries its SCHEDULED CLOCK_MONOTONIC ns as "t", so
    the generator's latency counts from the schedule.

No REST, hub, authentication or accounting: only the transport's cost differs. The driver
opens --connections sockets with the compiled generator (bench/loadgen), reports RSS per
socket (RSS after subscribing minus before, over N), server CPU per delivered message beside
the generator's, and p50/p99, then ratios against the raw protocol.

    flock /tmp/pushwire-bench.lock .venv/bin/python -m bench transports
    .venv/bin/python -m bench transports --connections 2000 --rate 25 --events 100
    .venv/bin/python -m bench transports --quick      # a small run to check the tools
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson

from bench.lib import ROOT, procs
from bench.lib.loadgen import LoadGen
from bench.lib.servers import Server, wait_port
from bench.lib.stats import emit, hist_pct, merge_hist, ratio_row
from bench.lib.wire import EVENT, event_data
from bench.scenarios import parse, parser

TRANSPORTS = ("raw", "aiohttp", "picows")
ESTABLISHED = (
    b'{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.1\\",'
    b'\\"activity_timeout\\":120}"}'
)
SUBSCRIBED = b'{"event":"pusher_internal:subscription_succeeded","channel":"bench","data":"{}"}'


def payload(s: int, t: int) -> bytes:
    return orjson.dumps({"event": EVENT, "channel": EVENT, "data": event_data(s, t, 100)})


# ------------------------------------------------------------------------------ the servers
class Emitter:
    """Sends the events on SIGUSR1; `write(payload)` is the transport's fan-out."""

    def __init__(self, rate: float, events: int) -> None:
        self.rate, self.events = rate, events
        self.subs: list[Any] = []

    def write_frames(self, p: bytes) -> None:
        """The raw and aiohttp fan-out: one frame for all, written to each socket's transport."""
        from pushwire.protocol.frames import text_frame

        frame = text_frame(p)
        for t in self.subs:
            if not t.is_closing():
                t.write(frame)

    def start(self, write: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(self.run(write)))

    async def run(self, write: Any) -> None:
        t0 = time.monotonic_ns() + 50_000_000
        for s in range(self.events):
            due = t0 + int(s * 1e9 / self.rate)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            write(payload(s, due))


async def serve_raw(port: int, em: Emitter) -> None:
    from pushwire.protocol.frames import text_frame
    from pushwire.protocol.websocket import accept_key

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""
            self.ws = False

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if not self.ws:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                key = ""
                for line in self.buf[:end].split(b"\r\n"):
                    if line.lower().startswith(b"sec-websocket-key:"):
                        key = line.split(b":", 1)[1].strip().decode()
                accept = accept_key(key)
                self.t.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + accept
                    + b"\r\n\r\n"
                    + text_frame(ESTABLISHED)
                )
                self.buf = self.buf[end + 4 :]
                self.ws = True
            while len(self.buf) >= 6:  # client frames: masked, short
                n = self.buf[1] & 127
                if n > 125 or len(self.buf) < 6 + n:
                    return
                mask, body = self.buf[2:6], self.buf[6 : 6 + n]
                text = bytes(b ^ mask[i & 3] for i, b in enumerate(body))
                op = self.buf[0] & 15
                self.buf = self.buf[6 + n :]
                if op == 8:
                    self.t.close()
                elif op == 1 and b"pusher:subscribe" in text:
                    self.t.write(text_frame(SUBSCRIBED))
                    em.subs.append(self.t)

    em.start(em.write_frames)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


async def serve_aiohttp(port: int, em: Emitter) -> None:
    from aiohttp import WSMsgType, web

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str(ESTABLISHED.decode())
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and "pusher:subscribe" in msg.data:
                await ws.send_str(SUBSCRIBED.decode())
                if request.transport is not None:
                    em.subs.append(request.transport)
        return ws

    em.start(em.write_frames)
    app = web.Application()
    app.router.add_get("/app/{key}", ws_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


async def serve_picows(port: int, em: Emitter) -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    class Listener(WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            self.t = transport
            transport.send(WSMsgType.TEXT, ESTABLISHED)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            text = frame.msg_type == WSMsgType.TEXT
            if text and b"pusher:subscribe" in frame.get_payload_as_bytes():
                transport.send(WSMsgType.TEXT, SUBSCRIBED)
                em.subs.append(transport)
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()

    def write(p: bytes) -> None:
        text = WSMsgType.TEXT
        for t in em.subs:
            t.send(text, p)  # picows frames the payload itself (a copy per socket, in C)

    em.start(write)
    server = await ws_create_server(lambda _req: Listener(), "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


def server_main(kind: str, port: int, rate: float, events: int) -> None:
    import uvloop

    em = Emitter(rate, events)
    serve = {"raw": serve_raw, "aiohttp": serve_aiohttp, "picows": serve_picows}[kind]
    uvloop.run(serve(port, em))


# ------------------------------------------------------------------------------ the driver
def run(kind: str, args: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", "transports", "--serve", kind, "--port", str(args.port)]
    cmd += ["--rate", str(args.rate), "--events", str(args.events)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    srv = Server(kind, args.port, proc.pid, proc)
    gen = None
    try:
        wait_port(args.port, proc=proc)
        time.sleep(1.0)
        rss0 = srv.rss()
        gen = LoadGen(args.port, args.connections, args.procs)
        gen.wait_subscribed(args.timeout)
        time.sleep(args.settle)
        rss1 = srv.rss()
        gen.start_window()
        c0, m0, w0 = srv.cpu_s(), procs.machine_busy(), time.monotonic()
        proc.send_signal(signal.SIGUSR1)
        expected = args.events * args.connections
        deadline = time.monotonic() + args.events / args.rate + args.drain
        while True:
            time.sleep(0.2)
            reps = gen.report()
            got = sum(r["events"] for r in reps)
            if got >= expected or time.monotonic() > deadline:
                break
        c1, m1, w1 = srv.cpu_s(), procs.machine_busy(), time.monotonic()
        window = w1 - w0
        gen_cpu = [r["cpu_user_s"] + r["cpu_sys_s"] for r in reps]
        hist = merge_hist(reps)
        d = max(got, 1)
        return {
            "transport": kind,
            "connections": args.connections,
            "rate": args.rate,
            "delivered": got,
            "expected": expected,
            "rss_per_conn_kb": round((rss1 - rss0) / args.connections / 1024, 2),
            "p50_ms": hist_pct(hist, 50),
            "p99_ms": hist_pct(hist, 99),
            "max_ms": hist_pct(hist, 100),
            "server_us_per_msg": round((c1 - c0) / d * 1e6, 2),
            "gen_us_per_msg": round(sum(gen_cpu) / d * 1e6, 2),
            "server_util": round((c1 - c0) / window, 2),
            "gen_util_max": round(max(gen_cpu) / window, 2),
            "others_util": round((m1 - m0 - (c1 - c0) - sum(gen_cpu)) / window, 2),
        }
    finally:
        if gen:
            gen.close()
        srv.stop()


def main(argv: list[str] | None = None) -> None:
    ap = parser(__name__, __doc__)
    ap.add_argument("--serve", choices=TRANSPORTS, help="(run one minimal server)")
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=5, help="events per second")
    ap.add_argument("--events", type=int, default=75)
    ap.add_argument("--rounds", type=int, default=1, help="run every transport this many times")
    ap.add_argument("--procs", type=int, default=4, help="load-generator processes")
    ap.add_argument("--port", type=int, default=7121)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--drain", type=float, default=10)
    ap.add_argument("--timeout", type=float, default=180)
    quick = {"connections": 300, "events": 10, "rate": 10, "procs": 2, "settle": 0.5}
    args = parse(ap, argv, quick)
    if args.serve:
        server_main(args.serve, args.port, args.rate, args.events)
        return
    emit({"argv": sys.argv[1:] if argv is None else argv, "pid": os.getpid()})
    keys = ("rss_per_conn_kb", "server_us_per_msg", "p50_ms", "p99_ms")
    for rnd in range(args.rounds):
        rows = []
        for kind in args.transports.split(","):
            rows.append(run(kind, args))
            emit(rows[-1])
        base = next((r for r in rows if r["transport"] == "raw"), None)
        for row in rows:  # ratios inside one round only
            if base is not None and row is not base:
                emit(ratio_row(f"{row['transport']}/raw", row, base, keys, round=rnd + 1))
