"""CPU and memory of processes and of the machine: the one place the benchmarks read them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import psutil  # type: ignore[import-untyped,unused-ignore]


def _tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants (workers, node's children), alive now."""
    out: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_s(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the process trees of `pids` so far."""
    total = 0.0
    for p in _tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss(pids: Iterable[int]) -> int:
    """Resident bytes of the process trees of `pids`."""
    total = 0
    for p in _tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += int(p.memory_info().rss)
    return total


def settled_rss(pids: Iterable[int], seconds: float = 3.0) -> int:
    """The RSS once it stopped moving (under 64 KiB in half a second), or after `seconds`."""
    pids = list(pids)
    last = rss(pids)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pids)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


class Sampler:
    """Every `period` seconds, in a thread: (seconds since start, RSS, CPU seconds since
    start) of the process trees of `pids`; `stop()` adds a last sample and returns them all."""

    def __init__(self, pids: Iterable[int], period: float, progress: bool = False) -> None:
        self.pids = list(pids)
        self.period = period
        self.progress = progress
        self.samples: list[tuple[float, int, float]] = []
        self.t0 = time.monotonic()
        self.cpu0 = cpu_s(self.pids)
        self.rss0 = rss(self.pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> tuple[float, int, float]:
        s = (time.monotonic() - self.t0, rss(self.pids), cpu_s(self.pids) - self.cpu0)
        self.samples.append(s)
        if self.progress:
            print(f"  {s[0]:6.0f} s  RSS {s[1] / 2**20:7.1f} MB  CPU {s[2]:7.1f} s", flush=True)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> list[tuple[float, int, float]]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.samples


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def cores() -> int:
    return int(psutil.cpu_count() or 1)


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
