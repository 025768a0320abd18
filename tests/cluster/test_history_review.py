"""Review of channel history and recovery over real Redis with two nodes, checked on the raw
WebSocket frames (the Python client drops an offset it has seen, which hides duplicates)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tests.cluster.test_history import CONFIG, trigger
from tests.conftest import TIMEOUT, cluster_nodes
from tests.server.helpers import Client


@pytest.fixture
def two_nodes(redis_server, tmp_path, request):
    with cluster_nodes(redis_server, tmp_path, CONFIG, f"hrev-{request.node.name}") as nodes:
        yield nodes


async def _frames(c: Client, until: asyncio.Event, out: list[dict[str, Any]]) -> None:
    while True:
        try:
            out.append(await c.recv(timeout=0.5))
        except TimeoutError:
            if until.is_set():
                return


async def test_recovering_sockets_get_each_event_once_on_the_wire(two_nodes):
    """Sockets recover on node B from offset 0 while triggers keep coming on both nodes:
    every socket's positioned frames are offsets 1..N, each once, in order."""
    (_, pa, _), (_, pb, _) = two_nodes
    channel = "room-wire"
    first = await Client.connect(f"ws://127.0.0.1:{pb}/app/app-key?protocol=7")
    await first.send(
        {"event": "pusher:subscribe", "data": {"channel": channel, "recover": {}}}
    )
    ok = await first.recv_event("pusher_internal:subscription_succeeded")
    epoch = ok["epoch"]
    await first.close()
    stop = asyncio.Event()

    async def pump(port: int, tag: str) -> None:
        i = 0
        while not stop.is_set():
            await asyncio.gather(
                *(trigger(port, channel, f"{tag}{i}-{k}") for k in range(4))
            )
            i += 1

    pumps = [asyncio.create_task(pump(pa, "a")), asyncio.create_task(pump(pb, "b"))]
    done = asyncio.Event()
    clients: list[tuple[Client, list[dict[str, Any]], asyncio.Task[None]]] = []
    try:
        await asyncio.sleep(0.3)
        for i in range(40):
            port = pb if i % 2 else pa
            c = await Client.connect(f"ws://127.0.0.1:{port}/app/app-key?protocol=7")
            await c.send(
                {
                    "event": "pusher:subscribe",
                    "data": {"channel": channel, "recover": {"epoch": epoch, "offset": 0}},
                }
            )
            frames: list[dict[str, Any]] = []
            clients.append((c, frames, asyncio.create_task(_frames(c, done, frames))))
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*pumps)
        done.set()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(t for _, _, t in clients))
        bad = []
        for _, frames, _ in clients:
            offs = [f["offset"] for f in frames if f.get("event") == "e"]
            okf = [f for f in frames if f["event"] == "pusher_internal:subscription_succeeded"]
            if not okf or okf[0].get("recovered") is not True:
                bad.append(("not recovered", okf))
                continue
            if offs != list(range(1, len(offs) + 1)):
                dups = sorted({o for o in offs if offs.count(o) > 1})
                gaps = sorted(set(range(1, max(offs) + 1)) - set(offs))
                bad.append(("dups", dups, "gaps", gaps, "n", len(offs)))
        assert not bad, f"{len(bad)} of {len(clients)} sockets: {bad[:4]}"
    finally:
        stop.set()
        for c, _, t in clients:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
            await c.close()


async def test_v1_socket_on_the_publishing_node_while_its_bus_reconnects(tmp_path):
    """V1 sockets get what they got without history. One node over Redis; its own pub/sub
    connection is dropped (the command pool is fine) and a trigger is made at once, to an app
    with history and to one without: the node's V1 socket gets the event in both cases."""
    import redis.asyncio as aioredis

    from tests.conftest import start_redis
    from tests.server.helpers import rest

    r = start_redis()
    try:
        with cluster_nodes(r, tmp_path, CONFIG, "hrev-pd", n=1) as nodes:
            (_, pa, _) = nodes[0]
            url = f"ws://127.0.0.1:{pa}/app/"
            hist = await Client.connect(url + "app-key?protocol=7")
            plain = await Client.connect(url + "plain-key?protocol=7")
            await hist.subscribe("room-pd", key="app-key", secret="app-secret")
            await plain.subscribe("room-pd", key="plain-key", secret="plain-secret")
            cli = aioredis.Redis(port=r.port)
            statuses = {}
            try:
                for attempt in range(20):
                    await cli.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                    for key, app_id, secret in (
                        ("app-key", "app-id", "app-secret"),
                        ("plain-key", "plain-id", "plain-secret"),
                    ):
                        status, _ = await rest(
                            f"http://127.0.0.1:{pa}",
                            "POST",
                            f"/apps/{app_id}/events",
                            {"name": "e", "channel": "room-pd", "data": f"x{attempt}"},
                            key=key,
                            secret=secret,
                        )
                        statuses[key] = status
                    if statuses["app-key"] != 200:
                        break
                    await asyncio.sleep(1.0)
            finally:
                await cli.aclose()
            plain_got = []
            with contextlib.suppress(TimeoutError):
                while True:
                    ev = await plain.recv(timeout=2)
                    if ev["event"] == "e":
                        plain_got.append(ev["data"])
            hist_got = []
            with contextlib.suppress(TimeoutError):
                while True:
                    ev = await hist.recv(timeout=1)
                    if ev["event"] == "e":
                        hist_got.append(ev["data"])
            await hist.close()
            await plain.close()
            # a V1 socket on the publishing node gets the event as on the app without history
            # (the caller may hear 503 where the store could not confirm the echo)
            assert f"x{attempt}" in plain_got and f"x{attempt}" in hist_got, (
                attempt,
                statuses,
                hist_got[-3:],
                plain_got[-3:],
            )
            assert statuses["plain-key"] == 200 and statuses["app-key"] in (200, 503)
    finally:
        r.stop()


async def test_recover_empty_leaves_redis_keys_for_history_ttl_only(tmp_path):
    """A client that subscribes with 'recover': {} to channels nobody publishes on creates
    their epochs (p:histm:*); they expire after history_ttl, not after the day a published
    history's epoch is kept."""
    import redis.asyncio as aioredis

    from tests.conftest import start_redis

    r = start_redis()
    try:
        with cluster_nodes(r, tmp_path, CONFIG, "hrev-keys", n=1) as nodes:
            (_, pa, _) = nodes[0]
            for i in range(3):
                c = await Client.connect(f"ws://127.0.0.1:{pa}/app/app-key?protocol=7")
                for j in range(100):
                    await c.send(
                        {
                            "event": "pusher:subscribe",
                            "data": {"channel": f"junk-{i}-{j}", "recover": {}},
                        }
                    )
                    await c.recv_event("pusher_internal:subscription_succeeded")
                await c.close()
            await asyncio.sleep(0.5)
            cli = aioredis.Redis(port=r.port)
            try:
                keys = [k async for k in cli.scan_iter(match="*histm*", count=1000)]
                ttl = await cli.pttl(keys[0]) if keys else None
            finally:
                await cli.aclose()
            assert len(keys) == 300 and ttl is not None and 0 < ttl <= 300_000, (len(keys), ttl)
    finally:
        r.stop()
