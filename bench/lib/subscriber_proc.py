"""The picows subscriber's client process: many Pusher sockets on one uvloop, connecting from
the process's own 127.0.N.x source addresses, doing what `Cmd`s from the benchmark say (see
bench/lib/subscribers.py, which starts and drives these processes)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
import traceback
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.lib.wire import EVENT_PREFIX, SENT_KEY, channel_name, parse_event

PER_SOURCE_ADDRESS = 10_000  # sockets per 127.0.N.x source address (ephemeral ports)
MAX_CONNECT_ERRORS = 50  # a process stops connecting after this many failures


class Cmd(enum.Enum):
    OPEN = "open"  # (total sockets of this process) -> info
    COUNT = "count"  # (events) -> nothing; counting starts
    COLLECT = "collect"  # (failed events, drain seconds) -> the receipts
    CLOSE = "close"  # () -> nothing; every socket closed
    REOPEN = "reopen"  # (events, timeout) -> when every socket is back with every event
    STOP = "stop"  # () -> the process exits


class Accounting(enum.Enum):
    RECEIPTS = "receipts"  # every receipt's latency, and their number
    EXACT = "exact"  # each event by number: first receipt's latency, duplicates, losses


@dataclass(frozen=True)
class Spec:
    urls: tuple[str, ...]  # ws://host:port/app/KEY?...: client process i uses urls[i % len]
    accounting: Accounting = Accounting.EXACT
    channels: int = 1
    positioned: bool = False  # subscribe with `recover` (history positions)
    inflight: int = 1  # handshakes in flight per process
    timeout: float = 180  # seconds for every socket to subscribe


def events_of(channel: int, events: int, channels: int) -> int:
    """How many of the events 0..events-1 go to `channel`."""
    return len(range(channel, events, channels))


def run(spec: Spec, index: int, procs: int, ctl: Any, out: Any) -> None:
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

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.spec, self.index, self.procs, self.ctl, self.out = spec, index, procs, ctl, out
        self.loop = asyncio.get_running_loop()
        self.socks: list[Any] = []
        self.latencies = array("q")  # ns; every receipt's, or (exact) each event's first
        self.stats = collections.Counter[str]()  # pings, disconnects, errors, unknown
        self.samples: list[str] = []
        self.closing = False
        self.unique = 0  # receipts counted over all sockets (exact: first receipts)
        self.target = -1  # the count that completes collect()
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
        exact = self.spec.accounting is Accounting.EXACT
        for s in self.socks:
            s.expected = events_of(s.channel, events, self.spec.channels)
            s.counts = bytearray(s.expected if exact else 0)
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
        fails = {c: len(seqs) for c, seqs in failed_by_channel.items()}
        self.target = sum(s.expected - fails.get(s.channel, 0) for s in self.socks if s.subscribed)
        if self.unique >= self.target:
            self.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), drain)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        self.target = -1
        return {
            **self.tally(failed_by_channel),
            "latencies": self.latencies.tobytes(),
            "cpu_s": cpu,
            "wall_s": wall,
            "pings": self.stats["pings"],
            "disconnects": self.stats["disconnects"],
            "errors": self.stats["errors"],
            "unknown": self.stats["unknown"],
            "error_samples": list(self.samples),
        }

    def tally(self, failed_by_channel: dict[int, set[int]]) -> dict[str, int]:
        """Delivered, duplicates (exact accounting only) and lost events, over the subscribed
        sockets; events whose trigger failed are not expected (nor counted)."""
        delivered = duplicates = lost = with_loss = 0
        for sock in self.socks:
            if not sock.subscribed:
                continue
            dropped = failed_by_channel.get(sock.channel, set())
            if self.spec.accounting is Accounting.RECEIPTS:
                got = sock.got
            else:
                counts = sock.counts
                got = len(counts) - counts.count(0)
                extra = sum(counts) - got
                for k in dropped:
                    if counts[k]:
                        got -= 1
                        extra -= counts[k] - 1
                duplicates += extra
            missing = max(0, sock.expected - len(dropped) - got)
            delivered += got
            lost += missing
            with_loss += missing > 0
        return {
            "delivered": delivered,
            "duplicates": duplicates,
            "lost": lost,
            "sockets_with_loss": with_loss,
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
            if s.recovered and s.offsets[b:] == list(range(p + 1, p + 1 + s.expected))
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
    exact = spec.accounting is Accounting.EXACT
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
            self.expected = 0  # events sent to this channel since count()
            self.counts = bytearray()  # receipts of each of them (exact accounting)
            self.got = 0  # receipts (exact: events received at least once)
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
                if spec.positioned:
                    m = orjson.loads(raw)
                    self.position = (m["epoch"], m["offset"])
                    self.offsets.append(m["offset"])
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

        def receipt(self, raw: bytes) -> None:
            """Accounting.RECEIPTS: as little work per message as possible."""
            i = raw.index(SENT_KEY) + 6
            client.latencies.append(mono() - int(raw[i : raw.index(b",", i)]))
            self.got += 1
            client.unique += 1
            if client.unique == client.target:
                client.done.set()
            if self.got == self.expected:
                self.check_done()

        def numbered(self, raw: bytes) -> None:
            """Accounting.EXACT."""
            now = mono()
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

        event = numbered if exact else receipt

        def check_done(self) -> None:
            if self.subscribed and self.got == self.expected and not self.done_at:
                self.done_at = mono()
                client.sock_done()

        def on_ws_disconnected(self, transport: Any) -> None:
            if not client.closing:
                stats["disconnects"] += 1

    return Sock
