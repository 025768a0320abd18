"""The REST publisher of every benchmark: signed `POST /apps/{id}/events` triggers over
kept-alive raw HTTP/1.1 connections (one request in flight each), paced open loop at a rate
or back-to-back (each connection sends its next trigger when the previous one is answered).

Event s goes to channel s % channels and carries, as data, `wire.event_data(s, t)`: t is its
scheduled CLOCK_MONOTONIC ns when paced (latency then counts from the schedule, so a
publisher or server that falls behind shows as latency), its send time when back-to-back.
Paced runs of up to 5 minutes are signed before they start (the publisher then costs little
CPU while it sends); longer ones and back-to-back ones are signed as they go (a signature is
valid for the server's 600 s timestamp window)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from array import array
from dataclasses import dataclass, field
from typing import cast

from bench.lib.stats import percentile_ms
from bench.lib.wire import APP_ID, channel_name, event_body, signed_query

PRESIGN_MAX_S = 300.0
PATH = f"/apps/{APP_ID}/events"


@dataclass
class PublishResult:
    events: int
    ok: int
    failed: list[int]  # the events whose trigger was not answered 200
    duration_s: float  # first send to last answer
    cpu_s: float  # the publisher's own CPU while it sent
    start_ns: int  # the first send
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer
    error_samples: list[str] = field(default_factory=list)
    lag_p99_ms: float | None = None  # how late triggers were sent against their schedule
    lag_max_ms: float | None = None
    rtt_p50_ms: float | None = None  # how long a trigger took to be answered
    rtt_p99_ms: float | None = None
    rtt_max_ms: float | None = None
    # per event, CLOCK_MONOTONIC ns: when it was sent, when its answer came (0: never)
    sent_ns: array[int] = field(default_factory=lambda: array("q"))
    answered_ns: array[int] = field(default_factory=lambda: array("q"))


class _HttpConn(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, one request in flight (Content-Length answers)."""

    def __init__(self, pub: _Publisher) -> None:
        self.pub = pub
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.seq = -1  # the event in flight
        self.sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, seq: int, req: bytes) -> None:
        assert self.transport is not None
        self.seq, self.sent_ns = seq, time.monotonic_ns()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            status = int(self.buf[9:12])
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            seq, self.seq = self.seq, -1
            # soketi answers every REST call with "Connection: close": a new connection then
            reuse = b"connection: close" not in head
            self.pub.answered(self, seq, status, body, reuse)
            if not reuse:
                if self.transport is not None:
                    self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        seq, self.seq = self.seq, -1
        if seq >= 0:  # the request on it is lost
            self.pub.answered(self, seq, 0, repr(exc).encode(), False)
        else:
            self.pub.replace(self)


class _Publisher:
    def __init__(
        self, host: str, port: int, events: int, rate: float, size: int, channels: int
    ) -> None:
        self.host, self.port = host, port
        self.events, self.rate, self.size, self.channels = events, rate, size, channels
        self.statuses = array("H", bytes(2 * events))
        self.sent_ns = array("q", bytes(8 * events))
        self.answered_ns = array("q", bytes(8 * events))
        self.counts: collections.Counter[int] = collections.Counter()
        self.samples: list[str] = []
        self.lags, self.rtts = array("q"), array("q")
        self.due: list[int] = []  # scheduled ns of each event (paced)
        self.reqs: list[bytes] = []  # signed ahead (short paced runs)
        self.queue: collections.deque[int] = collections.deque()
        self.free: list[_HttpConn] = []
        self.conns: set[_HttpConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = 0
        self.all_done = asyncio.get_running_loop().create_future()
        if not events:
            self.all_done.set_result(None)
        self.first_ns = 0
        self.last_ns = 0

    def request(self, s: int, t_ns: int, timestamp: int | None = None) -> bytes:
        body = event_body(s, t_ns, self.size, channel_name(s % self.channels, self.channels))
        q = signed_query("POST", PATH, body, timestamp)
        return (
            f"POST {PATH}?{q} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def dispatch(self) -> None:
        while self.queue and self.free:
            s = self.queue.popleft()
            now = time.monotonic_ns()
            self.first_ns = self.first_ns or now
            if self.rate:
                self.lags.append(now - self.due[s])
                req = self.reqs[s] if self.reqs else self.request(s, self.due[s])
            else:
                req = self.request(s, now)
            self.sent_ns[s] = now
            self.free.pop().send(s, req)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _HttpConn(self), self.host, self.port)
        self.conns.add(proto)
        self.free.append(proto)
        self.dispatch()

    def replace(self, conn: _HttpConn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        if conn in self.free:
            self.free.remove(conn)
        if self.all_done.done():
            return
        task = asyncio.get_running_loop().create_task(self.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def answered(self, conn: _HttpConn, seq: int, status: int, body: bytes, reuse: bool) -> None:
        self.last_ns = time.monotonic_ns()
        self.rtts.append(self.last_ns - conn.sent_ns)
        self.statuses[seq] = status
        self.answered_ns[seq] = self.last_ns
        self.counts[status] += 1
        if status != 200 and len(self.samples) < 5:
            self.samples.append(f"{status} {body[:200]!r}")
        if reuse:
            self.free.append(conn)
        else:
            self.replace(conn)
        self.done += 1
        self.dispatch()
        if self.done == self.events and not self.all_done.done():
            self.all_done.set_result(None)

    async def run(self, conns: int) -> float:
        """Send everything; returns the CPU seconds of the sending (not of signing ahead)."""
        if self.rate:
            presign = self.events / self.rate <= PRESIGN_MAX_S
            lead_s = 0.3 + self.events * 40e-6 if presign else 0.05  # signing: ~20-30 µs each
            t0 = time.monotonic_ns() + int(lead_s * 1e9)
            self.due = [t0 + int(s * 1e9 / self.rate) for s in range(self.events)]
            if presign:
                ts = int(time.time())
                self.reqs = [self.request(s, self.due[s], ts) for s in range(self.events)]
        for _ in range(conns):
            await self.connect()
        cpu0 = time.process_time()
        if not self.rate:
            self.queue.extend(range(self.events))
            self.dispatch()
        s = 0
        while s < len(self.due):
            now = time.monotonic_ns()
            if self.due[s] > now:
                await asyncio.sleep((self.due[s] - now) / 1e9)
                continue
            while s < len(self.due) and self.due[s] <= now:
                self.queue.append(s)
                s += 1
            self.dispatch()
        while not self.all_done.done():  # until answered, or 30 s without an answer
            done = self.done
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.all_done), 30)
            if self.done == done:
                break
        cpu = time.process_time() - cpu0
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
        return cpu


def publish(
    port: int,
    events: int,
    rate: float = 0,
    *,
    size: int = 100,
    conns: int = 0,
    channels: int = 1,
    host: str = "127.0.0.1",
) -> PublishResult:
    """Trigger `events` events at `rate` per second (0: back-to-back) on host:port, over
    `conns` connections (default: 1 back-to-back, 4-64 by the rate paced); blocks (on a
    uvloop of its own) until every trigger was answered or 30 s passed without an answer."""
    import uvloop

    if not conns:
        conns = max(4, min(64, int(rate / 50) + 4)) if rate else 1
    result: PublishResult = uvloop.run(_publish(host, port, events, rate, size, channels, conns))
    return result


async def _publish(
    host: str, port: int, events: int, rate: float, size: int, channels: int, conns: int
) -> PublishResult:
    pub = _Publisher(host, port, events, rate, size, channels)
    cpu = await pub.run(conns)
    end = pub.last_ns or time.monotonic_ns()
    failed = [s for s in range(events) if pub.statuses[s] != 200]
    lags, rtts = sorted(pub.lags), sorted(pub.rtts)
    return PublishResult(
        events=events,
        ok=events - len(failed),
        failed=failed,
        duration_s=(end - (pub.first_ns or end)) / 1e9,
        cpu_s=cpu,
        start_ns=pub.first_ns or end,
        statuses=dict(pub.counts) | ({0: events - pub.done} if pub.done < events else {}),
        error_samples=pub.samples,
        lag_p99_ms=percentile_ms(lags, 99),
        lag_max_ms=percentile_ms(lags, 100),
        rtt_p50_ms=percentile_ms(rtts, 50),
        rtt_p99_ms=percentile_ms(rtts, 99),
        rtt_max_ms=percentile_ms(rtts, 100),
        sent_ns=pub.sent_ns,
        answered_ns=pub.answered_ns,
    )
