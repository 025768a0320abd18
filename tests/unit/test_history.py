"""Channel history and recovery on the memory backend: one node, and the in-process cluster
(two nodes over one backplane, with random yields in every store and bus call so that
interleavings happen). The same scenarios run over real Redis in tests/cluster/test_history.py.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from pushwire import api
from pushwire.apps.model import App
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.testing import FakeConnection, InProcessCluster
from tests.helpers.handler import connect, received, subscribe, succeeded

HIST = App(id="h", key="hk", secret="hs", history_size=100, history_channels=("room-", "private-"))
SMALL = App(id="s", key="sk", secret="ss", history_size=10)
PLAIN = App(id="p", key="pk", secret="ps")
BIG = App(id="b", key="bk", secret="bs", history_size=1000)
CONFIG = Config(
    server=ServerConfig(),
    cluster=ClusterConfig(node_timeout=6.0, heartbeat_interval=1.0),
    apps=(HIST, SMALL, PLAIN, BIG),
)


@pytest.fixture
async def cluster():
    c = InProcessCluster(CONFIG, n=2)
    c.plane.round_trip = random.Random(0)
    await c.start()
    yield c
    await c.stop()


async def trigger(node, app: App, channel: str, data: str, name: str = "e") -> None:
    await api.trigger(node.engine, app, {"name": name, "channel": channel, "data": data})


async def gone(cluster, handler, app: App, channel: str) -> str:
    """A socket that subscribed with positions and was cut off: the epoch it was told."""
    c = await connect(handler, app)
    await subscribe(handler, c, channel, {})
    await cluster.settle()
    epoch: str = succeeded(c, channel)["epoch"]
    await handler.on_close(c)
    return epoch


def data_of(conn: FakeConnection, channel: str, event: str = "e") -> list[str]:
    return [e["data"] for e in received(conn, channel) if e["event"] == event]


async def test_v1_sockets_get_byte_identical_frames(cluster):
    """A Pusher client on a channel with history gets exactly the frames it gets on an app
    without history, beside a socket that opted in to positions."""
    a, b = cluster.nodes
    v1 = await connect(a.handler, HIST)
    pw = await connect(b.handler, HIST)
    plain = await connect(a.handler, PLAIN)
    await subscribe(a.handler, v1, "room-1")
    await subscribe(b.handler, pw, "room-1", {})
    await subscribe(a.handler, plain, "room-1")
    await cluster.settle()
    for i in range(5):
        await trigger(a if i % 2 else b, HIST, "room-1", f"m{i}")
        await trigger(a, PLAIN, "room-1", f"m{i}")
    await cluster.settle()
    assert v1.wire() == plain.wire()
    assert len(v1.wire()) == 6  # subscription_succeeded + 5 events
    got = [e for e in pw.events() if e["event"] == "e"]
    assert [e["data"] for e in got] == [f"m{i}" for i in range(5)]
    assert [e["offset"] for e in got] == [1, 2, 3, 4, 5]
    assert len({e["epoch"] for e in got}) == 1
    ok = succeeded(pw, "room-1")
    assert ok["offset"] == 0 and ok["epoch"] == got[0]["epoch"] and "recovered" not in ok
    # the positioned frame is the shared one with two fields added
    shared = v1.wire()[1]
    assert pw.wire()[1] == shared[:-1] + f',"offset":1,"epoch":"{ok["epoch"]}"}}'


@pytest.mark.parametrize("attempt", range(20))
async def test_recover_after_drop_on_other_node(cluster, attempt):
    """Cut off on node A, 50 events are triggered (on both nodes), back on node B: all 50, in
    order, once each, then subscription_succeeded with recovered: true, then live ones."""
    cluster.plane.round_trip = random.Random(attempt)
    a, b = cluster.nodes
    c1 = await connect(a.handler, HIST)
    await subscribe(a.handler, c1, "room-x", {})
    await cluster.settle()
    await trigger(b, HIST, "room-x", "before")
    await cluster.settle()
    last = [e for e in c1.events() if e["event"] == "e"][-1]
    await a.handler.on_close(c1)  # dropped without a close frame
    for i in range(50):
        await trigger(a if i % 3 else b, HIST, "room-x", f"m{i}")
    c2 = await connect(b.handler, HIST)
    resume = {"epoch": last["epoch"], "offset": last["offset"]}
    # events keep coming while it recovers: none lost, none twice
    live = asyncio.gather(*(trigger(a, HIST, "room-x", f"live{i}") for i in range(10)))
    await subscribe(b.handler, c2, "room-x", resume)
    await live
    await cluster.settle()
    evs = received(c2, "room-x")
    kinds = [e["event"] for e in evs]
    ok_at = kinds.index("pusher_internal:subscription_succeeded")
    assert [e["data"] for e in evs[:ok_at]][:50] == [f"m{i}" for i in range(50)]
    assert evs[ok_at]["recovered"] is True
    datas = [e["data"] for e in evs if e["event"] == "e"]
    assert datas[:50] == [f"m{i}" for i in range(50)]
    assert sorted(datas[50:]) == sorted(f"live{i}" for i in range(10))
    offsets = [e["offset"] for e in evs if e["event"] == "e"]
    assert offsets == list(range(2, 2 + 60))


async def test_epoch_change_is_not_recovered(cluster):
    a, b = cluster.nodes
    c1 = await connect(a.handler, HIST)
    await subscribe(a.handler, c1, "room-e", {})
    await trigger(a, HIST, "room-e", "x")
    await cluster.settle()
    last = [e for e in c1.events() if e["event"] == "e"][-1]
    await a.handler.on_close(c1)
    cluster.plane.forget_history()  # the store lost its data
    await trigger(a, HIST, "room-e", "y")
    c2 = await connect(b.handler, HIST)
    await subscribe(b.handler, c2, "room-e", {"epoch": last["epoch"], "offset": last["offset"]})
    await cluster.settle()
    ok = succeeded(c2, "room-e")
    assert ok["recovered"] is False
    assert ok["epoch"] != last["epoch"] and ok["offset"] == 1
    assert data_of(c2, "room-e") == []  # nothing half-recovered
    await trigger(a, HIST, "room-e", "z")
    await cluster.settle()
    assert [(e["data"], e["offset"]) for e in received(c2, "room-e") if e["event"] == "e"] == [
        ("z", 2)
    ]


async def test_too_far_behind_is_not_recovered(cluster):
    a, b = cluster.nodes
    epoch = await gone(cluster, a.handler, SMALL, "news")
    for i in range(11):  # one more than the 10 kept
        await trigger(b, SMALL, "news", f"m{i}")
    c2 = await connect(b.handler, SMALL)
    await subscribe(b.handler, c2, "news", {"epoch": epoch, "offset": 0})
    await cluster.settle()
    ok = succeeded(c2, "news")
    assert ok["recovered"] is False and ok["offset"] == 11
    assert data_of(c2, "news") == []
    # ten behind is still within reach
    c3 = await connect(a.handler, SMALL)
    await subscribe(a.handler, c3, "news", {"epoch": epoch, "offset": 1})
    await cluster.settle()
    assert succeeded(c3, "news")["recovered"] is True
    assert data_of(c3, "news") == [f"m{i}" for i in range(1, 11)]


async def test_expired_history_is_not_recovered(cluster):
    a, _ = cluster.nodes
    c1 = await connect(a.handler, HIST)
    await subscribe(a.handler, c1, "room-t", {})
    await trigger(a, HIST, "room-t", "x")
    await cluster.settle()
    epoch = succeeded(c1, "room-t")["epoch"]
    await a.handler.on_close(c1)
    await trigger(a, HIST, "room-t", "y")
    cluster.clock.advance(HIST.history_ttl + 1)
    c2 = await connect(a.handler, HIST)
    await subscribe(a.handler, c2, "room-t", {"epoch": epoch, "offset": 1})
    assert succeeded(c2, "room-t")["recovered"] is False
    # nothing missed: recovered even though the events themselves expired
    c3 = await connect(a.handler, HIST)
    await subscribe(a.handler, c3, "room-t", {"epoch": epoch, "offset": 2})
    ok = succeeded(c3, "room-t")
    assert ok["recovered"] is True and ok["epoch"] == epoch and ok["offset"] == 2


async def test_channel_without_history(cluster):
    a, _ = cluster.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "other", {"epoch": "abc", "offset": 3})
    await trigger(a, HIST, "other", "x")
    await cluster.settle()
    ok = succeeded(c, "other")
    assert ok["recovered"] is False and "offset" not in ok
    ev = received(c, "other")[-1]
    assert ev["data"] == "x" and "offset" not in ev
    c2 = await connect(a.handler, HIST)
    await subscribe(a.handler, c2, "other", {})
    assert set(succeeded(c2, "other")) == {"event", "channel", "data"}


async def test_client_events_and_private_channels_keep_history(cluster):
    a, b = cluster.nodes
    s1 = await connect(a.handler, HIST)
    s2 = await connect(b.handler, HIST)
    await subscribe(a.handler, s1, "private-chat", {})
    await subscribe(b.handler, s2, "private-chat", {})
    await cluster.settle()
    msg = {"event": "client-typing", "channel": "private-chat", "data": {"on": True}}
    await a.handler.on_text(s1, orjson.dumps(msg))
    await cluster.settle()
    got = [e for e in s2.events() if e["event"] == "client-typing"]
    assert len(got) == 1 and got[0]["offset"] == 1
    assert not [e for e in s1.events() if e["event"] == "client-typing"]  # not echoed
    page = await api.history(b.engine, HIST, "private-chat", {})
    assert [(e["offset"], e["event"], e["data"]) for e in page["events"]] == [
        (1, "client-typing", {"on": True})
    ]


@pytest.mark.parametrize(
    "recover",
    [
        [],
        "x",
        {"epoch": "", "offset": 1},
        {"epoch": "a b", "offset": 1},
        {"epoch": "abc", "offset": -1},
        {"epoch": "abc", "offset": 1.5},
        {"epoch": "abc", "offset": True},
        {"epoch": "abc", "offset": 2**60},
        {"epoch": "abc"},
    ],
)
async def test_bad_recover_is_refused(cluster, recover):
    a, _ = cluster.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "room-b", recover)
    evs = c.events()
    assert evs[-1]["event"] == "pusher:error" and evs[-1]["data"]["code"] == 4300
    assert "recover" in evs[-1]["data"]["message"]
    assert "room-b" not in c.channels


async def test_rest_history(cluster):
    a, b = cluster.nodes
    for i in range(5):
        await trigger(a if i % 2 else b, HIST, "room-r", f"m{i}", name=f"ev{i}")
    page = await api.history(a.engine, HIST, "room-r", {})
    assert page["offset"] == 5 and page["complete"] is True
    assert [(e["offset"], e["event"], e["data"]) for e in page["events"]] == [
        (i + 1, f"ev{i}", f"m{i}") for i in range(5)
    ]
    assert all(isinstance(e["published_at"], float) for e in page["events"])
    page = await api.history(b.engine, HIST, "room-r", {"limit": "2"})
    assert [e["offset"] for e in page["events"]] == [4, 5]
    page = await api.history(b.engine, HIST, "room-r", {"since": "1", "limit": "2"})
    assert [e["offset"] for e in page["events"]] == [2, 3] and page["complete"] is True
    page = await api.history(b.engine, HIST, "room-r", {"since": "9"})
    assert page["events"] == [] and page["complete"] is False
    for bad in ({"limit": "0"}, {"limit": "x"}, {"limit": "101"}, {"since": "-1"}):
        with pytest.raises(api.ApiError) as err:
            await api.history(a.engine, HIST, "room-r", bad)
        assert err.value.status == 400
    with pytest.raises(api.ApiError) as err:
        await api.history(a.engine, HIST, "news", {})
    assert err.value.status == 400 and "keeps no history" in err.value.message


async def test_store_down_delivers_locally_without_position(cluster):
    """A publish the store cannot take reaches this node's sockets (without a position) and
    the caller hears 503; a recovery meanwhile says recovered: false."""
    a, _ = cluster.nodes
    c = await connect(a.handler, HIST)
    await subscribe(a.handler, c, "room-d", {})
    await cluster.settle()
    cluster.plane.cut("n0")
    with pytest.raises(api.ApiError) as err:
        await trigger(a, HIST, "room-d", "x")
    assert err.value.status == 503
    ev = received(c, "room-d")[-1]
    assert ev["data"] == "x" and "offset" not in ev
    c2 = await connect(a.handler, HIST)
    await subscribe(a.handler, c2, "room-d", {"epoch": "abc", "offset": 0})
    ok = succeeded(c2, "room-d")
    assert ok["recovered"] is False and "offset" not in ok
    cluster.plane.cut("n0", down=False)


async def test_recovery_larger_than_half_the_pending_limit_fails(cluster):
    """Replaying more than a socket may hold unsent would close it as a slow consumer."""
    a, b = cluster.nodes
    epoch = await gone(cluster, a.handler, BIG, "room-big")
    big = "x" * (BIG.max_message_size - 100)
    n = CONFIG.server.max_pending_bytes // 2 // len(big)
    for _ in range(n - 5):  # within half the limit: recovered
        await trigger(b, BIG, "room-big", big)
    c2 = await connect(a.handler, BIG)
    await subscribe(a.handler, c2, "room-big", {"epoch": epoch, "offset": 0})
    assert succeeded(c2, "room-big")["recovered"] is True
    assert len(data_of(c2, "room-big")) == n - 5
    for _ in range(10):  # past it: not
        await trigger(b, BIG, "room-big", big)
    c3 = await connect(a.handler, BIG)
    await subscribe(a.handler, c3, "room-big", {"epoch": epoch, "offset": 0})
    assert succeeded(c3, "room-big")["recovered"] is False
    assert data_of(c3, "room-big") == [] and not c3.closed


async def test_a_socket_left_out_gets_the_position_and_never_the_event(cluster):
    """The sender of a client event (or the socket a trigger excludes) gets the event's
    position alone, so recovering later does not hand it back its own event."""
    a, b = cluster.nodes
    s1 = await connect(a.handler, HIST)
    s2 = await connect(b.handler, HIST)
    await subscribe(a.handler, s1, "private-own", {})
    await subscribe(b.handler, s2, "private-own", {})
    await cluster.settle()
    s1.take()
    msg = {"event": "client-hi", "channel": "private-own", "data": {}}
    await a.handler.on_text(s1, orjson.dumps(msg))
    body = {"name": "e", "channel": "private-own", "data": "x", "socket_id": s1.socket_id}
    await api.trigger(b.engine, HIST, body)
    await trigger(b, HIST, "private-own", "for-all")
    await cluster.settle()
    got = s1.take()
    assert [(e["event"], e["offset"]) for e in got] == [
        ("pushwire:position", 1),
        ("pushwire:position", 2),
        ("e", 3),
    ]
    await a.handler.on_close(s1)
    await trigger(b, HIST, "private-own", "missed")
    back = await connect(a.handler, HIST)
    await subscribe(a.handler, back, "private-own", {"epoch": got[-1]["epoch"], "offset": 3})
    assert data_of(back, "private-own") == ["missed"]
    assert succeeded(back, "private-own")["recovered"] is True
