"""Contract tests of the `Broker`'s delivery, the same functions against every backend (the
`backend_factory` fixture: memory, redis, redis-split, redis-cluster; see
tests/helpers/contract_backends.py).

- every backend: a message arrives whole, with its origin, not echoed to its sender, in
  per-topic order (also for overlapping publishes); unsubscribe stops delivery; a node that is
  not registered cannot publish;
- Redis only, the bus connection itself: malformed and foreign messages dropped, a subscribe
  that waits for Redis' confirmation, reconnecting and subscribing again after the pub/sub
  connections were killed, and a Redis restart (empty) and outage, one server.

What a publish checks about its receivers is in test_contract_receivers.py, history in
test_contract_history.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import pytest

from pushwire.cluster.base import (
    NODES_TOPIC,
    AppSnapshot,
    BusKind,
    BusMessage,
    Changes,
    Unavailable,
    app_topic,
    channel_topic,
    encode,
    user_topic,
)
from pushwire.cluster.redis import RedisBackend
from pushwire.cluster.redis.urls import parse_redis_url
from tests.helpers.contract_backends import (
    APP,
    APP2,
    Cluster,
    Node,
    RedisCluster,
    bounded,
    chmsg,
    redis_only,
)
from tests.helpers.redis_procs import start_redis

pytestmark = [pytest.mark.slow, pytest.mark.redis]


# Delivery -----------------------------------------------------------------------------------
@bounded()
async def test_broker_delivers_with_origin_without_echo(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "news")
    await a.broker.subscribe(topic)
    await b.broker.subscribe(topic)
    assert a.broker.healthy and b.broker.healthy
    msg = BusMessage(
        BusKind.MEMBER,
        app=APP,
        channel="news",
        user="u:1",
        except_socket="1.2",
        version=1_790_000_000_000_001,
        payload=b'{"event":"x"}\n\x00',
    )
    await b.broker.publish(topic, msg)
    got = await a.recv()
    assert dataclasses.replace(got, ident="") == dataclasses.replace(msg, origin="b")
    await a.broker.publish(topic, chmsg("news", b"marker"))  # no echo: b's next is a's marker
    assert (await b.recv()).payload == b"marker"
    for topic2 in (NODES_TOPIC, user_topic(APP, "u:2"), app_topic(APP)):
        await a.broker.subscribe(topic2)
        await b.broker.publish(topic2, BusMessage(BusKind.INTERNAL, tag="k", payload=b"{}"))
        got = await a.recv()
        assert (got.kind, got.tag, got.origin) == (BusKind.INTERNAL, "k", "b")
    await a.broker.publish(app_topic(APP2), chmsg("nobody"))  # nobody listens: no error


@bounded()
async def test_broker_keeps_per_topic_order(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "ordered")
    await a.broker.subscribe(topic)
    for i in range(200):
        await b.broker.publish(topic, chmsg("ordered", str(i).encode()))
    assert [(await a.recv()).payload for _ in range(200)] == [str(i).encode() for i in range(200)]
    # overlapping publishes of one node keep their call order too
    await asyncio.gather(*(b.broker.publish(topic, chmsg("o", b"%d" % i)) for i in range(200)))
    assert [(await a.recv()).payload for _ in range(200)] == [b"%d" % i for i in range(200)]


@bounded()
async def test_broker_unsubscribe_stops_delivery(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "leaving")
    await a.broker.subscribe(topic)
    await a.broker.subscribe(topic)  # twice is once
    await b.broker.publish(topic, chmsg("leaving", b"1"))
    assert (await a.recv()).payload == b"1"
    await a.broker.unsubscribe(topic)
    await b.broker.publish(topic, chmsg("leaving", b"2"))  # not delivered: "3" comes next
    await a.broker.subscribe(topic)
    await b.broker.publish(topic, chmsg("leaving", b"3"))
    assert (await a.recv()).payload == b"3"


@bounded()
async def test_publish_refused_when_not_registered(backend_factory: Cluster) -> None:
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    await b.broker.subscribe(app_topic(APP))
    await a.liveness.deregister()
    with pytest.raises(Unavailable, match="not registered"):
        await a.broker.publish(app_topic(APP), chmsg("x"))
    assert not (await a.liveness.beat()).registered  # beat never registers
    await a.liveness.register()
    await a.broker.publish(app_topic(APP), chmsg("x", b"after"))  # the refused one never comes
    got = await b.recv()
    assert (got.origin, got.payload) == ("a", b"after")


# Redis only: the bus connection -------------------------------------------------------------
@bounded()
async def test_bus_drops_malformed_and_foreign_messages(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a = await backend_factory.add("a")
    topic = channel_topic(APP, "junk")
    await a.broker.subscribe(topic)
    name = backend_factory.backends[0].keys.bus(topic)
    other_version = b'{"v":1,"n":"x","k":"pub"}\n{}'
    for junk in (b"", b"no header", b"[1]\n", b'{"v":2,"k":"bogus"}\n', other_version):
        await backend_factory.raw_publish(name, junk)
    await backend_factory.raw_publish(name, encode(chmsg("junk", b"fine"), "x"))
    got = await a.recv()
    assert (got.payload, got.origin) == (b"fine", "x")
    await a.nothing(0.1)
    assert a.broker.healthy


@bounded()
async def test_subscribe_waits_for_the_confirmation(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "paused")
    a.broker.confirm_timeout = 0.3
    await backend_factory.pause_bus(topic, 800)  # Redis answers nobody
    try:
        with pytest.raises(Unavailable, match="not confirmed"):
            await a.broker.subscribe(topic)
    finally:
        await backend_factory.unpause_bus(topic)
    a.broker.confirm_timeout = 3.0
    await a.broker.resubscribed()  # the topic stayed wanted
    await b.broker.publish(topic, chmsg("paused", b"1"))
    assert (await a.recv()).payload == b"1"


@bounded()
async def test_bus_reconnects_and_subscribes_again(backend_factory: Cluster) -> None:
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "kill")
    await a.state.subscribe(APP, "kill", None, 0)
    await a.broker.subscribe(topic)
    await a.broker.subscribe(NODES_TOPIC)
    assert await backend_factory.kill_pubsub() >= 1  # a is the only subscriber
    async with asyncio.timeout(2):
        while a.broker.healthy:
            await asyncio.sleep(0.01)
    await a.broker.resubscribed()
    assert a.broker.healthy
    await b.broker.publish(topic, chmsg("kill", b"1"))  # receiver check: a is subscribed again
    await b.broker.publish(NODES_TOPIC, chmsg("kill", b"2"))
    assert [(await a.recv()).payload for _ in range(2)] == [b"1", b"2"]


@bounded()
async def test_redis_restart(backend_factory: Cluster) -> None:
    redis_only(backend_factory, single=True)
    server = start_redis()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    target = parse_redis_url(server.url)
    backends = [RedisBackend(target, target, prefix, n, 2.0) for n in ("a", "b")]
    a, b = (Node(x.node, x.broker, x.state, x.liveness) for x in backends)
    try:
        for n in (a, b):
            await n.liveness.register()
            await n.broker.start(n.inbox.put_nowait)
        topic = channel_topic(APP, "r")
        await a.state.subscribe(APP, "r", None, 0)
        await a.broker.subscribe(topic)
        await b.broker.publish(topic, chmsg("r", b"before"))
        assert (await a.recv()).payload == b"before"

        server.restart()  # comes back empty: the first publish must not pass silently
        with pytest.raises(Unavailable, match="not registered"):
            await b.broker.publish(topic, chmsg("r", b"lost"))
        # state calls are not retried (a script must not run twice): the first one may fail
        # on its stale connection; either way it fails, and then says why
        with contextlib.suppress(Unavailable):
            await a.state.connect(APP, 0)
            raise AssertionError("a state call succeeded on a Redis that lost this node")
        with pytest.raises(Unavailable, match="not registered"):
            await a.state.connect(APP, 0)
        for x in backends:  # the other stale pooled connections would each fail once too
            await x.client.connection_pool.disconnect()
        assert not (await b.liveness.beat()).registered
        back = await a.state.resync({APP: AppSnapshot(channels={"r": 1})})
        assert back == Changes(occupied=[(APP, "r")])
        assert await b.state.resync({}) == Changes()
        for n in (a, b):
            await n.liveness.register()
            await n.broker.resubscribed()
        assert a.broker.healthy
        await b.broker.publish(topic, chmsg("r", b"after"))
        assert (await a.recv()).payload == b"after"

        server.stop()  # unreachable: every failure is Unavailable
        with pytest.raises(Unavailable):
            await b.state.connect(APP, 0)
        with pytest.raises(Unavailable):
            await b.broker.publish(topic, chmsg("r", b"down"))
        with pytest.raises(Unavailable):
            await b.liveness.beat()
        async with asyncio.timeout(5):
            while a.broker.healthy:
                await asyncio.sleep(0.05)
        a.broker.confirm_timeout = 0.5
        later = channel_topic(APP, "later")
        with pytest.raises(Unavailable):
            await a.broker.subscribe(later)  # stays wanted: subscribed when Redis returns
        a.broker.confirm_timeout = 5.0

        server.restart()
        for x in backends:  # as a node would after its calls failed: fresh connections
            await x.client.connection_pool.disconnect()
        for n in (a, b):
            await n.state.resync({})
            await n.liveness.register()
            await n.broker.resubscribed()
        await b.broker.publish(later, chmsg("later", b"again"))
        assert (await a.recv()).payload == b"again"
        await a.nothing(0.1)
    finally:
        for x in backends:
            await x.aclose()
        server.stop()
