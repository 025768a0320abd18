"""Contract tests of the `Broker`'s history, the same functions against every backend (the
`backend_factory` fixture: memory, redis, redis-split, redis-cluster; see
tests/helpers/contract_backends.py): positions (epoch, offset) given in store order and echoed
to the publisher, reading the last events or those since an offset (complete or not, within a
byte budget), and expiry (events, then the epoch).

The history a server's clients see (recovery, REST) is tested in test_history.py.
"""

from __future__ import annotations

import asyncio

import pytest

from pushwire.cluster.base import channel_topic
from pushwire.protocol.history import HistoryPolicy
from tests.helpers.contract_backends import APP, Cluster, bounded, chmsg

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@bounded()
async def test_history_publish_echoes_with_positions_in_store_order(
    backend_factory: Cluster,
) -> None:
    """History publishes of two nodes interleave; every subscribed node, the publisher too,
    gets all of them with consecutive offsets of one epoch, in offset order."""
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    policy = HistoryPolicy(size=1000, ttl=60)
    topic = channel_topic(APP, "hist")
    await a.broker.subscribe(topic)
    await b.broker.publish(topic, chmsg("hist", b"{}"))  # no history: no position, no echo
    assert (await a.recv()).position is None
    sends = [(a if i % 2 else b).broker.publish(topic, chmsg("hist", b"%d" % i), policy)
             for i in range(100)]
    positions = await asyncio.gather(*sends)
    assert sorted(p.offset for p in positions) == list(range(1, 101))  # type: ignore[union-attr]
    assert len({p.epoch for p in positions}) == 1  # type: ignore[union-attr]
    got = [await a.recv() for _ in range(100)]
    assert [m.position.offset for m in got] == list(range(1, 101))  # type: ignore[union-attr]
    by_offset = {p.offset: i for i, p in enumerate(positions)}  # type: ignore[union-attr]
    assert [m.payload for m in got] == [b"%d" % by_offset[o] for o in range(1, 101)]
    assert {m.origin for m in got} == {"a", "b"}
    await b.nothing(0.2)  # b is not subscribed: it gets nothing, not even its own


@bounded()
async def test_history_read(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    policy = HistoryPolicy(size=5, ttl=60)
    topic = channel_topic(APP, "h2")
    empty = await b.broker.history(topic, None, 10, policy)
    assert empty.top.offset == 0 and empty.events == [] and empty.complete
    for i in range(8):
        pos = await a.broker.publish(topic, chmsg("h2", b"p%d" % i), policy)
    assert pos is not None and pos.epoch == empty.top.epoch  # the epoch a reader was told
    last = await b.broker.history(topic, None, 3, policy)
    assert [(e.offset, e.payload) for e in last.events] == [(6, b"p5"), (7, b"p6"), (8, b"p7")]
    assert last.top == pos
    since = await b.broker.history(topic, 5, 2, policy)
    assert [e.offset for e in since.events] == [6, 7] and since.complete
    assert (await b.broker.history(topic, 3, 10, policy)).complete  # 4..8 kept (size 5)
    trimmed = await b.broker.history(topic, 2, 10, policy)
    assert not trimmed.complete and [e.offset for e in trimmed.events] == [4, 5, 6, 7, 8]
    assert (await b.broker.history(topic, 8, 10, policy)).complete  # nothing missed
    assert not (await b.broker.history(topic, 9, 10, policy)).complete  # from the future
    assert all(abs(e.time - last.events[0].time) < 60 for e in last.events)


@bounded()
async def test_history_read_stops_at_max_bytes(backend_factory: Cluster) -> None:
    a = await backend_factory.add("a")
    policy = HistoryPolicy(size=100, ttl=60)
    topic = channel_topic(APP, "h4")
    for i in range(10):
        await a.broker.publish(topic, chmsg("h4", b"%03d" % i), policy)  # 3 bytes each
    page = await a.broker.history(topic, 0, 100, policy, max_bytes=10)
    assert [e.payload for e in page.events] == [b"000", b"001", b"002"] and not page.complete
    full = await a.broker.history(topic, 0, 100, policy, max_bytes=30)
    assert len(full.events) == 10 and full.complete
    latest = await a.broker.history(topic, None, 100, policy, max_bytes=10)
    assert [e.payload for e in latest.events] == [b"007", b"008", b"009"]


@bounded()
async def test_history_expires(backend_factory: Cluster) -> None:
    a = await backend_factory.add("a")
    policy = HistoryPolicy(size=5, ttl=0.3, meta_ttl=30)
    topic = channel_topic(APP, "h3")
    first = await a.broker.publish(topic, chmsg("h3", b"x"), policy)
    await backend_factory.advance(0.5)
    page = await a.broker.history(topic, 0, 10, policy)
    assert page.events == [] and not page.complete and page.top == first
    assert (await a.broker.history(topic, 1, 10, policy)).complete
    second = await a.broker.publish(topic, chmsg("h3", b"y"), policy)
    assert second is not None and first is not None
    assert (second.epoch, second.offset) == (first.epoch, 2)
    short = HistoryPolicy(size=5, ttl=0.2, meta_ttl=0.2)
    await a.broker.publish(topic, chmsg("h3", b"z"), short)
    await backend_factory.advance(0.5)
    fresh = await a.broker.history(topic, None, 10, short)
    assert fresh.top.epoch != first.epoch and fresh.top.offset == 0
