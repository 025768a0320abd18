"""Channel history and recovery on a real two-node cluster over a real redis-server, driven by
the Python client (`PushwireClient`, which recovers on every reconnect): a client cut off on
one node comes back on the other and gets what it missed, in order, once each."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.conftest import (
    TIMEOUT,
    cluster_config,
    cluster_nodes,
    free_port,
    start_node,
    start_redis,
    stop_node,
)
from tests.helpers.recorder import Recorder
from tests.server.helpers import Client, rest

CONFIG = """
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
history_size = 5000

[[apps]]
id = "small-id"
key = "small-key"
secret = "small-secret"
history_size = 10

[[apps]]
id = "plain-id"
key = "plain-key"
secret = "plain-secret"
"""

APPS = {"app-key": ("app-id", "app-secret"), "small-key": ("small-id", "small-secret"),
        "plain-key": ("plain-id", "plain-secret")}


@pytest.fixture
def two_nodes(redis_server, tmp_path, request):
    with cluster_nodes(redis_server, tmp_path, CONFIG, f"hist-{request.node.name}") as nodes:
        yield nodes


async def trigger(port: int, channel: str, data: str, key: str = "app-key") -> None:
    app_id, secret = APPS[key]
    async with asyncio.timeout(TIMEOUT):
        while True:
            status, body = await rest(
                f"http://127.0.0.1:{port}",
                "POST",
                f"/apps/{app_id}/events",
                {"name": "e", "channel": channel, "data": data},
                key=key,
                secret=secret,
            )
            if status == 200:
                return
            assert status == 503, body  # the cluster resyncs (after a flush): try again
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("attempt", range(24))
async def test_cut_off_on_a_recovers_all_fifty_on_b(two_nodes, attempt):
    (_, pa, _), (_, pb, _) = two_nodes
    channel = f"room-{attempt}"
    rec = Recorder(pa, channel)
    await rec.start()
    try:
        await trigger(pb, channel, "first")
        await rec.wait_for(1)
        rec.move_to(pb)
        rec.cut()
        for i in range(50):
            await trigger(pa if i % 2 else pb, channel, f"m{i}")
        await rec.wait_for(51, "recovered")
        await trigger(pa, channel, "live")
        await rec.wait_for(52)
        await asyncio.sleep(0.2)
        assert rec.data() == ["first", *(f"m{i}" for i in range(50)), "live"]
        assert [o for _, o in rec.events] == list(range(1, 53))
        assert rec.outcomes == ["recovered"]
    finally:
        await rec.close()


async def test_events_during_the_reconnect_are_neither_lost_nor_doubled(two_nodes):
    """Triggers keep coming on both nodes while the client is away and while it recovers."""
    (_, pa, _), (_, pb, _) = two_nodes
    rec = Recorder(pa, "room-busy")
    await rec.start()
    stop = asyncio.Event()
    sent: list[str] = []

    async def pump(port: int, tag: str) -> None:
        i = 0
        while not stop.is_set():
            await trigger(port, "room-busy", f"{tag}{i}")
            sent.append(f"{tag}{i}")
            i += 1
            await asyncio.sleep(0.005)

    try:
        pumps = [asyncio.create_task(pump(pa, "a")), asyncio.create_task(pump(pb, "b"))]
        for _ in range(3):  # cut off three times, coming back on the other node each time
            await asyncio.sleep(0.3)
            rec.move_to(pb if rec.client.url.find(f":{pa}/") > 0 else pa)
            rec.cut()
            await rec.wait_for(len(rec.events) + 1)
        stop.set()
        await asyncio.gather(*pumps)
        try:
            await rec.wait_for(len(sent))
        except TimeoutError:
            got = rec.data()
            missing = [x for x in sent if x not in got]
            raise AssertionError(
                f"{len(got)} of {len(sent)}; missing {missing[:20]}; outcomes {rec.outcomes}; "
                f"offsets {[o for _, o in rec.events][-30:]}"
            ) from None
        await asyncio.sleep(0.3)
        assert sorted(rec.data()) == sorted(sent)  # each once
        offsets = [o for _, o in rec.events]
        assert offsets == list(range(1, len(sent) + 1))  # in the store's order
        assert rec.outcomes == ["recovered"] * 3
    finally:
        stop.set()
        await rec.close()


async def test_recovery_across_a_graceful_restart(redis_server, tmp_path):
    cfg = cluster_config(redis_server, CONFIG, prefix="hist-restart")
    a = start_node(tmp_path, cfg)
    b = start_node(tmp_path, cfg)
    rec = Recorder(a[1], "room-restart")
    try:
        await rec.start()
        await trigger(b[1], "room-restart", "before")
        await rec.wait_for(1)
        rec.move_to(b[1])
        a[0].terminate()  # graceful: closes its sockets with 4200, the client comes back at once
        for i in range(20):
            await trigger(b[1], "room-restart", f"m{i}")
        stop_node(a[0])
        await rec.wait_for(21, "recovered")
        assert rec.data() == ["before", *(f"m{i}" for i in range(20))]
        assert rec.client.close_code == 4200
    finally:
        await rec.close()
        for p, _, _ in (a, b):
            stop_node(p)
    assert "Traceback" not in a[2].read_text() + b[2].read_text()


async def test_flushed_store_gives_a_new_epoch_and_recovery_failed(tmp_path):
    server = start_redis()
    nodes = []
    rec: Recorder | None = None
    try:
        cfg = cluster_config(server, CONFIG, prefix="hist-flush")
        nodes = [start_node(tmp_path, cfg) for _ in range(2)]
        (_, pa, _), (_, pb, _) = nodes
        rec = Recorder(pa, "room-flush")
        await rec.start()
        await trigger(pb, "room-flush", "old")
        await rec.wait_for(1)
        epoch = rec.client.channels["room-flush"].position
        rec.move_to(pb)
        rec.cut()
        client = aioredis.Redis(port=server.port)
        await client.flushall()
        await client.aclose()
        # the nodes refuse (503) until they resynced; the client may be back before "new" is
        # accepted (then it gets it live) or after (then it is not replayed)
        await trigger(pa, "room-flush", "new")
        await rec.wait_for(1, "failed")
        await trigger(pa, "room-flush", "after")
        await rec.wait_for(2)
        await asyncio.sleep(0.3)
        assert rec.outcomes == ["failed"]
        assert rec.data() in (["old", "after"], ["old", "new", "after"])
        position = rec.client.channels["room-flush"].position
        assert position is not None and epoch is not None and position[0] != epoch[0]
    finally:
        if rec is not None:
            await rec.close()
        for p, _, _ in nodes:
            stop_node(p)
        server.stop()


async def test_too_far_behind_gives_recovery_failed(two_nodes):
    (_, pa, _), (_, pb, _) = two_nodes
    rec = Recorder(pa, "news", key="small-key")
    await rec.start()
    try:
        rec.move_to(pb)
        rec.cut()
        for i in range(15):  # the app keeps 10
            await trigger(pa, "news", f"m{i}", key="small-key")
        await rec.wait_for(0, "failed")
        await trigger(pb, "news", "live", key="small-key")
        await rec.wait_for(1)
        assert rec.data() == ["live"] and rec.outcomes == ["failed"]
        assert rec.events[0][1] == 16
    finally:
        await rec.close()


async def test_pusher_clients_see_the_frames_they_see_without_history(two_nodes):
    """A V1 client on a channel with history, beside a recovering client, gets byte for byte
    what a V1 client gets on an app without history."""
    (_, pa, _), (_, pb, _) = two_nodes
    url = "ws://127.0.0.1:{}/app/{}?protocol=7&client=js&version=8.4.0"
    v1 = await Client.connect(url.format(pa, "app-key"))
    plain = await Client.connect(url.format(pb, "plain-key"))
    rec = Recorder(pb, "room-v1")
    await rec.start()
    try:
        await v1.subscribe("room-v1")
        await plain.subscribe("room-v1")
        frames: dict[str, list[str]] = {"v1": [], "plain": []}
        for i in range(10):
            await trigger(pa if i % 2 else pb, "room-v1", f'{{"n":{i}}}')
            await trigger(pa, "room-v1", f'{{"n":{i}}}', key="plain-key")
        for name, c in (("v1", v1), ("plain", plain)):
            for _ in range(10):
                msg = await c.ws.receive(timeout=TIMEOUT)
                frames[name].append(msg.data)
        assert frames["v1"] == frames["plain"]
        assert '"offset"' not in "".join(frames["v1"])
        await rec.wait_for(10)
        assert [o for _, o in rec.events] == list(range(1, 11))
    finally:
        await rec.close()
        await v1.close()
        await plain.close()


async def test_single_node_recovers_across_a_graceful_restart(tmp_path):
    """One node, no Redis: history_file keeps the history over a graceful restart."""
    port = free_port()
    cfg = CONFIG.replace("port = 0", f'port = {port}\nhistory_file = "{tmp_path}/history.json"')
    node = start_node(tmp_path, cfg)
    rec = Recorder(port, "room-single")
    try:
        await rec.start()
        await trigger(port, "room-single", "before")
        await rec.wait_for(1)
        stop_node(node[0])  # 4200: the client comes back at once, and again until it is up
        node = start_node(tmp_path, cfg)
        for i in range(5):
            await trigger(port, "room-single", f"m{i}")
        await rec.wait_for(6, "recovered")
        assert rec.data() == ["before", *(f"m{i}" for i in range(5))]
        assert [o for _, o in rec.events] == list(range(1, 7))
        assert "1 channel(s) read" in node[2].read_text()
    finally:
        await rec.close()
        stop_node(node[0])
    assert "Traceback" not in node[2].read_text()
    # a broken file is reported and the node starts with empty history
    (tmp_path / "history.json").write_text("{not json")
    node = start_node(tmp_path, cfg)
    stop_node(node[0])
    assert "channel history not read" in node[2].read_text()
