"""This node's message rates over the last minutes, for the dashboard's chart.

A timer samples the cumulative counters (frames in and out) every `step` seconds; the rates
are the differences, so a rate of one message a minute shows as a bar of 1/step, not a zero.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

STEP = 5.0  # seconds per point
SPAN = 300.0  # seconds shown


class RateHistory:
    def __init__(
        self,
        counters: Callable[[], tuple[int, int]],
        clock: Callable[[], float] = time.time,
        step: float = STEP,
        span: float = SPAN,
    ) -> None:
        self._counters = counters
        self._clock = clock
        self.step = step
        self.span = span
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=int(span / step) + 1)
        self._timer: asyncio.TimerHandle | None = None

    def sample(self) -> None:
        frames_in, frames_out = self._counters()
        self._samples.append((self._clock(), frames_in, frames_out))

    def series(self) -> dict[str, Any]:
        """`{"step", "span", "t_ms": [...], "in": [...], "out": [...]}`: per point, the end of
        its interval (ms since the epoch) and the messages per second in and out over it. The
        last point runs from the last sample to now (the interval in progress)."""
        now = self._clock()
        points = [*self._samples]
        if not points or now > points[-1][0]:
            frames_in, frames_out = self._counters()
            points.append((now, frames_in, frames_out))
        t_ms: list[int] = []
        rates_in: list[float] = []
        rates_out: list[float] = []
        for (t0, i0, o0), (t1, i1, o1) in pairwise(points):
            dt = t1 - t0
            if dt < 0.2 or t1 < now - self.span:  # a sample taken just now says nothing yet
                continue
            t_ms.append(int(t1 * 1000))
            rates_in.append(round((i1 - i0) / dt, 3))
            rates_out.append(round((o1 - o0) / dt, 3))
        return {
            "step": self.step,
            "span": self.span,
            "now_ms": int(now * 1000),
            "t_ms": t_ms,
            "in": rates_in,
            "out": rates_out,
        }

    def start(self) -> None:
        """Sample now and every `step` seconds on the running loop, until `stop()`."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.sample()
            self._timer = loop.call_later(self.step, tick)

        tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
