"""The picows subscriber: Pusher client sockets in client processes (spawned, each on
uvloop, connecting from its own 127.0.N.x source addresses), driven by the benchmark through
`Subscribers` (the processes' side: bench/lib/subscriber_proc.py).

Socket g of the whole set subscribes to channel g % channels (`wire.channel_name`), with
`recover` from its last position when `positioned` (channel history). Every socket answers
`pusher:ping`. Between `count(events)` and `collect(...)` each socket counts the bench events
of its channel (event s is for channel s % channels), as the spec's `Accounting` says: every
receipt with its latency (from the time the event carries; the cheapest, for fan-out rates),
or each event by number (the first receipt's latency; duplicates, losses and strays counted).
`collect` returns when every subscribed socket has as many events as its channel was sent.
`close()` and `reopen(events)` make every socket leave and come back at once (a reconnect
storm)."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import queue
import time
from array import array
from collections.abc import Iterable
from typing import Any

from bench.lib.subscriber_proc import Accounting, Cmd, Spec, run

__all__ = ["Accounting", "Spec", "Subscribers"]


class Subscribers:
    """`procs` client processes holding the sockets of `spec`; use as a context manager."""

    def __init__(self, spec: Spec, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.ctls = [ctx.Queue() for _ in range(procs)]
        self.procs = [
            ctx.Process(target=run, args=(spec, i, procs, q, self.out), daemon=True)
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
