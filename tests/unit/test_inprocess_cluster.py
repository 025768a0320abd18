"""The engine on an in-process cluster: several nodes over one memory backplane, FakeConnections,
no sockets. Deterministic and fast, so races are repeated many times here; the same scenarios
run over real Redis in tests/cluster."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from pushwire import api
from pushwire.apps.model import App
from pushwire.config import ClusterConfig, Config, ServerConfig
from pushwire.protocol.errors import PusherError
from pushwire.protocol.signing import channel_string_to_sign, sign_auth
from pushwire.testing import FakeConnection, InProcessCluster

APP = App(
    id="1",
    key="k",
    secret="s",
    max_presence_members=1000,
    enable_subscription_count=True,
    enable_watchlist_events=True,
)
QUOTA_APP = App(id="2", key="qk", secret="qs", max_connections=10)
CONFIG = Config(
    server=ServerConfig(),
    cluster=ClusterConfig(node_timeout=6.0, heartbeat_interval=1.0),
    apps=(APP, QUOTA_APP),
)


@pytest.fixture
async def cluster():
    c = InProcessCluster(CONFIG, n=2)
    c.plane.round_trip = random.Random(0)  # state and bus calls yield: interleavings happen
    await c.start()
    yield c
    await c.stop()


async def connect(handler) -> FakeConnection:
    conn = FakeConnection(APP, now=handler.clock())
    await handler.open(conn)
    conn.take()
    return conn


async def join(handler, conn: FakeConnection, channel: str, user: str | None = None) -> None:
    d: dict[str, Any] = {"channel": channel}
    cd = None
    if user is not None:
        cd = orjson.dumps({"user_id": user, "user_info": {"name": user}}).decode()
        d["channel_data"] = cd
    if channel.startswith(("private-", "presence-")):
        d["auth"] = sign_auth("k", "s", channel_string_to_sign(conn.socket_id, channel, cd))
    await handler.on_text(conn, orjson.dumps({"event": "pusher:subscribe", "data": d}))


def member_view(conn: FakeConnection, channel: str) -> set[str] | None:
    """The member list a Pusher client builds from what it received."""
    members: set[str] | None = None
    for ev in conn.events():
        if ev.get("channel") != channel:
            continue
        d = orjson.loads(ev["data"]) if isinstance(ev.get("data"), str) else ev.get("data")
        if ev["event"] == "pusher_internal:subscription_succeeded":
            members = set(d["presence"]["ids"])
        elif members is not None and ev["event"] == "pusher_internal:member_added":
            members.add(d["user_id"])
        elif members is not None and ev["event"] == "pusher_internal:member_removed":
            members.discard(d["user_id"])
    return members


@pytest.mark.parametrize("attempt", range(30))
async def test_simultaneous_presence_joins_agree(cluster, attempt):
    """Users join one presence channel at once, spread over two nodes, in random order:
    every client's member list ends equal to the deployment's (REST /users)."""
    rnd = random.Random(attempt)
    cluster.plane.round_trip = random.Random(attempt)
    channel = f"presence-race-{attempt}"
    clients = []
    for i in range(12):
        h = cluster.handlers[rnd.randrange(2)]
        clients.append((h, await connect(h), f"u{i}"))
    await asyncio.gather(*(join(h, c, channel, u) for h, c, u in clients))
    await cluster.settle()
    engine = cluster.nodes[0].engine
    expected = set(await engine.members(APP, channel))
    assert expected == {u for _, _, u in clients}
    for _, c, u in clients:
        assert member_view(c, channel) == expected, (u, c.events())
    # leaving at once: everyone still there sees exactly the rest
    leaving = clients[: len(clients) // 2]
    await asyncio.gather(*(h.on_close(c) for h, c, _ in leaving))
    await cluster.settle()
    rest = set(await engine.members(APP, channel))
    assert rest == {u for _, _, u in clients[len(clients) // 2 :]}
    for _, c, _ in clients[len(clients) // 2 :]:
        assert member_view(c, channel) == rest


async def test_subscribe_on_b_then_trigger_on_a(cluster):
    a, b = cluster.nodes
    for i in range(20):
        conn = await connect(b.handler)
        await join(b.handler, conn, f"news-{i}")
        conn.take()
        await api.trigger(a.engine, APP, {"name": "e", "channel": f"news-{i}", "data": str(i)})
        await cluster.settle()
        assert [e for e in conn.take() if e["event"] == "e"] == [
            {"event": "e", "channel": f"news-{i}", "data": str(i)}
        ]


async def test_events_published_while_joining_come_after_succeeded(cluster):
    """A joiner waits for its snapshot; what is published meanwhile reaches it afterwards."""
    a, b = cluster.nodes
    conn = await connect(b.handler)
    joining = asyncio.ensure_future(join(b.handler, conn, "presence-hold", "late"))
    while "c:1:presence-hold" not in cluster.plane.topics:  # until b listens on the bus
        await asyncio.sleep(0)
    await api.trigger(a.engine, APP, {"name": "e", "channel": "presence-hold", "data": "x"})
    await joining
    await cluster.settle()
    names = [e["event"] for e in conn.events()]
    assert names.index("pusher_internal:subscription_succeeded") < names.index("e")


async def test_connection_quota_is_deployment_wide(cluster):
    handlers = cluster.handlers
    conns = [FakeConnection(QUOTA_APP, now=0) for _ in range(30)]
    results = await asyncio.gather(
        *(handlers[i % 2].open(c) for i, c in enumerate(conns)), return_exceptions=True
    )
    admitted = [c for c, r in zip(conns, results, strict=True) if r is None]
    assert len(admitted) == QUOTA_APP.max_connections
    assert all(c.close_code == 4004 for c in conns if c not in admitted)


async def test_reaped_node_heals_and_paused_node_comes_back(cluster):
    a, b = cluster.nodes
    ghost = await connect(a.handler)
    mate = await connect(a.handler)  # a second member on the paused node
    watcher = await connect(b.handler)
    await join(b.handler, watcher, "presence-heal", "watcher")
    await join(a.handler, ghost, "presence-heal", "ghost")
    await join(a.handler, mate, "presence-heal", "mate")
    await cluster.settle()
    assert member_view(watcher, "presence-heal") == {"watcher", "ghost", "mate"}
    watcher.take()
    mate.take()
    # node a is paused: its lease runs out, b reaps it within one heartbeat
    cluster.clock.advance(CONFIG.cluster.node_timeout + 0.1)
    await b.engine.heartbeat()
    await cluster.settle()
    removed = [orjson.loads(e["data"])["user_id"] for e in watcher.take()]
    assert sorted(removed) == ["ghost", "mate"]
    assert set(await b.engine.members(APP, "presence-heal")) == {"watcher"}
    # a resumes: it notices, resyncs, and announces its members again to everyone else
    await a.engine.heartbeat()
    await cluster.settle()
    assert member_view(watcher, "presence-heal") is None  # (its snapshot was taken before)
    added = [
        orjson.loads(e["data"])["user_id"]
        for e in watcher.take()
        if e["event"] == "pusher_internal:member_added"
    ]
    assert sorted(added) == ["ghost", "mate"]
    assert set(await b.engine.members(APP, "presence-heal")) == {"watcher", "ghost", "mate"}
    # never to the member's own sockets
    assert not any(
        orjson.loads(e["data"]).get("user_id") == "mate"
        for e in mate.take()
        if e["event"].startswith("pusher_internal:member_")
    )
    # a second pause is reaped within the normal bound again
    cluster.clock.advance(CONFIG.cluster.node_timeout + 0.1)
    await b.engine.heartbeat()
    await cluster.settle()
    assert set(await b.engine.members(APP, "presence-heal")) == {"watcher"}


async def test_outage_gives_503_then_resync(cluster):
    a, b = cluster.nodes
    local = await connect(a.handler)
    remote = await connect(b.handler)
    await join(a.handler, local, "news")
    await join(b.handler, remote, "news")
    await cluster.settle()
    local.take()
    remote.take()
    cluster.plane.cut("n0")
    with pytest.raises(api.ApiError) as err:
        await api.trigger(a.engine, APP, {"name": "e", "channel": "news", "data": "x"})
    assert err.value.status == 503
    assert [e["event"] for e in local.take()] == ["e"]  # local delivery goes on
    assert not a.engine.ready
    # a client that joins meanwhile is decided locally, then written by the resync
    late = await connect(a.handler)
    await join(a.handler, late, "news")
    cluster.plane.cut("n0", down=False)
    await a.engine.heartbeat()
    assert a.engine.ready
    stats = await b.engine.channel_stats(APP, "news")
    assert stats is not None and stats.subscription_count == 3
    await api.trigger(a.engine, APP, {"name": "after", "channel": "news", "data": "y"})
    await cluster.settle()
    assert [e["event"] for e in remote.take() if e["event"] == "after"] == ["after"]


async def test_a_node_whose_bus_dropped_messages_tells_its_sockets(cluster):
    """A bus connection given up while silent may have swallowed messages: the node closes
    its sockets with 4200 (reconnect, recover from history), refuses new ones with 4100
    until its subscriptions are made again, and is not ready meanwhile."""
    a, b = cluster.nodes
    deaf = [await connect(a.handler) for _ in range(3)]
    for conn in deaf:
        await join(a.handler, conn, "news")
    other = await connect(b.handler)
    await join(b.handler, other, "news")
    await cluster.settle()
    cluster.plane.lose("n0")
    assert [c.close_code for c in deaf] == [4200, 4200, 4200]
    assert other.close_code is None
    assert not a.engine.ready and b.engine.ready
    refused = FakeConnection(APP, now=a.handler.clock())
    with pytest.raises(PusherError):
        await a.handler.open(refused)
    assert refused.close_code == 4100
    for conn in deaf:
        await a.handler.on_close(conn)
    await a.engine.heartbeat()  # the resync makes the bus subscriptions again
    assert a.engine.ready
    back = await connect(a.handler)
    await join(a.handler, back, "news")
    await cluster.settle()
    await api.trigger(b.engine, APP, {"name": "after", "channel": "news", "data": "y"})
    await cluster.settle()
    assert [e["event"] for e in back.take() if e["event"] == "after"] == ["after"]
    stats = await b.engine.channel_stats(APP, "news")
    assert stats is not None and stats.subscription_count == 2


async def test_watchlist_online_offline_across_nodes(cluster):
    a, b = cluster.nodes
    watcher = await connect(b.handler)
    data = orjson.dumps({"id": "w", "watchlist": ["alice"]}).decode()
    from pushwire.protocol.signing import user_string_to_sign

    auth = sign_auth("k", "s", user_string_to_sign(watcher.socket_id, data))
    await b.handler.on_text(
        watcher,
        orjson.dumps({"event": "pusher:signin", "data": {"user_data": data, "auth": auth}}),
    )
    watcher.take()
    alice = await connect(a.handler)
    adata = orjson.dumps({"id": "alice"}).decode()
    auth = sign_auth("k", "s", user_string_to_sign(alice.socket_id, adata))
    await a.handler.on_text(
        alice, orjson.dumps({"event": "pusher:signin", "data": {"user_data": adata, "auth": auth}})
    )
    await cluster.settle()
    evs = [orjson.loads(e["data"])["events"] for e in watcher.take()]
    assert evs == [[{"name": "online", "user_ids": ["alice"]}]]
    await a.handler.on_close(alice)
    await cluster.settle()
    evs = [orjson.loads(e["data"])["events"] for e in watcher.take()]
    assert evs == [[{"name": "offline", "user_ids": ["alice"]}]]
