"""A publish that reaches a new primary (one-server backend behind Sentinel: the first
connection after a failover) runs there under the generation the node had before; the node
does not trust its answer, but the event went out: the node's own sockets must get it once,
from the bus's echo, not a second time from a local copy."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from pushwire import api
from pushwire.apps.model import App
from pushwire.cluster.base import HistoryPolicy, NotRegistered, Unavailable, channel_topic
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.server import build_node
from pushwire.testing import FakeConnection
from tests.helpers.contract_backends import RedisCluster, chmsg
from tests.helpers.handler import connect, subscribe

pytestmark = [pytest.mark.redis]

HIST = App(id="h", key="hk", secret="hs", history_size=100)
NEW_REPLID = "f" * 40


def reach_a_new_primary_once(backend: Any) -> None:
    """The server becomes a new primary (a promoted replica holding every record, as after
    a failover that lost nothing), and the bus's next pipeline is the first call to find
    it: its connection reads the new replication id when it connects, after the scripts
    were given the generation known before (the node's registration there is under it: they
    run). Every connection made later finds the new id too."""
    scripts = backend.broker._publisher._scripts
    watch, client = scripts.watch, scripts.client
    old, seen = watch.generation, watch.seen
    watch.seen = lambda replid, address: seen(NEW_REPLID if replid == old else replid, address)
    make = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        client.pipeline = make  # once
        pipe = make(*args, **kwargs)
        execute = pipe.execute

        async def on_a_new_primary(*a: Any, **kw: Any) -> Any:
            watch.seen(old, watch.address)  # its connection is made
            return await execute(*a, **kw)

        pipe.execute = on_a_new_primary
        return pipe

    client.pipeline = pipeline


async def test_a_publish_run_by_a_new_primary_is_not_reported_unregistered(redis_server):
    """The broker may raise (its answer is not trusted), but not `NotRegistered`, which tells
    the engine that nothing went out."""
    cluster = RedisCluster(redis_server.url)
    try:
        node = await cluster.add("a")
        topic = channel_topic("app-1", "c")
        await node.broker.subscribe(topic)
        reach_a_new_primary_once(cluster.backends[0])
        with pytest.raises(Unavailable) as raised:
            await node.broker.publish(topic, chmsg("c", b"x"), HistoryPolicy(10, 60))
        assert not isinstance(raised.value, NotRegistered), raised.value
        assert (await node.recv()).payload == b"x"  # it went out: this node's echo
    finally:
        await cluster.aclose()


async def test_a_trigger_run_by_a_new_primary_reaches_local_sockets_once(redis_server):
    """End to end on one node: a raw socket and a positioned one get the event once each."""
    config = Config(
        server=ServerConfig(),
        cluster=ClusterConfig(
            bus_url=redis_server.url,
            state_url=redis_server.url,
            key_prefix=f"np-{uuid.uuid4().hex[:8]}",
        ),
        apps=(HIST,),
    )
    node = build_node(config, node_id="a")
    await node.engine.start()
    try:
        raw = await connect(node.handler, HIST)
        positioned = await connect(node.handler, HIST)
        await subscribe(node.handler, raw, "room")
        await subscribe(node.handler, positioned, "room", {})
        raw.take()
        positioned.take()
        reach_a_new_primary_once(node.backends)
        with pytest.raises(api.ApiError):
            await api.trigger(node.engine, HIST, {"name": "e", "channel": "room", "data": "1"})
        await echoed(positioned)  # the copy the bus delivers (with its position)
        for conn in (raw, positioned):
            got = [e["data"] for e in conn.events() if e.get("event") == "e"]
            assert got == ["1"], (conn is raw, conn.events())
    finally:
        await node.engine.stop()
        await node.backends.close()


async def echoed(conn: FakeConnection) -> None:
    """Wait (5 s at most) for an event with a history position: the bus's echo."""
    async with asyncio.timeout(5):
        while not any("offset" in e and e.get("event") == "e" for e in conn.events()):
            await asyncio.sleep(0.01)
