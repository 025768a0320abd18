"""Per-app and per-address limits, allowed origins and the protected /metrics, against real
server processes (one node, and two nodes sharing a Redis for the deployment-wide rates)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from tests.conftest import (
    TIMEOUT,
    cluster_config,
    free_port,
    running_server,
    start_node,
    stop_node,
)
from tests.helpers.client import Client, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis]

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
max_connections_per_ip = 5
metrics_token = "m-token"

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
max_backend_events_per_sec = 10
max_read_requests_per_sec = 5
max_client_events_per_sec = 3
client_event_rate = 100
max_channels_per_connection = 3
allowed_origins = ["https://*.example.com", "http://localhost:3000"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("limits"), CONFIG) as s:
        yield s


async def trigger(base: str, channel: str = "c") -> tuple[int, dict, dict]:
    from pushwire.protocol.signing import sign_rest

    body = orjson.dumps({"name": "e", "channel": channel, "data": "x"})
    path = "/apps/app-id/events"
    q = sign_rest("app-key", "app-secret", "POST", path, {}, body)
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + path, params=q, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, dict(r.headers), await r.json(content_type=None)


async def next_second() -> None:
    """Start at the beginning of a one-second window (the limits count per second)."""
    await asyncio.sleep(1.02 - time.time() % 1.0)


async def test_backend_events_per_second_gives_429_with_retry_after(srv):
    await next_second()
    results = [await trigger(srv.http) for _ in range(14)]
    statuses = [r[0] for r in results]
    assert statuses[:10] == [200] * 10
    assert statuses[10:] == [429] * 4
    status, headers, body = results[-1]
    assert "Rate limit exceeded" in body["error"] and 1 <= int(headers["Retry-After"]) <= 1
    await next_second()
    assert (await trigger(srv.http))[0] == 200  # the next window is open again


async def test_read_requests_per_second(srv):
    await next_second()
    statuses = [(await rest(srv.http, "GET", "/apps/app-id/channels"))[0] for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2


async def test_client_events_app_wide_then_disconnect(srv):
    a = await Client.connect(srv.ws_url())
    b = await Client.connect(srv.ws_url())
    try:
        await a.subscribe("private-chat")
        await b.subscribe("private-chat")
        await next_second()
        for i in range(3):
            await a.send({"event": "client-x", "channel": "private-chat", "data": i})
        for _ in range(3):
            await b.recv_event("client-x")
        await a.send({"event": "client-x", "channel": "private-chat", "data": 9})
        err = await a.recv_event("pusher:error")
        assert err["data"]["code"] == 4301 and "the app's client events" in err["data"]["message"]
        for _ in range(12):  # one that keeps at it is closed (4100: reconnect later)
            await a.send({"event": "client-x", "channel": "private-chat", "data": 9})
        while True:
            msg = await a.ws.receive(timeout=TIMEOUT)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                assert msg.data == 4100
                break
    finally:
        await a.close()
        await b.close()


async def test_channels_per_connection(srv):
    c = await Client.connect(srv.ws_url())
    try:
        for i in range(3):
            assert (await c.subscribe(f"ch-{i}"))["event"].endswith("subscription_succeeded")
        refused = await c.subscribe("ch-3")
        assert refused["event"] == "pusher:subscription_error"
        assert orjson.loads(refused["data"])["status"] == 429
        err = await c.recv_event("pusher:error")
        assert err["data"]["code"] == 4300
        await c.send({"event": "pusher:unsubscribe", "data": {"channel": "ch-0"}})
        assert (await c.subscribe("ch-3"))["event"].endswith("subscription_succeeded")
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://deep.sub.example.com", True),
        ("http://localhost:3000", True),
        ("http://evil.example", False),
        ("https://example.com.evil.net", False),
        ("http://app.example.com", False),
        (None, True),  # not a browser (server SDKs, mobile apps): no Origin to check
    ],
)
async def test_allowed_origins(srv, origin, allowed):
    session = aiohttp.ClientSession()
    headers = {"Origin": origin} if origin else {}
    try:
        ws = await session.ws_connect(srv.ws_url(), headers=headers)
        first = orjson.loads((await ws.receive(timeout=TIMEOUT)).data)
        if allowed:
            assert first["event"] == "pusher:connection_established"
        else:
            assert first == {
                "event": "pusher:error",
                "data": {"code": 4009, "message": first["data"]["message"]},
            }
            assert "Origin not allowed" in first["data"]["message"]
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4009
        await ws.close()
    finally:
        await session.close()


async def test_connections_per_address(srv):
    clients = [await Client.connect(srv.ws_url()) for _ in range(5)]
    try:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(srv.ws_url())
        first = orjson.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert first["event"] == "pusher:error" and first["data"]["code"] == 4100
        await ws.close()
        await session.close()
        await clients[0].close()
        await asyncio.sleep(0.2)
        clients[0] = await Client.connect(srv.ws_url())  # a slot was freed
    finally:
        for c in clients:
            await c.close()


async def test_metrics_need_the_token(srv):
    async with aiohttp.ClientSession() as s:
        async with s.get(srv.http + "/metrics") as r:
            assert r.status == 401
        async with s.get(srv.http + "/metrics", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with s.get(srv.http + "/metrics", headers={"Authorization": "Bearer m-token"}) as r:
            text = await r.text()
            assert r.status == 200
    assert 'pushwire_rate_limited_total{kind="backend_events"}' in text
    assert 'pushwire_handshakes_refused_total{reason="origin"}' in text


async def test_metrics_on_their_own_port(tmp_path):
    port = free_port()
    proc, http_port, _ = start_node(
        tmp_path,
        CONFIG.replace('metrics_token = "m-token"', f"metrics_port = {port}"),
    )
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                assert r.status == 404  # not on the public port
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200 and "pushwire_frames_in_total" in await r.text()
    finally:
        stop_node(proc)


async def test_backend_event_limit_is_deployment_wide(redis_server, tmp_path):
    cfg = cluster_config(redis_server, CONFIG, prefix="limits")
    nodes = [start_node(tmp_path, cfg) for _ in range(2)]
    try:
        bases = [f"http://127.0.0.1:{port}" for _, port, _ in nodes]
        await next_second()
        statuses = await asyncio.gather(*(trigger(bases[i % 2]) for i in range(30)))
        accepted = sum(1 for s, _, _ in statuses if s == 200)
        # one window of 10 across both nodes (two windows at most if the burst straddles one)
        assert 10 <= accepted <= 20, accepted
        assert all(s in (200, 429) for s, _, _ in statuses)
    finally:
        for p, _, _ in nodes:
            stop_node(p)
