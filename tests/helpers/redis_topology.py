"""Real Redis topologies for the tests, in one import: redis-server processes on free ports of
127.0.0.1, each set with a `stop()` that leaves no process behind (and a context manager).

- `RedisSingle` / `start_redis()`: one server (redis_procs.py).
- `SentinelSet`: a primary, a replica and three sentinels (redis_sentinel.py).
- `RedisClusterSet`: a Redis Cluster, 3 primaries + 3 replicas by default (redis_cluster.py).
"""

from tests.helpers.redis_cluster import RedisClusterSet, SlotMap
from tests.helpers.redis_procs import (
    HOST,
    NodeSet,
    NotYet,
    RedisNode,
    RedisSingle,
    command,
    start_redis,
    wait_for,
)
from tests.helpers.redis_sentinel import SentinelSet

__all__ = [
    "HOST",
    "NodeSet",
    "NotYet",
    "RedisClusterSet",
    "RedisNode",
    "RedisSingle",
    "SentinelSet",
    "SlotMap",
    "command",
    "start_redis",
    "wait_for",
]
