"""Contract tests of a publish's receiver check: a publish is answered 2xx only when every
node the cluster state lists for the channel (or user) can have received it, else refused
(`Unavailable`): never a false 2xx. Most are Redis only (they take a node's bus subscription,
connection or answer away, or pause the server); `backend_factory` and
tests/helpers/contract_backends.py as in the other test_contract_*.py.

- a listed node whose bus subscription is gone, or whose lease ran out: refused;
- this node's own subscription, made while its publish waited, is not counted as another's;
- a publish whose answer was lost is sent again and delivered once;
- the receiver counts the state gave, reused with bus and state apart (redis-split; the tests
  run on every Redis backend): a node listed after a count is counted, one that left costs no
  refusal, a steady stream costs the state no round trip; and each server keeps to its role.

The races (this node's own subscription, the lost answer, the node listed after a count) run
`RACE_TRIES` times, each on a fresh cluster (`Cluster.start_afresh`) or key prefix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from pushwire.cluster.base import Unavailable, channel_topic, user_topic
from pushwire.cluster.redis import RedisBackend
from pushwire.cluster.redis.urls import parse_redis_url
from pushwire.protocol.history import HistoryPolicy
from tests.helpers.blackhole import BlackholeProxy
from tests.helpers.contract_backends import (
    APP,
    RACE_TRIES,
    REDIS_NODE_TIMEOUT,
    Cluster,
    Node,
    RedisCluster,
    bounded,
    chmsg,
    redis_client,
    redis_only,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]


# Listed nodes that cannot have received it --------------------------------------------------
@bounded()
async def test_publish_fails_when_a_listed_node_is_not_subscribed(
    backend_factory: Cluster,
) -> None:
    """A node listed for a channel (or user) whose bus subscription is gone (its connection
    dropped, say) did not get the publish: refused, also when the count was reused."""
    redis_only(backend_factory)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "gap")
    await a.state.subscribe(APP, "gap", None, 0)
    await a.broker.subscribe(topic)
    await a.broker.publish(topic, chmsg("gap", b"0"))  # a itself does not count
    await b.broker.publish(topic, chmsg("gap", b"1"))
    assert (await a.recv()).payload == b"1"

    user = "user:with:colons"
    utopic = user_topic(APP, user)
    await b.broker.subscribe(topic)  # b joins as the engine does: the bus first
    await b.state.subscribe(APP, "gap", None, 0)
    await b.broker.subscribe(utopic)
    await b.state.sign_in(APP, user)
    for t, payload in ((topic, b"2"), (utopic, b"3")):
        await a.broker.publish(t, chmsg("gap", payload))  # b counted (the count remembered)
        assert (await b.recv()).payload == payload
        await b.broker.unsubscribe(t)  # b still listed, its bus subscription gone
        await asyncio.sleep(0.05)  # (the UNSUBSCRIBE went over b's own connection)
        with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
            await a.broker.publish(t, chmsg("gap", b"lost"))
        await b.broker.subscribe(t)
        await a.broker.publish(t, chmsg("gap", payload + b"+"))
        assert (await b.recv()).payload == payload + b"+"


@bounded()
async def test_publish_refused_while_a_listed_node_has_no_lease(backend_factory: Cluster) -> None:
    """A node cut off (or paused) past its lease cannot vouch for its subscribers, although
    the bus may still count its subscription: publishes that need it are refused until it
    beats again or is reaped."""
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "lease")
    for n in (a, b):
        await n.state.subscribe(APP, "lease", None, 0)
        await n.broker.subscribe(topic)
    await a.broker.publish(topic, chmsg("lease", b"1"))
    assert (await b.recv()).payload == b"1"
    await backend_factory.expire()
    assert (await a.liveness.beat()).registered  # a renews; b is silent
    with pytest.raises(Unavailable, match="node b lost its lease"):
        await a.broker.publish(topic, chmsg("lease", b"2"))
    await a.state.reap("b")  # b's records go: nothing to count on any more
    await a.broker.publish(topic, chmsg("lease", b"3"))
    await a.nothing(0.05)


@bounded(60)
async def test_own_subscription_made_while_a_publish_waits_counts_as_own(
    backend_factory: Cluster,
) -> None:
    """a's bus connection is lost; a publish of a waits (the bus holds writes) while a
    subscribes again: when it runs, Redis counts a's new subscription, which must not pass
    for b's (b is listed, not subscribed): refused."""
    redis_only(backend_factory)
    assert isinstance(backend_factory, RedisCluster)
    for _ in range(backend_factory.race_tries):  # the race again, on a fresh cluster each time
        await backend_factory.start_afresh()
        a, b = await backend_factory.add("a"), await backend_factory.add("b")
        topic = channel_topic(APP, "wait")
        await a.broker.subscribe(topic)
        await a.state.subscribe(APP, "wait", None, 0)
        await b.state.subscribe(APP, "wait", None, 0)  # b listed, its bus subscription gone
        with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
            await a.broker.publish(topic, chmsg("wait", b"0"))
        await backend_factory.pause_bus(topic, 1500, "WRITE")
        try:
            assert await backend_factory.kill_pubsub() >= 1
            async with asyncio.timeout(2):
                while a.broker.healthy:
                    await asyncio.sleep(0.01)
            waiting = asyncio.ensure_future(a.broker.publish(topic, chmsg("wait", b"1")))
            async with asyncio.timeout(3):
                while not a.broker.healthy:  # subscribed again (a subscribe is no write)
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
        finally:
            await backend_factory.unpause_bus(topic)
        with pytest.raises(Unavailable, match="published to 0 of 1 nodes"):
            await waiting


@bounded(40)
async def test_a_publish_whose_answer_was_lost_is_delivered_once(
    redis_server: Any, blackhole: Callable[[int], BlackholeProxy]
) -> None:
    """a's publish runs, but its connection breaks before the answer: redis-py sends it again
    on a fresh connection. b gets it once (its inbox drops the second by the publish id)."""
    proxy = blackhole(redis_server.port)
    for _ in range(RACE_TRIES):  # the race again, with a fresh key prefix each time
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        via_proxy, direct = parse_redis_url(proxy.url), parse_redis_url(redis_server.url)
        backends = [
            RedisBackend(via_proxy, via_proxy, prefix, "a", REDIS_NODE_TIMEOUT),
            RedisBackend(direct, direct, prefix, "b", REDIS_NODE_TIMEOUT),
        ]
        try:
            a, b = (Node(x.node, x.broker, x.state, x.liveness) for x in backends)
            for n in (a, b):
                await n.liveness.register()
                await n.broker.start(n.inbox.put_nowait)
            topic = channel_topic(APP, "once")
            await b.broker.subscribe(topic)
            await b.state.subscribe(APP, "once", None, 0)
            await a.broker.publish(topic, chmsg("once", b"0"))
            proxy.lose_reply(b"EVALSHA")
            await a.broker.publish(topic, chmsg("once", b"1"))  # ran twice, answered once
            await a.broker.publish(topic, chmsg("once", b"2"))
            assert [(await b.recv()).payload for _ in range(3)] == [b"0", b"1", b"2"]
            await b.nothing(0.1)
            assert backends[1].broker.duplicates == 1
        finally:
            for x in backends:
                await x.aclose()


# Bus and state apart: remembered counts -----------------------------------------------------
@bounded(40)
async def test_a_node_listed_after_a_count_is_counted(backend_factory: Cluster) -> None:
    """c subscribes on the bus, loses that subscription, and is listed: a publish must not
    answer on a count taken before c was listed (bus and state apart: the join mark)."""
    redis_only(backend_factory)
    for _ in range(backend_factory.race_tries):  # the race again, on a fresh cluster each time
        await backend_factory.start_afresh()
        a, b = await backend_factory.add("a"), await backend_factory.add("b")
        topic = channel_topic(APP, "late")
        await a.broker.subscribe(topic)
        await a.state.subscribe(APP, "late", None, 0)
        for i in range(3):  # counted, and the count reused
            await b.broker.publish(topic, chmsg("late", b"%d" % i))
            assert (await a.recv()).payload == b"%d" % i
        c = await backend_factory.add("c")
        await c.broker.subscribe(topic)
        await c.broker.unsubscribe(topic)
        await asyncio.sleep(0.05)
        await c.state.subscribe(APP, "late", None, 0)
        with pytest.raises(Unavailable, match="published to 1 of 2 nodes"):
            await b.broker.publish(topic, chmsg("late", b"missed by c"))
        assert (await a.recv()).payload == b"missed by c"  # (sent: a got it)


@bounded()
async def test_a_node_that_left_costs_no_refusal(backend_factory: Cluster) -> None:
    """b leaves a channel (bus, then state) right after a publish counted it: the next
    publish is answered (counted afresh), not refused."""
    redis_only(backend_factory)
    a, b = await backend_factory.add("a"), await backend_factory.add("b")
    topic = channel_topic(APP, "left")
    for n in (a, b):
        await n.broker.subscribe(topic)
        await n.state.subscribe(APP, "left", None, 0)
    for _ in range(20):
        await a.broker.publish(topic, chmsg("left", b"both"))
        assert (await b.recv()).payload == b"both"
        await b.broker.unsubscribe(topic)
        await b.state.unsubscribe(APP, "left", None)
        await a.broker.publish(topic, chmsg("left", b"a alone"))  # not refused
        await b.broker.subscribe(topic)
        await b.state.subscribe(APP, "left", None, 0)


@bounded()
async def test_apart_a_steady_stream_costs_the_state_no_round_trip(
    redis_server: Any, redis_state_server: Any
) -> None:
    """Bus and state apart: the receivers counted for a channel are reused (within their
    leases), so 100 publishes to one channel ask the state a few times, not 100."""
    cluster = RedisCluster(redis_server.url, redis_state_server.url)
    state = redis_client(redis_state_server.url)
    try:
        a, b = await cluster.add("a"), await cluster.add("b")
        topic = channel_topic(APP, "steady")
        await b.broker.subscribe(topic)
        await b.state.subscribe(APP, "steady", None, 0)

        async def asked() -> int:
            stats = await state.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

        before = await asked()
        for i in range(100):
            await a.broker.publish(topic, chmsg("steady", b"%d" % i))
        assert [(await b.recv()).payload for _ in range(100)] == [b"%d" % i for i in range(100)]
        assert await asked() - before <= 10
    finally:
        await state.aclose()
        await cluster.aclose()


@bounded(20)
async def test_bus_and_state_apart_keep_to_their_roles(
    redis_server: Any, redis_state_server: Any
) -> None:
    """With bus and state on two servers, the state server never carries pub/sub and the bus
    server holds nothing but history."""
    cluster = RedisCluster(redis_server.url, redis_state_server.url)
    try:
        a, b = await cluster.add("a"), await cluster.add("b")
        topic = channel_topic(APP, "roles")
        for n in (a, b):
            await n.state.connect(APP, 0)
            await n.state.subscribe(APP, "roles", ("u-" + n.name, {}), 10)
            await n.state.sign_in(APP, "u-" + n.name)
            await n.broker.subscribe(topic)
        policy = HistoryPolicy(10, 60)
        await a.broker.publish(topic, chmsg("roles", b"1"), history=policy)
        assert (await b.recv()).payload == b"1"
        await a.broker.publish(topic, chmsg("roles", b"2"))
        assert (await b.recv()).payload == b"2"
        await a.state.cache_set(APP, "cache-roles", b"x", 10)
        await a.state.hit("r", 1, 5)
        await a.liveness.beat()
    finally:
        await cluster.aclose()
    state = redis_client(redis_state_server.url)
    bus = redis_client(redis_server.url)
    try:
        stats = await state.info("commandstats")
        pubsub = [k for k in stats if "publish" in k or "subscribe" in k or "pubsub" in k]
        assert pubsub == []
        assert "cmdstat_evalsha" in stats  # (the state did work)
        bus_keys = [k.decode() async for k in bus.scan_iter(f"{cluster.prefix}:*")]
        # history, and what publishes need: join marks (bus:T:joined), held pipelines
        publish = ("hist", "histm", "hid", "bus", "held")
        assert bus_keys and all(k.split(":")[1] in publish for k in bus_keys)
        state_keys = [k.decode() async for k in state.scan_iter(f"{cluster.prefix}:*")]
        assert not [k for k in state_keys if k.split(":")[1] in ("hist", "histm", "hid")]
    finally:
        await state.aclose()
        await bus.aclose()
