"""The Redis backend: `Broker`, `ClusterState` and `Liveness` over Redis.

`RedisBackend(bus, state, prefix, node, node_timeout)` takes two targets (`urls.RedisTarget`):
the *bus* (pub/sub, and the history streams: everything a publish touches) and the *state*
(presence, counts, quotas, cache, claims, leases, webhook jobs). They may name one server (the
default: `redis_url` is both) or two; each may be a single server or a Sentinel-managed
primary (`clients.py`). Per role: one client (a connection pool) for the scripts, one for the
publishes, and the broker's dedicated pub/sub connection.

- Publishes (their own pool) are retried once on a fresh connection after a
  `ConnectionError`: a receiver drops the copy when both went out (`pubsub.Recent`). State
  scripts are never retried: one that ran before its connection broke would run twice (a
  member or a quota slot counted twice); the failure surfaces and the engine repairs the
  node's records with a resync.
- Every error that remains surfaces as `base.Unavailable`.
- A new primary (failover, restart without data) is found on the first new connection to it
  (`clients.PrimaryWatch`): this node's registration there does not count (it resyncs), and a
  channel's history starts a new epoch there.

Data model: `keys.py`. Scripts: `lua/`.
"""

from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .bus import RedisBroker
from .clients import PrimaryWatch, make_client
from .keys import Keys
from .listener import follow_node_timeout
from .liveness import RedisLiveness
from .scripts import Scripts
from .state import RedisState
from .urls import RedisTarget
from .webhooks import RedisWebhookStore


class RedisBackend:
    def __init__(
        self,
        bus: RedisTarget,
        state: RedisTarget,
        prefix: str,
        node: str,
        node_timeout: float,
    ) -> None:
        if not node or any(c in node for c in ":\n\r"):
            raise ValueError(f"node id {node!r} must be non-empty, without ':' or newlines")
        self.node = node
        self.keys = keys = Keys(prefix)
        self.apart = bus != state
        self.watches = {"state": PrimaryWatch("state")}
        self.watches["bus"] = PrimaryWatch("bus") if self.apart else self.watches["state"]
        # state scripts are never retried: one that ran before its connection broke would run
        # twice (a member or a quota slot counted twice); the engine resyncs instead
        self.client = make_client(state, self.watches["state"])
        # publishes are retried once on a fresh connection: never a loss; a receiver drops the
        # copy when both went out (the publish id); a history publish is appended once
        self.bus_client = make_client(
            bus,
            self.watches["bus"],
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
        )
        self.scripts = Scripts(self.client, keys, node, self.watches["state"])
        bus_scripts = Scripts(self.bus_client, keys, node, self.watches["bus"])
        self.broker = RedisBroker(bus_scripts, self.scripts if self.apart else None)
        follow_node_timeout(self.broker, node_timeout)
        self.state = RedisState(self.scripts)
        watches = {id(w): w for w in self.watches.values()}.values()  # one when not apart
        self.liveness = RedisLiveness(self.scripts, node_timeout, watches)

    def webhook_store(self, max_size: int) -> RedisWebhookStore:
        return RedisWebhookStore(self.scripts, max_size)

    def primaries(self) -> list[tuple[str, str, int]]:
        """Per role ("bus", "state": one watch when they are one server): the primary it reaches
        and how often that changed."""
        return [(role, w.address, w.changes) for role, w in sorted(self.watches.items())]

    async def aclose(self) -> None:
        """Stop the broker (its pub/sub connection) and close the pools."""
        try:
            await self.broker.stop()
        finally:
            await self.client.aclose()
            await self.bus_client.aclose()


__all__ = ["RedisBackend", "RedisBroker", "RedisLiveness", "RedisState", "RedisWebhookStore"]
