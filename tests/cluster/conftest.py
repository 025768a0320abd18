"""Fixtures of the cluster suites (besides tests/conftest.py and tests/helpers/fixtures.py).

- `backend_factory` (function): a fresh `Cluster` (tests/helpers/contract_backends.py) of each
  backend in turn, closed afterwards: `memory`, `redis` (one server), `redis-split` (bus and
  state on two servers), `redis-cluster` (the session's shared Redis Cluster). The contract
  tests (test_contract_*.py) take it, so each runs once per backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.contract_backends import Cluster, MemoryCluster, RedisCluster, ShardedCluster


@pytest.fixture(params=["memory", "redis", "redis-split", "redis-cluster"])
async def backend_factory(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    cluster: Cluster
    if request.param == "memory":
        cluster = MemoryCluster()
    elif request.param == "redis-cluster":
        cluster = ShardedCluster(request.getfixturevalue("shared_redis_cluster"))
    else:
        state = ""
        if request.param == "redis-split":  # bus and state on two servers
            state = request.getfixturevalue("redis_state_server").url
        cluster = RedisCluster(request.getfixturevalue("redis_server").url, state)
    try:
        yield cluster
    finally:
        await cluster.aclose()
