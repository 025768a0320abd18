"""The memory backend: `Broker`, `ClusterState` and `Liveness` over one shared `Backplane`.

One node (the default single-node server) uses a backplane of its own. Several nodes in one
process share one, which makes an in-process cluster for tests: same engine, same decisions,
no sockets, deterministic. The records mirror the Redis backend's (per-node counts beside
deployment totals) so reaping and resync behave the same way, and `cut(node)` simulates a
node that cannot reach the store.
"""

from __future__ import annotations

from .broker import MemoryBroker
from .plane import Backplane
from .state import MemoryLiveness, MemoryState

__all__ = ["Backplane", "MemoryBroker", "MemoryLiveness", "MemoryState"]
