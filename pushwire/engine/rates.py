"""Rate limits, deployment-wide: per-app counters of REST events, REST reads and client
events (one counter per wall-clock second in the shared state; this node's own count while
the state cannot be reached), and Pusher's subscription_count throttle."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from ..apps.model import App
from ..cluster.base import ClusterState
from ..metrics import Metrics
from .link import ClusterLink


class RateKind(enum.StrEnum):
    BACKEND_EVENTS = "backend_events"
    READ_REQUESTS = "read_requests"
    CLIENT_EVENTS = "client_events"


class CountThrottle:
    """Pusher's subscription_count rule, for the event and the webhook alike: on every change,
    but above 100 subscribers at most every 5 seconds per channel."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.sent: dict[tuple[str, str], float] = {}

    def allow(self, app_id: str, channel: str, count: int) -> bool:
        now = self.clock()
        key = (app_id, channel)
        if count > 100 and now - self.sent.get(key, float("-inf")) < 5.0:
            return False
        if len(self.sent) > 100_000:
            self.sent.clear()
        self.sent[key] = now
        return True


class RateLimiter:
    def __init__(self, state: ClusterState, link: ClusterLink, metrics: Metrics) -> None:
        self.state = state
        self.link = link
        self.metrics = metrics
        self._local: dict[str, int] = {}

    async def rate_limited(self, app: App, kind: RateKind, n: int, limit: float) -> float:
        """0 while `kind` stays within `limit` per second for the app, deployment-wide (one
        counter per second in the shared state; this node's own count while it cannot be
        reached); otherwise the seconds until the window ends (a Retry-After)."""
        if limit <= 0:
            return 0.0
        now = time.time()  # the wall clock: every node must name the same window
        window = int(now)
        key = f"{kind.value}:{app.id}:{window}"
        total = await self.link.call("rate", self.state.hit, key, n, 2.0)
        if total is None:
            total = self._local.get(key, 0) + n
            if len(self._local) > 10_000:
                self._local.clear()
            self._local[key] = total
        if total <= limit:
            return 0.0
        self.metrics.rate_limited[kind.value] += 1
        return max(0.001, float(window + 1 - now))
