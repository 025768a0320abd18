"""The traffic monitor: what clients send and what the server answers, for extensions and
for `pushwire tap`. Costs nothing while nobody listens (`active` is False)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pushwire.monitor")

Listener = Callable[[dict[str, Any]], None]


class TrafficMonitor:
    def __init__(self, node: str) -> None:
        self.node = node
        self.local: list[Listener] = []  # want this node's traffic
        self.cluster: list[Listener] = []  # want every node's traffic
        self.cluster_wanted = False  # some node of the cluster has cluster listeners
        # set by the cluster adapter: forwards an event to the other nodes
        self.forward: Callable[[dict[str, Any]], None] | None = None

    @property
    def active(self) -> bool:
        return bool(self.local or self.cluster or self.cluster_wanted)

    def add(self, fn: Listener, cluster: bool = False) -> None:
        (self.cluster if cluster else self.local).append(fn)

    def remove(self, fn: Listener) -> None:
        for group in (self.local, self.cluster):
            if fn in group:
                group.remove(fn)

    def emit(self, kind: str, app_id: str, **fields: Any) -> None:
        event = {
            "time_ms": int(time.time() * 1000),
            "node": self.node,
            "kind": kind,
            "app": app_id,
            **fields,
        }
        self.deliver(event, remote=False)
        if self.cluster_wanted and self.forward is not None:
            self.forward(event)

    def deliver(self, event: dict[str, Any], remote: bool) -> None:
        targets = self.cluster if remote else self.local + self.cluster
        for fn in targets:
            try:
                fn(event)
            except Exception:
                log.exception("traffic monitor listener failed")
