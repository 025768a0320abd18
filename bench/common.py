"""Shared pieces of the scale benchmarks (bench/scale.py): the compiled load generator
(bench/loadgen/loadgen.c, built on first use into bench/loadgen/build/, git-ignored), a cheap
paced REST publisher (requests signed ahead of time, kept-alive raw HTTP/1.1 connections),
server start/stop for Pushwire (temp config) and soketi, and CPU/RSS sampling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import orjson
import psutil  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.fanout import start_soketi, wait_port  # noqa: E402
from pushwire.protocol.signing import sign_rest  # noqa: E402

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
LOADGEN_SRC = ROOT / "bench" / "loadgen" / "loadgen.c"
LOADGEN_BIN = ROOT / "bench" / "loadgen" / "build" / "loadgen"
FLOOR_SRC = ROOT / "bench" / "floor" / "floor.c"
FLOOR_BIN = ROOT / "bench" / "floor" / "build" / "floor"
URING_HEADER = Path("/usr/include/liburing.h")  # Debian's liburing-dev


# ---------------------------------------------------------------------------- load generator
def build_c(src: Path, binary: Path, flags: list[str] | None = None) -> Path:
    """Compile src (gcc -O2) into binary unless the binary is newer than the source."""
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc") or "gcc"
    tmp = binary.with_suffix(f".{os.getpid()}.tmp")
    flags = flags or []
    libs = [f for f in flags if f.startswith("-l")]
    defs = [f for f in flags if not f.startswith("-l")]
    subprocess.run([cc, "-O2", "-Wall", *defs, "-o", str(tmp), str(src), *libs], check=True)
    tmp.replace(binary)
    return binary


def build_loadgen() -> Path:
    return build_c(LOADGEN_SRC, LOADGEN_BIN)


class LoadGen:
    """`procs` loadgen processes sharing `conns` sockets; process i connects from
    127.0.`src_base + i`.1 and .2 (ephemeral ports are per source address)."""

    def __init__(
        self,
        port: int,
        conns: int,
        procs: int,
        *,
        channel: str = "bench",
        event: str = "bench",
        sample: int = 4,
        inflight: int = 24,
        reconnect: bool = False,
        src_base: int = 100,
        handshake_timeout_ms: int = 0,
    ) -> None:
        binary = build_loadgen()
        self.conns = conns
        self.procs: list[subprocess.Popen[str]] = []
        self.last: list[dict[str, Any]] = []
        per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
        for i, n in enumerate(per):
            src = ",".join(f"127.0.{src_base + i}.{k}" for k in (1, 2))
            cmd = [
                str(binary),
                "--port", str(port),
                "--path", f"/app/{KEY}?protocol=7&client=loadgen&version=1.0",
                "--conns", str(n),
                "--src", src,
                "--inflight", str(inflight),
                "--channel", channel,
                "--event", event,
                "--sample", str(sample),
                "--reconnect", "1" if reconnect else "0",
                "--id", str(i),
                "--handshake-timeout-ms", str(handshake_timeout_ms),
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
                )
            )
        self.pids = [p.pid for p in self.procs]

    def _send(self, line: str) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()

    @staticmethod
    def _readline(p: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
        import select

        out = p.stdout
        assert out is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("load generator did not answer in time")
            r, _, _ = select.select([out], [], [], left)
            if r:
                line = out.readline()
                if not line:
                    raise RuntimeError(f"load generator {p.pid} exited ({p.poll()})")
                return dict(json.loads(line))

    def wait_subscribed(self, timeout: float) -> list[dict[str, Any]]:
        """Block until every process printed its "subscribed" line; returns those lines."""
        deadline = time.monotonic() + timeout
        lines = []
        for p in self.procs:
            while True:
                try:
                    d = self._readline(p, deadline)
                except TimeoutError:
                    st = self.report()
                    raise TimeoutError(
                        "not all subscribed: "
                        + ", ".join(
                            f"{s['subscribed']}/{s['conns']} (pending {s['pending']}, retrying "
                            f"{s['waiting_retry']}, connect errors {s['connect_errors']}, "
                            f"handshake errors {s['handshake_errors']}, disconnects "
                            f"{s['disconnects']}, close codes {s['close_codes']}, errors "
                            f"{s['error_codes']})"
                            for s in st
                        )
                    ) from None
                if d["type"] == "subscribed":
                    lines.append(d)
                    break
        return lines

    def start_window(self) -> None:
        self._send("start")

    def report(self, timeout: float = 10) -> list[dict[str, Any]]:
        self._send("report")
        deadline = time.monotonic() + timeout
        out = []
        for p in self.procs:
            while True:
                d = self._readline(p, deadline)
                if d["type"] == "report":
                    out.append(d)
                    break
        self.last = out
        return out

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def merge_hist(reports: Iterable[dict[str, Any]]) -> list[tuple[int, int]]:
    acc: collections.Counter[int] = collections.Counter()
    for r in reports:
        for us, n in r["lat"]["hist_us"]:
            acc[int(us)] += int(n)
    return sorted(acc.items())


def hist_pct(hist: list[tuple[int, int]], p: float) -> float | None:
    """Percentile in ms (bucket lower bound, ~0.2 % resolution above 1 ms)."""
    total = sum(n for _, n in hist)
    if not total:
        return None
    rank = int(p / 100 * (total - 1)) + 1
    acc = 0
    for us, n in hist:
        acc += n
        if acc >= rank:
            return round(us / 1000, 2)
    return round(hist[-1][0] / 1000, 2)


# -------------------------------------------------------------------------------- publisher
@dataclass
class PublishResult:
    events: int
    ok: int
    failed: int
    duration_s: float
    cpu_s: float
    start_ns: int
    statuses: dict[int, int] = field(default_factory=dict)


class _HttpConn(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, one request in flight (Content-Length answers)."""

    def __init__(self, pub: _Publisher) -> None:
        self.pub = pub
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, req: bytes) -> None:
        assert self.transport is not None
        self.busy = True
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
            self.buf = self.buf[end + 4 + length :]
            self.busy = False
            # soketi answers every REST call with "Connection: close": a new connection then
            reuse = b"connection: close" not in head
            self.pub.done(self, status, reuse)
            if not reuse:
                if self.transport is not None:
                    self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.pub.conn_lost(self)


class _Publisher:
    def __init__(self, reqs: list[bytes], port: int) -> None:
        self.reqs = reqs
        self.port = port
        self.conns: set[_HttpConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0
        self.queue: collections.deque[bytes] = collections.deque()
        self.free: list[_HttpConn] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.answered = 0
        self.all_done = asyncio.get_running_loop().create_future()

    def dispatch(self) -> None:
        while self.queue and self.free:
            self.free.pop().send(self.queue.popleft())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _HttpConn(self), "127.0.0.1", self.port)
        self.conns.add(proto)
        self.free.append(proto)
        self.dispatch()

    def _replace(self, conn: _HttpConn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        if conn in self.free:
            self.free.remove(conn)
        if self.all_done.done():
            return
        self.reconnects += 1
        task = asyncio.get_running_loop().create_task(self.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def done(self, conn: _HttpConn, status: int, reuse: bool = True) -> None:
        self.statuses[status] += 1
        self.answered += 1
        if reuse:
            self.free.append(conn)
        else:
            self._replace(conn)
        self.dispatch()
        if self.answered == len(self.reqs) and not self.all_done.done():
            self.all_done.set_result(None)

    def conn_lost(self, conn: _HttpConn) -> None:
        if conn.busy:  # the request on it is lost
            conn.busy = False
            self.statuses[0] += 1
            self.answered += 1
            if self.answered == len(self.reqs) and not self.all_done.done():
                self.all_done.set_result(None)
        self._replace(conn)


def build_requests(
    port: int, t0_ns: int, events: int, rate: float, size: int, channel: str = "bench"
) -> list[bytes]:
    """Signed HTTP requests for events 0..events-1; event s is scheduled at t0 + s / rate and
    carries that scheduled CLOCK_MONOTONIC ns as data.t (latency counts from the schedule)."""
    path = f"/apps/{APP_ID}/events"
    pad = "x" * max(0, size - 40)
    ts = int(time.time())
    out = []
    for s in range(events):
        t = t0_ns + int(s * 1e9 / rate)
        data = orjson.dumps({"s": s, "t": t, "p": pad}).decode()
        body = orjson.dumps({"name": "bench", "channel": channel, "data": data})
        q = sign_rest(KEY, SECRET, "POST", path, {}, body, timestamp=ts)
        out.append(
            f"POST {path}?{urlencode(q)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return out


async def _publish(port: int, rate: float, events: int, size: int, conns: int) -> PublishResult:
    lead_s = 0.3 + events * 40e-6  # signing takes ~20-30 µs an event
    t0 = time.monotonic_ns() + int(lead_s * 1e9)
    reqs = build_requests(port, t0, events, rate, size)
    pub = _Publisher(reqs, port)
    for _ in range(conns):
        await pub.connect()
    cpu0 = time.process_time()
    start = None
    s = 0
    while s < events:
        now = time.monotonic_ns()
        due = t0 + int(s * 1e9 / rate)
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            continue
        if start is None:
            start = now
        while s < events and t0 + int(s * 1e9 / rate) <= now:
            pub.queue.append(reqs[s])
            s += 1
        pub.dispatch()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pub.all_done, 30)
    end = time.monotonic_ns()
    cpu = time.process_time() - cpu0
    for c in list(pub.conns):
        if c.transport is not None:
            c.transport.close()
    ok = pub.statuses.get(200, 0)
    return PublishResult(
        events=events,
        ok=ok,
        failed=events - ok,
        duration_s=(end - (start or end)) / 1e9,
        cpu_s=cpu,
        start_ns=start or end,
        statuses=dict(pub.statuses),
    )


def publish(port: int, rate: float, events: int, size: int = 100, conns: int = 0) -> PublishResult:
    """Trigger `events` events at `rate` per second (open loop) on 127.0.0.1:port."""
    import uvloop

    conns = conns or max(4, min(64, int(rate / 50) + 4))
    result: PublishResult = uvloop.run(_publish(port, rate, events, size, conns))
    return result


# ---------------------------------------------------------------------------------- servers
@dataclass
class Server:
    name: str
    port: int
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    config: str | None = None
    tree: str | None = None  # "base": the checkout it runs from

    def proc(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def cpu_s(self) -> float:
        try:
            p = self.proc()
            t = p.cpu_times()
            total = float(t.user + t.system)
            for c in p.children(recursive=True):
                ct = c.cpu_times()
                total += ct.user + ct.system
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def rss(self) -> int:
        p = self.proc()
        return int(p.memory_info().rss) + sum(
            int(c.memory_info().rss) for c in p.children(recursive=True)
        )

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM and wait for the process to exit; returns the seconds it took."""
        t = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return 0.0
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        else:
            try:
                psutil.Process(self.pid).wait(timeout)
            except psutil.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return time.monotonic() - t


def pushwire_config(port: int) -> str:
    fd, path = tempfile.mkstemp(prefix="pushwire-scale-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(
            "[server]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n"
            'log_level = "warning"\n\n'
            "[[apps]]\n"
            f'id = "{APP_ID}"\nkey = "{KEY}"\nsecret = "{SECRET}"\n'
        )
    return path


def start_pushwire(port: int, config: str | None = None, tree: str | None = None) -> Server:
    """Pushwire from this checkout, or (`tree`) from another checkout's `pushwire/` package
    (e.g. a `git worktree` of an earlier commit) run by the same interpreter: the server
    then is named "base", for A/B runs in one invocation."""
    config = config or pushwire_config(port)
    exe = ROOT / ".venv" / "bin" / "pushwire"
    cmd = [str(exe) if exe.exists() else sys.executable, "serve", "--config", config]
    if not exe.exists():
        cmd[1:1] = ["-m", "pushwire"]
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = str(Path(tree).resolve())  # ahead of the editable install
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    return Server("base" if tree else "pushwire", port, p.pid, p, config, tree)


def start_soketi_server(port: int) -> Server:
    """soketi 1.6.1 as installed by /work/shared/peers/soketi/start.sh, with that script's
    config.json except: user authentication off (the peer config turns it on, and soketi then
    closes every socket that has not signed in after 30 s with 4009; Pushwire's default is
    off too) and its metrics/usage port moved next to `port` (default 9601 is shared)."""
    d = Path(os.environ.get("SOKETI_DIR") or Path(tempfile.gettempdir()) / "soketi-baseline")
    binary = d / "node_modules" / ".bin" / "soketi"
    if not binary.exists():  # install through the peer script once, then stop what it started
        pid = start_soketi(port)
        Server("soketi", port, pid).stop()
    peer = ROOT.parent / "shared" / "peers" / "soketi" / "config.json"
    cfg = json.loads(peer.read_text())
    cfg["port"] = port
    cfg["metrics.port"] = port + 50
    for a in cfg.get("appManager.array.apps", []):
        a["enableUserAuthentication"] = False
    fd, path = tempfile.mkstemp(prefix="soketi-scale-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    with open(d / "soketi-scale.log", "ab") as log:
        p = subprocess.Popen(
            [str(binary), "start", f"--config={path}"], cwd=d, stdout=log, stderr=log
        )
    wait_port(port, 120)
    return Server("soketi", port, p.pid, p, path)


def start_floor_server(port: int, mode: str = "send") -> Server:
    """bench/floor/floor.c: the kernel's floor for fan-out (one send() or one io_uring SEND per
    socket per event, no authentication, no buffering); mode "uring" needs liburing-dev."""
    uring = URING_HEADER.exists()
    if mode == "uring" and not uring:
        raise SystemExit("floor-uring needs liburing (apt-get install liburing-dev)")
    # built with io_uring wherever liburing is installed (a binary per variant, so that one
    # built before liburing was installed is not taken for the other)
    if uring:
        binary = build_c(
            FLOOR_SRC, FLOOR_BIN.with_name("floor-uring"), ["-DFLOOR_URING", "-luring"]
        )
    else:
        binary = build_c(FLOOR_SRC, FLOOR_BIN)
    fd, log_path = tempfile.mkstemp(prefix="floor-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        p = subprocess.Popen([str(binary), str(port), mode], stdout=log, stderr=log)
    wait_port(port)
    # the log (the floor's counters, printed when it stops) is removed with the server
    return Server("floor-uring" if mode == "uring" else "floor", port, p.pid, p, log_path)


def restart(server: Server) -> Server:
    """Start the same server again on the same port (after stop())."""
    if server.name in ("pushwire", "base"):
        return start_pushwire(server.port, server.config, server.tree)
    if server.name.startswith("floor"):
        with_suppress_unlink(server.config or "")
        return start_floor_server(server.port, "uring" if server.name == "floor-uring" else "send")
    with_suppress_unlink(server.config or "")
    return start_soketi_server(server.port)


def cleanup(server: Server) -> None:
    server.stop()
    if server.config:
        with_suppress_unlink(server.config)


def with_suppress_unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def listen_drops() -> dict[str, int]:
    """The machine's TcpExt ListenOverflows / ListenDrops counters (accept queue full: the
    SYN or the handshake's last ACK is dropped and the client retries after 1 s, 2 s, ...)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:]), strict=False))
            return {k: d.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {"ListenOverflows": 0, "ListenDrops": 0}


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free port (nothing saved); returns it and its URL."""
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    exe = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"
