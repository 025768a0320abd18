"""The picows subscriber: Pusher client sockets in client processes (spawned, each on
uvloop, connecting from its own 127.0.N.x source addresses), driven by commands from the
benchmark (`Subscribers`).

Socket g of the whole set subscribes to channel g % channels (`wire.channel_name`), with
`recover` from its last position when `positioned` (channel history). Every socket answers
`pusher:ping`. Between `count(events)` and `collect(...)` each socket counts the bench events
of its channel by number (event s is for channel s % channels): the first receipt of each
records its latency (from the time the event carries) and duplicates, losses and strays are
counted; `collect` returns when every subscribed socket has every event its channel was sent.
`close()` and `reopen(events)` make every socket leave and come back at once (a reconnect
storm)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import multiprocessing as mp
import queue
import time
import traceback
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.lib.wire import EVENT_PREFIX, channel_name, parse_event

PER_SOURCE_ADDRESS = 10_000  # sockets per 127.0.N.x source address (ephemeral ports)
MAX_CONNECT_ERRORS = 50  # a process stops connecting after this many failures


class Cmd(enum.Enum):
    OPEN = "open"  # (total sockets of this process) -> info
    COUNT = "count"  # (events) -> nothing; counting starts
    COLLECT = "collect"  # (failed events, drain seconds) -> the receipts
    CLOSE = "close"  # () -> nothing; every socket closed
    REOPEN = "reopen"  # (events, timeout) -> when every socket is back with every event
    STOP = "stop"  # () -> the process exits


@dataclass(frozen=True)
class Spec:
    urls: tuple[str, ...]  # ws://host:port/app/KEY?...: client process i uses urls[i % len]
    channels: int = 1
    positioned: bool = False  # subscribe with `recover` (history positions)
    inflight: int = 1  # handshakes in flight per process
    timeout: float = 180  # seconds for every socket to subscribe


def events_of(channel: int, events: int, channels: int) -> int:
    """How many of the events 0..events-1 go to `channel`."""
    return len(range(channel, events, channels))


# ------------------------------------------------------------------------ in a client process
def _process(spec: Spec, index: int, procs: int, ctl: Any, out: Any) -> None:
    """Process entry point: run the client on uvloop; a crash is reported, not swallowed."""
    import uvloop

    async def main() -> None:
        await _Client(spec, index, procs, ctl, out).run()

    try:
        uvloop.run(main())
    except BaseException:
        out.put(("crash", index, traceback.format_exc()))
        raise


class _Client:
    def __init__(self, spec: Spec, index: int, procs: int, ctl: Any, out: Any) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.spec, self.index, self.procs, self.ctl, self.out = spec, index, procs, ctl, out
        self.loop = asyncio.get_running_loop()
        self.socks: list[Any] = []
        self.latencies = array("q")  # first receipt of each (socket, event), ns
        self.stats = collections.Counter[str]()  # pings, disconnects, errors, unknown
        self.samples: list[str] = []
        self.closing = False
        self.unique = 0  # first receipts over all sockets
        self.target = -1  # first receipts that complete the count
        self.complete = 0  # sockets subscribed with all their events (reopen)
        self.done = asyncio.Event()
        self.listener = _listener_class(self)

    def error(self, text: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(text[:300])

    def sock_done(self) -> None:
        self.complete += 1
        if self.complete == len(self.socks):
            self.done.set()

    def reset(self, events: int) -> None:
        for s in self.socks:
            s.counts = bytearray(events_of(s.channel, events, self.spec.channels))
            s.got = 0
            s.done_at = 0
        self.latencies = array("q")
        self.unique = self.complete = 0
        self.stats.clear()
        self.done.clear()

    async def connect(self, socks: Iterable[Any]) -> None:
        """Connect (or reconnect) `socks`, `inflight` handshakes at a time."""
        from picows import ws_connect

        gate = asyncio.Semaphore(self.spec.inflight)
        url = self.spec.urls[self.index % len(self.spec.urls)]

        async def one(s: Any) -> None:
            if self.stats["connect_errors"] >= MAX_CONNECT_ERRORS:
                return
            j = s.g // self.procs
            src = f"127.0.{1 + self.index % 200}.{1 + j // PER_SOURCE_ADDRESS}"
            async with gate:
                try:
                    await ws_connect(
                        lambda: s, url, local_addr=(src, 0),
                        websocket_handshake_timeout=120,
                    )  # fmt: skip
                except Exception as e:
                    self.stats["connect_errors"] += 1
                    self.error(f"connect #{j} from {src}: {e!r}")

        await asyncio.gather(*(one(s) for s in socks))

    async def open(self, total: int) -> dict[str, Any]:
        t0 = time.monotonic()
        fresh = [self.listener(self.index + k * self.procs) for k in range(len(self.socks), total)]
        self.socks += fresh
        await self.connect(fresh)
        subscribed = [s.ready for s in self.socks if s.transport is not None]
        if subscribed:
            await asyncio.wait(subscribed, timeout=self.spec.timeout)
        subs = [0] * self.spec.channels
        for s in self.socks:
            subs[s.channel] += s.subscribed
        return {
            "connected": sum(s.transport is not None for s in self.socks),
            "subscribed": sum(subs),
            "subs": subs,
            "connect_errors": self.stats["connect_errors"],
            "lost": self.stats["disconnects"],
            "errors": list(self.samples),
            "open_s": time.monotonic() - t0,
        }

    async def collect(self, failed: list[int], drain: float, cpu0: float, wall0: float) -> Any:
        channels = self.spec.channels
        failed_by_channel: dict[int, set[int]] = {}
        for s in failed:
            failed_by_channel.setdefault(s % channels, set()).add(s // channels)
        self.target = sum(
            len(s.counts) - len(failed_by_channel.get(s.channel, ()))
            for s in self.socks
            if s.subscribed
        )
        if self.unique >= self.target:
            self.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), drain)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        self.target = -1
        delivered = duplicates = lost = with_loss = 0
        for sock in self.socks:
            if not sock.subscribed:
                continue
            counts, fails = sock.counts, failed_by_channel.get(sock.channel, ())
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
            with_loss += missing > 0
        return {
            "delivered": delivered,
            "duplicates": duplicates,
            "lost": lost,
            "sockets_with_loss": with_loss,
            "latencies": self.latencies.tobytes(),
            "cpu_s": cpu,
            "wall_s": wall,
            "pings": self.stats["pings"],
            "disconnects": self.stats["disconnects"],
            "errors": self.stats["errors"],
            "unknown": self.stats["unknown"],
            "error_samples": list(self.samples),
        }

    async def reopen(self, events: int, timeout: float) -> Any:
        cpu0 = time.process_time()
        before = [(len(s.offsets), s.position[1] if s.position else -1) for s in self.socks]
        self.reset(events)
        for s in self.socks:
            s.subscribed = False
            s.transport = None
            s.ready = self.loop.create_future()
        await self.connect(self.socks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        verdicts = collections.Counter(
            "recovered"
            if s.recovered and s.offsets[b:] == list(range(p + 1, p + 1 + len(s.counts)))
            else f"recovered={s.recovered} events={len(s.offsets) - b}"
            for s, (b, p) in zip(self.socks, before, strict=True)
        )
        return {
            "done_at": max((s.done_at for s in self.socks), default=0),
            "verdicts": dict(verdicts),
            "cpu_s": time.process_time() - cpu0,
        }

    async def close(self) -> None:
        self.closing = True
        for s in self.socks:
            if s.transport is not None:
                s.transport.disconnect()
        await asyncio.sleep(0.5)
        self.closing = False

    async def run(self) -> None:
        cpu0, wall0 = time.process_time(), time.monotonic()
        while True:
            cmd, args = await self.loop.run_in_executor(None, self.ctl.get)
            if cmd is Cmd.OPEN:
                self.out.put((cmd, self.index, await self.open(*args)))
            elif cmd is Cmd.COUNT:
                self.reset(*args)
                cpu0, wall0 = time.process_time(), time.monotonic()
                self.out.put((cmd, self.index, None))
            elif cmd is Cmd.COLLECT:
                failed, drain = args
                self.out.put((cmd, self.index, await self.collect(failed, drain, cpu0, wall0)))
            elif cmd is Cmd.CLOSE:
                await self.close()
                self.out.put((cmd, self.index, None))
            elif cmd is Cmd.REOPEN:
                self.out.put((cmd, self.index, await self.reopen(*args)))
            else:
                self.closing = True
                for s in self.socks:
                    if s.transport is not None:
                        s.transport.disconnect()
                await asyncio.sleep(0.2)
                return


def _listener_class(client: _Client) -> Any:
    """The socket class of one client process (picows is imported in that process only)."""
    import orjson
    from picows import WSListener, WSMsgType

    spec = client.spec
    channels = spec.channels
    pong = orjson.dumps({"event": "pusher:pong", "data": {}})
    mono = time.monotonic_ns
    stats = client.stats

    class Sock(WSListener):
        def __init__(self, g: int) -> None:
            self.g = g
            self.channel = g % channels
            self.name = channel_name(self.channel, channels)
            self.transport: Any = None
            self.subscribed = False
            self.ready: asyncio.Future[None] = client.loop.create_future()
            self.counts = bytearray()  # receipts of each event of this channel
            self.got = 0  # events received at least once
            self.done_at = 0  # when it was subscribed with all its events (reopen)
            self.position: tuple[str, int] | None = None
            self.offsets: list[int] = []
            self.recovered: bool | None = None

        def on_ws_connected(self, transport: Any) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            raw = frame.get_payload_as_bytes()
            if raw.startswith(EVENT_PREFIX):
                self.event(raw)
            elif b"pusher:ping" in raw:
                stats["pings"] += 1
                transport.send(WSMsgType.TEXT, pong)
            elif b"connection_established" in raw:
                sub: dict[str, Any] = {"channel": self.name}
                if spec.positioned:
                    pos = self.position
                    sub["recover"] = {} if pos is None else {"epoch": pos[0], "offset": pos[1]}
                msg = {"event": "pusher:subscribe", "data": sub}
                transport.send(WSMsgType.TEXT, orjson.dumps(msg))
            elif b"subscription_succeeded" in raw:
                if spec.positioned:
                    m = orjson.loads(raw)
                    if "epoch" in m and self.position is None:
                        self.position = (m["epoch"], m["offset"])
                    self.recovered = m.get("recovered")
                if not self.subscribed:
                    self.subscribed = True
                    if not self.ready.done():
                        self.ready.set_result(None)
                    self.check_done()
            elif b"pusher:error" in raw or b"subscription_error" in raw:
                stats["errors"] += 1
                client.error(raw.decode(errors="replace"))

        def event(self, raw: bytes) -> None:
            now = mono()
            if spec.positioned:
                m = orjson.loads(raw)
                self.position = (m["epoch"], m["offset"])
                self.offsets.append(m["offset"])
            s, t = parse_event(raw)
            k, r = divmod(s, channels)
            if r != self.channel or k >= len(self.counts):
                stats["unknown"] += 1
                return
            c = self.counts[k]
            if c == 0:
                client.latencies.append(now - t)
                self.got += 1
                client.unique += 1
                if client.unique == client.target:
                    client.done.set()
                self.check_done()
            if c < 255:
                self.counts[k] = c + 1

        def check_done(self) -> None:
            if self.subscribed and self.got == len(self.counts) and not self.done_at:
                self.done_at = mono()
                client.sock_done()

        def on_ws_disconnected(self, transport: Any) -> None:
            if not client.closing:
                stats["disconnects"] += 1

    return Sock


# ----------------------------------------------------------------------- in the benchmark
class Subscribers:
    """`procs` client processes holding the sockets of `spec`; use as a context manager."""

    def __init__(self, spec: Spec, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.ctls = [ctx.Queue() for _ in range(procs)]
        self.procs = [
            ctx.Process(target=_process, args=(spec, i, procs, q, self.out), daemon=True)
            for i, q in enumerate(self.ctls)
        ]
        for p in self.procs:
            p.start()

    def __enter__(self) -> Subscribers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ask(self, cmd: Cmd, args: list[tuple[Any, ...]], timeout: float) -> list[Any]:
        """Send each process its command; their answers in process order."""
        for q, a in zip(self.ctls, args, strict=True):
            q.put((cmd, a))
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            try:
                kind, index, payload = self.out.get(timeout=1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"client processes did not answer {cmd.value}") from None
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead and self.out.empty():
                    raise RuntimeError(f"client processes exited with {dead}") from None
                continue
            if kind == "crash":
                raise RuntimeError(f"client process {index} crashed:\n{payload}")
            if kind is cmd:
                got[index] = payload
        return [got[i] for i in range(len(self.procs))]

    def _all(self, cmd: Cmd, timeout: float, *args: Any) -> list[Any]:
        return self._ask(cmd, [args] * len(self.procs), timeout)

    def open(self, total: int, timeout: float = 600) -> dict[str, Any]:
        """Open sockets until there are `total` (all subscribed, or the spec's timeout)."""
        n = len(self.procs)
        infos = self._ask(
            Cmd.OPEN, [(total // n + (1 if i < total % n else 0),) for i in range(n)], timeout
        )
        return {
            "connected": sum(i["connected"] for i in infos),
            "subscribed": sum(i["subscribed"] for i in infos),
            "subs": [sum(c) for c in zip(*(i["subs"] for i in infos), strict=True)],
            "connect_errors": sum(i["connect_errors"] for i in infos),
            "lost": sum(i["lost"] for i in infos),
            "errors": [e for i in infos for e in i["errors"]][:5],
            "open_s": round(max(i["open_s"] for i in infos), 2),
        }

    def count(self, events: int) -> None:
        """From now on, count the events 0..events-1 (CPU and wall time start now too)."""
        self._all(Cmd.COUNT, 60, events)

    def collect(self, failed: Iterable[int] = (), drain: float = 30) -> dict[str, Any]:
        """Wait (up to `drain` s) for every event but `failed`; the receipts, merged:
        `latencies` sorted (ns), `cpu_s` of all processes, `busiest` process's share of a
        core."""
        rs = self._all(Cmd.COLLECT, drain + 120, list(failed), drain)
        lat = array("q")
        for r in rs:
            lat.frombytes(r.pop("latencies"))
        keys = [k for k, v in rs[0].items() if isinstance(v, int | float) and k != "wall_s"]
        merged: dict[str, Any] = {k: sum(r[k] for r in rs) for k in keys}
        merged["latencies"] = sorted(lat)
        merged["busiest"] = max(r["cpu_s"] / r["wall_s"] for r in rs if r["wall_s"])
        merged["error_samples"] = [e for r in rs for e in r["error_samples"]][:5]
        return merged

    def close(self) -> None:
        self._all(Cmd.CLOSE, 60)

    def reopen(self, events: int, timeout: float = 600) -> dict[str, Any]:
        """Every socket reconnects at once (with its position when positioned) and must get
        events 0..events-1; `done_at`: when the last one had them (CLOCK_MONOTONIC ns)."""
        rs = self._all(Cmd.REOPEN, timeout + 60, events, timeout)
        verdicts: collections.Counter[str] = collections.Counter()
        for r in rs:
            verdicts.update(r["verdicts"])
        return {
            "done_at": max(r["done_at"] for r in rs),
            "verdicts": dict(verdicts),
            "cpu_s": sum(r["cpu_s"] for r in rs),
        }

    def stop(self) -> None:
        for q in self.ctls:
            with contextlib.suppress(Exception):
                q.put((Cmd.STOP, ()))
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
