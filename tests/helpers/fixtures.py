"""pytest fixtures over tests/helpers, loaded by tests/conftest.py (`pytest_plugins`).

- `redis_server` (session): one Redis server shared by the suites.
- `sentinel_set` (function): a fresh `SentinelSet` (about 2.5 s to start): a primary, a replica
  and three sentinels watching master `pw`; its logs under the test's tmp_path.
- `redis_cluster` (function): a fresh `RedisClusterSet` (about 2.5 s): 3 primaries + 3
  replicas; `shared_redis_cluster` (session): one for the suites that do not change its
  topology.
- `receiver` (function): a webhook `Receiver` (tests/helpers/webhooks.py) on a free port.
- `blackhole` (function): `blackhole(port, host="127.0.0.1") -> BlackholeProxy`, as many as
  the test needs, all closed afterwards.

Function scope, because failover and migration tests change their topology; a module that
wants to share one builds it in a module-scoped fixture of its own (`with SentinelSet() as s:
yield s`). Every process is stopped at teardown, the test passed or not.
The `topology` marker (registered here) marks tests that start a Sentinel set or a Cluster:
`pytest -m "not topology"` leaves them out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.blackhole import BlackholeProxy
from tests.helpers.redis_cluster import RedisClusterSet
from tests.helpers.redis_procs import RedisSingle, start_redis
from tests.helpers.redis_sentinel import SentinelSet
from tests.helpers.webhooks import Receiver, receiving


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "topology: starts a Redis Sentinel set or a Redis Cluster (seconds each)"
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisSingle]:
    r = start_redis()
    yield r
    r.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel-set") as s:
        yield s


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    with RedisClusterSet(tmp_path / "redis-cluster") as c:
        yield c


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """One Redis Cluster for the suites that leave its topology alone (the contract tests,
    the shared server): one start for the session."""
    with RedisClusterSet(tmp_path_factory.mktemp("shared-redis-cluster")) as c:
        yield c


@pytest.fixture
def blackhole() -> Iterator[Callable[..., BlackholeProxy]]:
    proxies: list[BlackholeProxy] = []

    def make(port: int, host: str = "127.0.0.1") -> BlackholeProxy:
        proxy = BlackholeProxy(port, host)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r
