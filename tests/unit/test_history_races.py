"""Channel history and recovery under races and on failure paths, on the memory backend (an
in-process cluster). Each test states the promise it checks; a failure is a bug."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from pushwire import api
from pushwire.apps.model import App
from pushwire.cluster.base import Unavailable
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.testing import FakeConnection, InProcessCluster
from tests.helpers.handler import connect, subscribe, succeeded

HIST = App(id="h", key="hk", secret="hs", history_size=100)
CONFIG = Config(
    server=ServerConfig(),
    cluster=ClusterConfig(node_timeout=6.0, heartbeat_interval=1.0),
    apps=(HIST,),
)


@pytest.fixture
async def one_node():
    async with InProcessCluster(CONFIG, n=1) as c:
        yield c


@pytest.fixture
async def two_nodes():
    async with InProcessCluster(CONFIG, n=2) as c:
        yield c


async def trigger(node, channel: str, data: str) -> None:
    await api.trigger(node.engine, HIST, {"name": "e", "channel": channel, "data": data})


def positioned(conn: FakeConnection, channel: str) -> list[tuple[str, int, str]]:
    return [
        (e["epoch"], e["offset"], e["data"])
        for e in conn.events()
        if e.get("channel") == channel and e.get("event") == "e" and "offset" in e
    ]


async def test_event_appended_before_the_read_but_delivered_after_activate_is_sent_twice(
    two_nodes,
):
    """Each missed event once. The bus message of an event appended just before the joiner's
    history read can reach this node after the read's reply (over Redis: two connections,
    pub/sub and commands, read in no guaranteed order; on the memory backend: the bus
    delivery is a call_soon and the read need not yield). The event is in the recovered page
    AND broadcast to the now-subscribed socket: it gets it twice."""
    a, b = two_nodes.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "room-x", {})
    await two_nodes.settle()
    epoch = succeeded(c, "room-x")["epoch"]
    await a.handler.on_close(c)
    await trigger(b, "room-x", "m1")
    await two_nodes.settle()

    broker = a.engine.broker
    real_history = broker.history

    async def history_with_a_publish_just_before(*args: Any, **kw: Any):
        # node b appends m2 right before this read; its bus delivery to node a is still in
        # flight when the read returns (exactly what a reply on the command connection that
        # is read before the pub/sub message looks like)
        await b.engine.publish(HIST, "room-x", _frame("room-x", "m2"), None)
        return await real_history(*args, **kw)

    broker.history = history_with_a_publish_just_before  # type: ignore[method-assign]
    c2 = await connect(a.handler, HIST)
    await subscribe(a.handler, c2, "room-x", {"epoch": epoch, "offset": 0})
    broker.history = real_history  # type: ignore[method-assign]
    await two_nodes.settle()
    assert succeeded(c2, "room-x")["recovered"] is True
    got = positioned(c2, "room-x")
    assert [o for _, o, _ in got] == [1, 2], got


def _frame(channel: str, data: str):
    from pushwire.protocol import messages

    return messages.channel_event("e", channel, data, None)


async def test_concurrent_recoveries_and_publishes_each_event_once_on_the_wire(two_nodes):
    """Many sockets recover while triggers run on both nodes (random yields in every store
    call): on the wire, every positioned event arrives once, in offset order, with no gap
    after the position each socket gave (checked on the raw frames, not through a client
    that drops duplicates)."""
    two_nodes.plane.round_trip = random.Random(7)
    a, b = two_nodes.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "room-y", {})
    await two_nodes.settle()
    epoch = succeeded(c, "room-y")["epoch"]
    await a.handler.on_close(c)
    for i in range(5):
        await trigger(b, "room-y", f"pre{i}")
    await two_nodes.settle()

    stop = asyncio.Event()

    async def publisher(node, tag: str) -> None:
        i = 0
        while not stop.is_set():
            await trigger(node, "room-y", f"{tag}{i}")
            i += 1
            await asyncio.sleep(0)

    conns: list[FakeConnection] = []

    async def joiner(node) -> None:
        for _ in range(15):
            conn = await connect(node.handler, HIST)
            conns.append(conn)
            await subscribe(node.handler, conn, "room-y", {"epoch": epoch, "offset": 0})
            for _ in range(random.Random(len(conns)).randint(0, 4)):
                await asyncio.sleep(0)

    pubs = [asyncio.ensure_future(publisher(n, t)) for n, t in ((a, "a"), (b, "b"))]
    await asyncio.gather(joiner(a), joiner(b), joiner(a))
    stop.set()
    await asyncio.gather(*pubs)
    await two_nodes.settle()
    bad = []
    for conn in conns:
        ok = succeeded(conn, "room-y")
        offs = [o for _, o, _ in positioned(conn, "room-y")]
        # recovered: 1, 2, ...; not recovered (over history_size behind): top + 1, ...
        start = 1 if ok["recovered"] is True else ok["offset"] + 1
        if offs != list(range(start, start + len(offs))):
            dups = sorted({o for o in offs if offs.count(o) > 1})
            gaps = sorted(set(range(start, max(offs, default=0) + 1)) - set(offs))
            bad.append((ok.get("recovered"), "dups", dups, "gaps", gaps))
    assert not bad, f"{len(bad)} of {len(conns)} sockets: {bad[:3]}"


async def test_lost_reply_of_a_history_publish_is_delivered_twice_locally(two_nodes):
    """'A 2xx means every live subscriber gets it', and no socket gets an event twice.
    A history publish whose reply is lost (a timeout or a dropped connection after the store
    ran the script: the Broker contract itself mentions 'a publish retried after a lost
    connection') raises plain Unavailable; Engine.publish then broadcasts locally without a
    position, and the store's echo delivers it again: every local subscriber gets it twice."""
    a, _ = two_nodes.nodes
    v1 = await connect(a.handler, HIST)
    pw = await connect(a.handler, HIST)
    await subscribe(a.handler, v1, "room-z")
    await subscribe(a.handler, pw, "room-z", {})
    await two_nodes.settle()
    v1.take()
    pw.take()
    broker = a.engine.broker
    real_publish = broker.publish

    async def publish_then_lose_the_reply(topic, msg, history=None):
        await real_publish(topic, msg, history)
        raise Unavailable("Redis unreachable (publish): Timeout reading from socket")

    broker.publish = publish_then_lose_the_reply  # type: ignore[method-assign]
    with pytest.raises(api.ApiError):
        await trigger(a, "room-z", "once")
    broker.publish = real_publish  # type: ignore[method-assign]
    await two_nodes.settle()
    assert [e["data"] for e in v1.events() if e.get("event") == "e"] == ["once"]
    assert [e["data"] for e in pw.events() if e.get("event") == "e"] == ["once"]


async def test_recover_empty_on_many_channels_leaves_nothing_for_long(one_node):
    """Subscribing with 'recover': {} to channels nobody publishes on creates their epochs;
    they live only history_ttl (not the day a published history's epoch lives), so a client
    touching many channel names leaves nothing for long."""
    (a,) = one_node.nodes
    for i in range(30):
        c = await connect(a.handler, HIST)
        for j in range(100):
            await subscribe(a.handler, c, f"junk-{i}-{j}", {})
        await a.handler.on_close(c)
    await one_node.settle()
    await trigger(a, "kept", "x")  # a published history outlives them
    one_node.clock.advance(HIST.history_ttl + 1)
    await a.engine.heartbeat()
    assert list(one_node.plane.histories) == ["c:h:kept"]


async def test_expired_events_of_idle_channels_are_freed(one_node):
    """history_ttl bounds how long events are held in memory, also on channels nobody touches
    again: each heartbeat sweeps them."""
    app = App(id="t", key="tk", secret="ts", history_size=100, history_ttl=1.0)
    cfg = Config(server=ServerConfig(), cluster=CONFIG.cluster, apps=(app,))
    c = InProcessCluster(cfg, n=1)
    await c.start()
    try:
        (a,) = c.nodes
        big = "x" * 5000
        for ch in range(20):
            for _ in range(50):
                await api.trigger(a.engine, app, {"name": "e", "channel": f"c{ch}", "data": big})
        assert sum(len(h.events) for h in c.plane.histories.values()) == 1000
        c.clock.advance(60.0)
        await a.engine.heartbeat()
        kept = sum(len(h.events) for h in c.plane.histories.values())
        assert kept == 0, f"{kept} expired events still held in memory"
        assert len(c.plane.histories) == 20  # their epochs and offsets stay (meta ttl)
    finally:
        await c.stop()


async def test_single_node_concurrent_recoveries_each_event_once(one_node):
    """The default single-node server (memory backend, no simulated round trips): sockets
    recover from offset 0 while REST triggers run concurrently. On the wire each positioned
    event must arrive once."""
    (a,) = one_node.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "room-s", {})
    epoch = succeeded(c, "room-s")["epoch"]
    await a.handler.on_close(c)
    stop = asyncio.Event()

    async def publisher(tag: str) -> None:
        i = 0
        while not stop.is_set():
            await trigger(a, "room-s", f"{tag}{i}")
            i += 1
            await asyncio.sleep(0)

    conns: list[FakeConnection] = []

    async def joiner() -> None:
        for _ in range(30):
            conn = await connect(a.handler, HIST)
            conns.append(conn)
            await subscribe(a.handler, conn, "room-s", {"epoch": epoch, "offset": 0})
            await asyncio.sleep(0)

    pubs = [asyncio.ensure_future(publisher(t)) for t in "xy"]
    await asyncio.gather(joiner(), joiner())
    stop.set()
    await asyncio.gather(*pubs)
    await one_node.settle()
    bad = []
    for conn in conns:
        offs = [o for _, o, _ in positioned(conn, "room-s")]
        if offs != list(range(1, len(offs) + 1)):
            bad.append(sorted({o for o in offs if offs.count(o) > 1}))
    assert not bad, f"{len(bad)} of {len(conns)} sockets got duplicates: {bad[:3]}"
