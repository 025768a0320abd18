"""Operations: metrics, readiness, JSON logs, and a graceful stop under load."""

from __future__ import annotations

import asyncio
import re
import signal

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, start_server
from tests.helpers.client import Client, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def test_metrics_and_health(server):
    c = await Client.connect(server.ws_url())
    await c.subscribe("metrics-chan")
    await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "metrics-chan", "data": "x"},
    )
    await c.recv()
    async with aiohttp.ClientSession() as s:
        text = ""
        for port in server.ports:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text += await r.text()
        async with s.get(server.http + "/ready") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
    assert "# TYPE pushwire_frames_in_total counter" in text
    assert 'pushwire_connections{app="app-id"}' in text
    assert 'pushwire_rest_requests_total{route="/apps/{app_id}/events",status="200"}' in text
    assert "pushwire_cluster_bus_up 1" in text
    assert "pushwire_webhook_queue_depth 0" in text
    if 'role="cluster"' in text:  # over a Redis Cluster: its 3 shards' primaries
        shards = ",".join([r"127.0.0.1:\d+"] * 3)
        reported = [line for line in text.splitlines() if "pushwire_redis_primary{" in line]
        found = re.search(rf'pushwire_redis_primary{{address="{shards}",role="cluster"}} 1', text)
        assert found, reported
        assert 'pushwire_redis_failovers_total{role="cluster"} 0' in text
    elif len(server.ports) > 1:  # a cluster: the primary of each role, no failover yet
        for role in ("bus", "state"):
            primary = rf'pushwire_redis_primary{{address="127.0.0.1:\d+",role="{role}"}} 1'
            assert re.search(primary, text)
            assert f'pushwire_redis_failovers_total{{role="{role}"}} 0' in text
    await c.close()


async def test_graceful_stop_under_load_tells_every_client(tmp_path):
    srv = start_server(tmp_path, '[server]\nport = 0\nlog_format = "json"\n')
    try:
        clients = [await Client.connect(srv.ws_url()) for _ in range(40)]
        for c in clients:
            await c.subscribe("load")
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    await rest(
                        srv.http,
                        "POST",
                        "/apps/app-id/events",
                        {"name": "tick", "channel": "load", "data": "x"},
                    )
                except aiohttp.ClientError:
                    return
                await asyncio.sleep(0.005)

        producer = asyncio.create_task(load())
        await asyncio.sleep(0.5)
        srv.procs[0].send_signal(signal.SIGTERM)

        codes = await asyncio.gather(*(c.told_to_go() for c in clients))
        stop.set()
        await producer
        assert codes == [4200] * len(clients)  # every client was told to reconnect
        assert srv.procs[0].wait(TIMEOUT) == 0
        lines = [orjson.loads(line) for line in srv.log.read_text().splitlines() if line]
        assert any(line["message"] == "shutting down" for line in lines)  # JSON logs
        for c in clients:
            await c.session.close()
    finally:
        srv.stop()


async def test_dashboard_api_needs_the_secret_and_browser_client_is_served(server):
    async with aiohttp.ClientSession() as s:
        async with s.get(server.http + "/pushwire.js") as r:
            assert r.status == 200 and "application/javascript" in r.headers["Content-Type"]
            assert "function Pushwire" in await r.text()
        async with s.get(server.http + "/dashboard") as r:
            assert r.status == 200 and "Pushwire dashboard" in await r.text()
        url = server.http + "/dashboard/api/stats?app=app-id"
        async with s.get(url) as r:
            assert r.status == 401
        async with s.get(url, headers={"Authorization": "Bearer py-secret"}) as r:
            assert r.status == 401  # another app's secret
        async with s.get(
            server.http + "/dashboard/api/stats?app=nope", headers={"Authorization": "Bearer x"}
        ) as r:
            assert r.status == 404
        async with s.get(url, headers={"Authorization": "Bearer app-secret"}) as r:
            assert r.status == 401  # the secret only buys a session token
        session_url = server.http + "/dashboard/api/session?app=app-id"
        async with s.post(session_url, headers={"Authorization": "Bearer py-secret"}) as r:
            assert r.status == 401
        async with s.post(session_url, headers={"Authorization": "Bearer app-secret"}) as r:
            assert r.status == 200
            body = await r.json()
            session = body["session"]
            assert body["expires_in"] == 600 and "app-secret" not in session
        auth = {"Authorization": f"Bearer {session}"}
        async with s.get(url, headers=auth) as r:
            assert r.status == 200 and "connections" in await r.json()
        forged = session[:-4] + ("0000" if not session.endswith("0000") else "1111")
        async with s.get(url, headers={"Authorization": f"Bearer {forged}"}) as r:
            assert r.status == 401
        async with s.get(
            server.http + "/dashboard/api/stats?app=1001", headers=auth
        ) as r:
            assert r.status == 401  # a session token is for its own app only
        async with s.post(
            server.http + "/dashboard/api/trigger",
            headers=auth,
            data=b'{"app":"app-id","channel":"bad name","event":"e"}',
        ) as r:
            assert r.status == 400
        base = server.ws_url().split("/app/")[0]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            # the secret in a URL is not accepted
            await s.ws_connect(base + "/dashboard/api/live?app=app-id&token=app-secret")
        assert refused.value.status == 401
        async with s.ws_connect(
            base + f"/dashboard/api/live?app=app-id&session={session}"
        ) as ws:
            assert not ws.closed
