"""Webhooks against a real HTTP receiver that checks every signature with the `pusher` PyPI
SDK's own helper (`validate_webhook`), for one node and for a 3-node cluster."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.conftest import cluster_config, start_node, start_server
from tests.helpers.client import Client
from tests.helpers.webhooks import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.node]


def config(receiver: Receiver, delay: float = 0.5, batch_ms: float = 0, extra: str = "") -> str:
    url = f"http://127.0.0.1:{receiver.port}/hook"
    flt = 'filter = { channel_name_starts_with = "private-only" }'
    hdr = 'headers = { X-Custom = "yes" }'
    return f"""
[server]
port = 0
webhook_retry_for = 30
{extra}

[[apps]]
id = "1"
key = "hook-key"
secret = "hook-secret"
webhook_delay = {delay}
webhook_batch_ms = {batch_ms}
webhooks = [ {{ url = "http://127.0.0.1:{receiver.port}/hook", headers = {{ X-Custom = "yes" }} }} ]

[[apps]]
id = "2"
key = "other-key"
secret = "other-secret"
webhooks = [ {{ url = "{url}", event_types = ["client_event"], {hdr}, {flt} }} ]
"""


KEYS = {"key": "hook-key", "secret": "hook-secret"}


async def connect(srv) -> Client:
    return await Client.connect(srv.ws_url("hook-key"))


async def test_every_kind_single_node(receiver, tmp_path):
    srv = start_server(tmp_path, config(receiver))
    try:
        a, b = await connect(srv), await connect(srv)
        await a.subscribe("presence-wh", "u1", **KEYS)
        occ = await receiver.wait_for(lambda e: e["name"] == "channel_occupied", "occupied")
        assert occ == {"name": "channel_occupied", "channel": "presence-wh"}
        added = await receiver.wait_for(lambda e: e["name"] == "member_added", "member_added")
        assert added == {"name": "member_added", "channel": "presence-wh", "user_id": "u1"}
        await b.subscribe("presence-wh", "u2", **KEYS)
        await a.send({"event": "client-typing", "channel": "presence-wh", "data": {"x": 1}})
        ce = await receiver.wait_for(lambda e: e["name"] == "client_event", "client_event")
        assert ce == {
            "name": "client_event",
            "channel": "presence-wh",
            "event": "client-typing",
            "data": '{"x":1}',
            "socket_id": a.socket_id,
            "user_id": "u1",
        }
        await a.subscribe("counted", **KEYS)
        sc = await receiver.wait_for(lambda e: e["name"] == "subscription_count", "count")
        assert sc == {"name": "subscription_count", "channel": "counted", "subscription_count": 1}
        # cache_miss: two subscribers at once, one webhook
        await asyncio.gather(a.subscribe("cache-wh", **KEYS), b.subscribe("cache-wh", **KEYS))
        await receiver.wait_for(lambda e: e["name"] == "cache_miss", "cache_miss")
        await b.close()
        removed = await receiver.wait_for(lambda e: e["name"] == "member_removed", "removed")
        assert removed["user_id"] == "u2"
        await a.close()
        await receiver.wait_for(
            lambda e: e["name"] == "channel_vacated" and e["channel"] == "presence-wh", "vacated"
        )
        await asyncio.sleep(0.3)
        assert receiver.names("cache-wh").count("cache_miss") == 1
        assert receiver.names("presence-wh").count("channel_occupied") == 1
        for post in receiver.posts:
            assert isinstance(post["time_ms"], int) and len(post["events"]) == 1
    finally:
        srv.stop()


async def test_other_app_filter_and_isolation(receiver, tmp_path):
    srv = start_server(tmp_path, config(receiver))
    try:
        c = await Client.connect(srv.ws_url("other-key"))
        d = await Client.connect(srv.ws_url("other-key"))
        for ch in ("private-only-1", "private-else"):
            await c.subscribe(ch, key="other-key", secret="other-secret")
            await d.subscribe(ch, key="other-key", secret="other-secret")
            await c.send({"event": "client-x", "channel": ch, "data": {}})
        await receiver.wait_for(lambda e: e.get("channel") == "private-only-1", "filtered")
        await asyncio.sleep(0.5)
        assert receiver.names() == ["client_event"]  # no occupied (not in event_types), no other
        await c.close(), await d.close()
    finally:
        srv.stop()


async def test_vacate_delay_suppresses_quick_reconnect(receiver, tmp_path):
    srv = start_server(tmp_path, config(receiver, delay=1.0))
    try:
        a = await connect(srv)
        await a.subscribe("presence-flap", "u1", **KEYS)
        await receiver.wait_for(lambda e: e["name"] == "member_added", "added")
        await a.close()
        b = await connect(srv)  # the same user is back within the delay
        await b.subscribe("presence-flap", "u1", **KEYS)
        await asyncio.sleep(1.8)
        assert receiver.names("presence-flap") == ["channel_occupied", "member_added"]
        await b.close()
        t0 = time.monotonic()
        await receiver.wait_for(lambda e: e["name"] == "channel_vacated", "vacated")
        assert time.monotonic() - t0 >= 0.8  # held back by the delay
    finally:
        srv.stop()


async def test_retries_until_the_receiver_recovers(receiver, tmp_path):
    receiver.fail = {"channel_occupied": 2}
    srv = start_server(tmp_path, config(receiver))
    try:
        a = await connect(srv)
        t0 = time.monotonic()
        await a.subscribe("retry-chan", **KEYS)
        await receiver.wait_for(lambda e: e["name"] == "channel_occupied", "occupied")
        assert receiver.attempts.count("channel_occupied") == 3
        assert time.monotonic() - t0 >= 2.5  # backoff 1 s then 2 s
        assert "retry 2" in srv.log_text()
        await a.close()
    finally:
        srv.stop()


async def test_batching(receiver, tmp_path):
    srv = start_server(tmp_path, config(receiver, batch_ms=300))
    try:
        a = await connect(srv)
        for i in range(5):
            await a.subscribe(f"batch-{i}", **KEYS)
        await receiver.wait_for(lambda e: e.get("channel") == "batch-4", "batch")
        await asyncio.sleep(0.5)
        assert len(receiver.events) >= 5
        assert len(receiver.posts) < len(receiver.events)
        assert max(len(p["events"]) for p in receiver.posts) >= 2
        await a.close()
    finally:
        srv.stop()


async def test_cluster_exactly_once(receiver, redis_server, tmp_path):
    srv = start_server(
        tmp_path, cluster_config(redis_server, config(receiver), prefix="whc"), nodes=3
    )
    try:
        clients = [await connect(srv) for _ in range(3)]  # one per node
        for c in clients:
            await c.subscribe("presence-cl", "same-user", **KEYS)
        await receiver.wait_for(lambda e: e["name"] == "member_added", "added")
        for c in clients:
            await c.close()
        await receiver.wait_for(lambda e: e["name"] == "channel_vacated", "vacated")
        await asyncio.sleep(1.0)
        assert sorted(receiver.names("presence-cl")) == [
            "channel_occupied",
            "channel_vacated",
            "member_added",
            "member_removed",
        ]
    finally:
        srv.stop()


async def test_cluster_queued_webhook_survives_node_death(receiver, redis_server, tmp_path):
    cfg = cluster_config(redis_server, config(receiver, delay=1.5), prefix="whd")
    a = start_node(tmp_path, cfg)
    b = start_node(tmp_path, cfg)
    try:
        c = await Client.connect(f"ws://127.0.0.1:{a[1]}/app/hook-key?protocol=7")
        await c.subscribe("dies", **KEYS)
        await receiver.wait_for(lambda e: e["name"] == "channel_occupied", "occupied")
        await c.close()  # channel_vacated is queued in Redis, due in 1.5 s
        await asyncio.sleep(0.3)
        a[0].send_signal(signal.SIGKILL)
        a[0].wait()
        await receiver.wait_for(lambda e: e["name"] == "channel_vacated", "vacated after kill")
        await asyncio.sleep(0.5)
        assert [n for n in receiver.names("dies") if n.startswith("channel_")] == [
            "channel_occupied",
            "channel_vacated",
        ]
    finally:
        for p, _, _ in (a, b):
            if p.poll() is None:
                p.terminate()
                p.wait()


async def test_webhooks_from_pusher_js_clients(receiver, tmp_path):
    """The official client drives the happenings; the SDK helper checks every signature."""
    from tests.compat.conftest import HERE as COMPAT
    from tests.compat.conftest import Driver

    srv = start_server(tmp_path, config(receiver))
    app = {"id": "1", "key": "hook-key", "secret": "hook-secret"}
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(COMPAT / "driver.js"),
        str(srv.ports[0]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=COMPAT,
    )
    js = Driver(proc, srv)
    try:
        await js.connect("a", app=app, presence={"user_id": "js-a"})
        await js.connect("b", app=app, presence={"user_id": "js-b"})
        await js.subscribe("a", "presence-js-wh")
        await js.subscribe("b", "presence-js-wh")
        await js.cmd(
            "trigger", name="a", channel="presence-js-wh", event="client-hi", data={"x": 1}
        )
        ce = await receiver.wait_for(lambda e: e["name"] == "client_event", "client_event")
        assert ce["user_id"] == "js-a" and ce["event"] == "client-hi"
        await js.cmd("disconnect", name="a")
        await js.cmd("disconnect", name="b")
        await receiver.wait_for(lambda e: e["name"] == "channel_vacated", "vacated")
        names = [n for n in receiver.names("presence-js-wh") if n != "client_event"]
        assert names == [
            "channel_occupied",
            "member_added",
            "member_added",
            "member_removed",
            "member_removed",
            "channel_vacated",
        ]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
        await js.reader
        srv.stop()
