"""The Redis backend: `Broker`, `ClusterState` and `Liveness` over one Redis server.

`RedisBackend(url, prefix, node, node_timeout)` owns one client (a connection pool) shared by
the state, the liveness and the publishing side of the broker, plus the broker's dedicated
pub/sub connection. Client settings:

- `health_check_interval=1`: a pooled connection idle for over a second is PINGed before use,
  so a connection left stale by a Redis restart is found and replaced, not used.
- A blocking pool of 64 connections per client: past that, calls wait (up to 5 s) for a
  free connection instead of failing.
- Publishes (their own pool) are retried once on a fresh connection after a
  `ConnectionError`: at worst a duplicate delivery. State scripts are never retried: one that
  ran before its connection broke would run twice (a member or a quota slot counted twice);
  the failure surfaces and the engine repairs the node's records with a resync.
- Every error that remains surfaces as `base.Unavailable`.

Data model: `keys.py`. Scripts: `lua/`.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .bus import RedisBroker
from .keys import Keys
from .liveness import RedisLiveness
from .state import RedisState
from .webhooks import RedisWebhookStore

POOL_SIZE = 64  # connections per client; more calls at once wait their turn (up to 5 s)


def _client(url: str, **kwargs: Any) -> Redis:
    """A client whose pool makes calls wait for a free connection when all are busy: a
    reconnect storm makes thousands of calls at once, and a plain pool (100 connections in
    redis-py 8) fails every call past its size with "Too many connections"."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=1,
        **kwargs,
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


class RedisBackend:
    def __init__(self, url: str, prefix: str, node: str, node_timeout: float) -> None:
        if not node or any(c in node for c in ":\n\r"):
            raise ValueError(f"node id {node!r} must be non-empty, without ':' or newlines")
        self.node = node
        # state scripts are never retried: one that ran before its connection broke would run
        # twice (a member or a quota slot counted twice); the engine resyncs instead
        self.client = _client(url)
        # publishes are retried once on a fresh connection: at worst a duplicate delivery,
        # never a loss (a history publish is appended once: publish.lua knows its id)
        self.bus_client = _client(
            url,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
        )
        self.keys = Keys(prefix)
        self.broker = RedisBroker(self.bus_client, self.keys, node)
        self.state = RedisState(self.client, self.keys, node)
        self.liveness = RedisLiveness(self.client, self.keys, node, node_timeout)

    def webhook_store(self, max_size: int) -> RedisWebhookStore:
        return RedisWebhookStore(self.client, self.keys, max_size)

    async def aclose(self) -> None:
        """Stop the broker (its pub/sub connection) and close the pool."""
        try:
            await self.broker.stop()
        finally:
            await self.client.aclose()
            await self.bus_client.aclose()


__all__ = ["RedisBackend", "RedisBroker", "RedisLiveness", "RedisState", "RedisWebhookStore"]
