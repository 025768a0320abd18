"""One hostile socket floods a server while another one measures how the server answers
(issue 17): the flooder runs in a process of its own (`python -m tests.helpers.flood`), so
its sending costs the measuring loop nothing; the measuring side pings the server over a
second socket (`pusher:ping`, answered through the server's message handling) and samples the
server's RSS, from before the flood until the server is quiet again.

Used by tests/server/test_rawws_flood.py and `python -m bench flood`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EMPTY_TEXT = b"\x81\x80\x00\x00\x00\x00"  # a masked, final text frame with no payload
CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        m = re.search(r"VmRSS:\s+(\d+)", fh.read())
    assert m is not None
    return int(m[1]) * 1024


class FrameCounter:
    """Walks the frames a server sends (unmasked): counts them, keeps the close code."""

    def __init__(self) -> None:
        self.buf = b""
        self.frames = 0
        self.close_code: int | None = None

    def feed(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, hdr = buf[pos + 1] & 0x7F, 2
            if length == 126:
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < hdr + length:
                break
            if buf[pos] & 0x0F == 8 and length >= 2:
                self.close_code = int.from_bytes(buf[pos + hdr : pos + hdr + 2], "big")
            self.frames += 1
            pos += hdr + length
        self.buf = buf[pos:]


def attack(
    port: int, count: int, unit: bytes = EMPTY_TEXT, prefix: bytes = b"", chunk: int = 10_000
) -> dict:
    """Send `prefix`, then `count` copies of the frame `unit` as fast as the server takes
    them (reading and dropping whatever it answers), then a close frame; return what
    happened."""
    from tests.helpers.wsraw import upgrade_request

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("no handshake answer")
        head += data
    assert head.startswith(b"HTTP/1.1 101 "), head
    frames = FrameCounter()
    frames.feed(head.partition(b"\r\n\r\n")[2])
    reset = False

    def drain() -> None:
        nonlocal reset
        try:
            while data := sock.recv(1 << 20):
                frames.feed(data)
        except OSError:
            reset = True

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    t0 = time.monotonic()
    sent = 0
    try:
        sock.sendall(prefix)
        block = unit * chunk
        while sent < count:
            n = min(chunk, count - sent)
            sock.sendall(block if n == chunk else unit * n)
            sent += n
        sock.sendall(CLOSE_1000)
    except OSError:
        pass  # the server closed the connection
    sending = time.monotonic() - t0
    reader.join(120)
    sock.close()
    return {
        "frames_sent": sent,
        "sending_s": round(sending, 3),
        "total_s": round(time.monotonic() - t0, 3),
        "frames_received": frames.frames,
        "close_code": frames.close_code,
        "reset": reset,
    }


@dataclass
class FloodResult:
    attacker: dict
    rss_before: int
    rss_peak: int
    pings: list[float] = field(default_factory=list)  # seconds, one per pusher:ping answered
    timed_out: bool = False  # a ping was not answered within `ping_timeout`

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before

    @property
    def worst_ping(self) -> float:
        return max(self.pings, default=float("inf"))

    def ping_quantile(self, q: float) -> float:
        s = sorted(self.pings)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("inf")

    def summary(self) -> str:
        return (
            f"RSS +{self.rss_growth / 1e6:.1f} MB, {len(self.pings)} pings: worst "
            f"{self.worst_ping * 1000:.1f} ms, p99 {self.ping_quantile(0.99) * 1000:.1f} ms"
            f"{' (one timed out)' if self.timed_out else ''}; flooder: {self.attacker}"
        )


async def flood(
    port: int,
    pid: int,
    frames: int = 1_000_000,
    unit: bytes = EMPTY_TEXT,
    prefix: bytes = b"",
    settle: float = 1.0,
    ping_timeout: float = 5.0,
    limit: float = 120.0,
) -> FloodResult:
    """Flood the server on `port` (process `pid`) from another process with `frames` copies
    of `unit` (after `prefix`), pinging it over a second socket every 10 ms from before the
    flood until `settle` seconds after the flooder is done (or a ping times out)."""
    from tests.helpers.wsraw import PING_EVENT, opened

    observer = await opened(port)
    try:
        for _ in range(3):  # warm: the first answers pay for lazy imports
            observer.send(PING_EVENT)
            await observer.event()
        result = FloodResult({}, rss(pid), 0)
        result.rss_peak = result.rss_before
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.helpers.flood",
            str(port),
            str(frames),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None  # the frames go this way: they may be megabytes
        proc.stdin.write(json.dumps({"unit": unit.hex(), "prefix": prefix.hex()}).encode())
        proc.stdin.close()
        loop = asyncio.get_running_loop()

        async def sample() -> None:
            while True:
                result.rss_peak = max(result.rss_peak, rss(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        done_at: float | None = None
        deadline = loop.time() + limit
        while loop.time() < deadline:
            if done_at is None and proc.returncode is not None:
                done_at = loop.time()
            if done_at is not None and loop.time() > done_at + settle:
                break
            t0 = loop.time()
            observer.send(PING_EVENT)
            try:
                while (ev := await observer.event(ping_timeout))["event"] != "pusher:pong":
                    assert ev["event"] == "pusher:ping", ev  # the server's own, if it comes
            except TimeoutError:
                result.pings.append(loop.time() - t0)
                result.timed_out = True
                break
            result.pings.append(loop.time() - t0)
            await asyncio.sleep(0.01)
        sampler.cancel()
        if proc.returncode is None:
            proc.kill()
        out, _ = await proc.communicate()
        result.attacker = json.loads(out or b"{}")
        result.rss_peak = max(result.rss_peak, rss(pid))
        return result
    finally:
        await observer.aclose()


if __name__ == "__main__":
    stream = json.load(sys.stdin)
    unit_, prefix_ = bytes.fromhex(stream["unit"]), bytes.fromhex(stream["prefix"])
    print(json.dumps(attack(int(sys.argv[1]), int(sys.argv[2]), unit_, prefix_)))
