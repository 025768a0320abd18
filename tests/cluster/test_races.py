"""Races and faults on a real two-node cluster over a real redis-server, repeated, asserting on
what the clients end up seeing."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson
import pytest

from tests.conftest import (
    TIMEOUT,
    cluster_config,
    cluster_nodes,
    redis_target,
    start_node,
    start_redis,
    stop_node,
)
from tests.helpers.client import Client, data, rest
from tests.helpers.cluster_checks import (
    http,
    members_seen,
    presence_subscribe,
    rest_users,
    trigger_numbered,
    ws,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]

QUOTA_CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
max_presence_members = 200

[[apps]]
id = "quota-id"
key = "quota-key"
secret = "quota-secret"
max_connections = 10
"""




@pytest.fixture(params=["redis", "redis-cluster"])
def two_nodes(tmp_path, request):
    redis = redis_target(request, request.param)
    with cluster_nodes(redis, tmp_path, QUOTA_CONFIG, f"race-{request.node.name}") as nodes:
        yield nodes






@pytest.mark.parametrize("attempt", range(3))
async def test_fifty_simultaneous_presence_joins_on_two_nodes(two_nodes, attempt):
    (_, pa, _), (_, pb, _) = two_nodes
    channel = f"presence-fifty-{attempt}"
    clients = await asyncio.gather(*(Client.connect(ws(pa if i % 2 else pb)) for i in range(50)))
    try:
        await asyncio.gather(
            *(c.send(presence_subscribe(c, channel, f"u{i}")) for i, c in enumerate(clients))
        )
        views = await asyncio.gather(*(members_seen(c, channel) for c in clients))
        expected = await rest_users(pa, channel)
        assert expected == {f"u{i}" for i in range(50)}
        assert await rest_users(pb, channel) == expected
        wrong = [i for i, v in enumerate(views) if v != expected]
        assert not wrong, [(i, expected - views[i], views[i] - expected) for i in wrong[:3]]
    finally:
        await asyncio.gather(*(c.close() for c in clients))




async def test_subscribe_on_b_then_trigger_on_a(two_nodes):
    (_, pa, _), (_, pb, _) = two_nodes
    for i in range(30):
        c = await Client.connect(ws(pb))
        try:
            ok = await c.subscribe(f"sub-then-trigger-{i}")
            assert ok["event"] == "pusher_internal:subscription_succeeded"
            status, _ = await rest(
                http(pa),
                "POST",
                "/apps/app-id/events",
                {"name": "e", "channel": f"sub-then-trigger-{i}", "data": str(i)},
            )
            assert status == 200
            assert (await c.recv_event("e", timeout=5))["data"] == str(i)
        finally:
            await c.close()


async def test_thirty_simultaneous_connects_against_a_quota_of_ten(two_nodes):
    (_, pa, _), (_, pb, _) = two_nodes
    for _ in range(3):
        async def one(i: int) -> Client | None:
            session = aiohttp.ClientSession()
            sock = await session.ws_connect(ws(pa if i % 2 else pb, "quota-key"))
            first = orjson.loads((await sock.receive(timeout=TIMEOUT)).data)
            c = Client(sock, session)
            if first["event"] == "pusher:connection_established":
                return c
            assert first["event"] == "pusher:error" and first["data"]["code"] == 4004
            await c.close()
            return None

        results = await asyncio.gather(*(one(i) for i in range(30)))
        admitted = [c for c in results if c is not None]
        assert len(admitted) == 10
        await asyncio.gather(*(c.close() for c in admitted))
        await asyncio.sleep(0.3)  # the slots are given back when the sockets close


async def test_redis_restart_under_load_loses_no_accepted_event(tmp_path):
    """40 triggers/s on node A while Redis restarts: every trigger answered 2xx reaches the
    subscribers on both nodes; the others were answered with an error (503)."""
    redis = start_redis()
    nodes: list = []
    try:
        cfg = cluster_config(redis, QUOTA_CONFIG, prefix="restart")
        nodes = [start_node(tmp_path, cfg) for _ in range(2)]
        (_, pa, _), (_, pb, _) = nodes
        sub_a, sub_b = await Client.connect(ws(pa)), await Client.connect(ws(pb))
        await sub_a.subscribe("load")
        await sub_b.subscribe("load")
        accepted: list[int] = []
        refused: list[int] = []
        got: dict[str, set[int]] = {"a": set(), "b": set()}

        async def collect(name: str, c: Client) -> None:
            while True:
                ev = await c.recv(timeout=60)
                if ev["event"] == "n":
                    got[name].add(int(ev["data"]))

        readers = [
            asyncio.create_task(collect("a", sub_a)),
            asyncio.create_task(collect("b", sub_b)),
        ]
        start = time.monotonic()
        async with aiohttp.ClientSession() as session:
            i = 0
            while time.monotonic() - start < 8.0:
                due = start + i / 40
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if i == 80:  # at 2 s
                    redis.restart()
                status = await trigger_numbered(session, pa, i)
                (accepted if status == 200 else refused).append(i)
                i += 1
        await asyncio.sleep(1.0)
        for t in readers:
            t.cancel()
        lost_b = [n for n in accepted if n not in got["b"]]
        lost_a = [n for n in accepted if n not in got["a"]]
        print(f"accepted {len(accepted)}, refused {len(refused)}, lost a/b {lost_a}/{lost_b}")
        assert not lost_a and not lost_b
        assert len(accepted) > 150  # the cluster recovered and kept accepting
        await sub_a.close()
        await sub_b.close()
    finally:
        for p, _, _ in nodes:
            stop_node(p)
        redis.stop()




async def test_paused_node_is_reaped_comes_back_and_is_reaped_again(two_nodes):
    (proc_a, pa, _), (_, pb, _) = two_nodes
    member = await Client.connect(ws(pa))
    watcher = await Client.connect(ws(pb))
    await watcher.send(presence_subscribe(watcher, "presence-pause", "watcher"))
    await watcher.recv_event("pusher_internal:subscription_succeeded")
    await member.send(presence_subscribe(member, "presence-pause", "paused"))
    await member.recv_event("pusher_internal:subscription_succeeded")
    assert data(await watcher.recv_event("pusher_internal:member_added")) == {
        "user_id": "paused",
        "user_info": {"n": "paused"},
    }
    bound = 2.0 + 0.5 + 1.5  # node_timeout + heartbeat_interval (tests' config) + slack
    try:
        for round_ in range(2):
            proc_a.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            ev = await watcher.recv_event("pusher_internal:member_removed", timeout=TIMEOUT)
            took = time.monotonic() - stopped
            assert data(ev) == {"user_id": "paused"}
            assert took < bound, (round_, took)
            assert await rest_users(pb, "presence-pause") == {"watcher"}
            proc_a.send_signal(signal.SIGCONT)
            ev = await watcher.recv_event("pusher_internal:member_added", timeout=TIMEOUT)
            assert data(ev)["user_id"] == "paused"
            assert await rest_users(pb, "presence-pause") == {"watcher", "paused"}
            # never announced to its own socket; the socket stayed subscribed throughout
            seen = await members_seen(member, "presence-pause", quiet=0.3)
            assert "paused" not in seen
    finally:
        proc_a.send_signal(signal.SIGCONT)
        await member.close()
        await watcher.close()
