"""Contract tests of the `WebhookStore` (the queue of webhook jobs waiting for their time),
against every backend (the `backend_factory` fixture; see tests/helpers/contract_backends.py):
two nodes' views of one store, its size limit, cancelling, taking due jobs once under
concurrent takers; Redis only, the jobs a new primary lost are added again, once.
"""

from __future__ import annotations

import asyncio

import pytest

from pushwire.webhooks import WebhookStore
from tests.helpers.contract_backends import Cluster, RedisCluster, bounded, redis_only

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@bounded()
async def test_webhook_store(backend_factory: Cluster) -> None:
    s1, s2 = backend_factory.webhook_stores(3)
    assert await s1.add("j1", b"one", 10.0)
    assert await s2.add("j2", b"two", 20.0)
    assert await s1.add("j3", b"three", 30.0)
    assert not await s2.add("j4", b"four", 5.0)  # full
    assert await s2.add("j1", b"one-later", 40.0)  # replacing a job is not adding one
    assert await s1.size() == 3
    assert await s2.cancel("j2")
    assert not await s1.cancel("j2")
    assert await s1.size() == 2
    assert await s1.take_due(25.0, 10) == []
    assert await s2.take_due(35.0, 10) == [b"three"]
    assert await s1.take_due(50.0, 10) == [b"one-later"]
    assert await s2.size() == 0

    t1, t2 = backend_factory.webhook_stores(1000)
    jobs = {f"job-{i:03d}": b"%d" % i for i in range(100)}
    for i, (job_id, job) in enumerate(jobs.items()):
        assert await (t1, t2)[i % 2].add(job_id, job, float(i % 10))
    assert await t1.take_due(0.5, 3) == [b"0", b"10", b"20"]  # due time, then id order
    taken: list[bytes] = [b"0", b"10", b"20"]

    async def taker(store: WebhookStore) -> None:
        while batch := await store.take_due(100.0, 7):
            taken.extend(batch)
            await asyncio.sleep(0)

    await asyncio.gather(taker(t1), taker(t2))
    assert len(taken) == 100
    assert sorted(taken) == sorted(jobs.values())
    assert await t2.size() == 0


@bounded()
async def test_webhook_jobs_survive_a_primary_that_lost_them(backend_factory: Cluster) -> None:
    """A new primary may lack the last jobs added (and have cancelled ones back): the node
    that added them does it again there, once; a job taken already is not queued again."""
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    store, other = backend_factory.webhook_stores(100)
    now = 1000.0
    assert await store.add("kept", b"1", now)
    assert await store.add("lost", b"2", now)
    assert await store.add("cancelled", b"3", now)
    assert await store.cancel("cancelled")
    assert await store.add("taken", b"4", now + 5)
    assert await other.take_due(now + 5, 10) == [b"1", b"2", b"4"]
    assert await store.add("later", b"5", now)
    # what the failover left: the promoted replica missed "later" and still had "cancelled"
    client = backend_factory.backends[0].client
    keys = backend_factory.backends[0].keys
    await client.hdel(keys.wh_jobs(), "later")
    await client.zrem(keys.wh_due(), "later")
    await client.hset(keys.wh_jobs(), "cancelled", b"3")
    await client.zadd(keys.wh_due(), {"cancelled": now})
    assert sorted(await other.take_due(now, 10)) == [b"3"]  # (the other node cannot know)
    await client.hset(keys.wh_jobs(), "cancelled", b"3")
    await client.zadd(keys.wh_due(), {"cancelled": now})
    store.scripts.watch.changes += 1  # as PrimaryWatch.seen does on a new primary
    assert await store.take_due(now, 10) == [b"5"]  # back, once; "cancelled" cancelled again
    assert await store.take_due(now + 10, 10) == []
    assert store.replayed == 1
