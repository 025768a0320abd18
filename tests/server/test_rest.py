"""The REST API over HTTP against a real server: every success shape and error status."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.helpers.client import Client, data, nothing_before_marker, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def test_trigger_reaches_subscribers_and_excludes_socket(server):
    a, b = await Client.connect(server.ws_url()), await Client.connect(server.ws_url())
    await a.subscribe("t-chan"), await b.subscribe("t-chan")
    status, body = await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "ev", "channels": ["t-chan", "other"], "data": "hi", "socket_id": a.socket_id},
    )
    assert (status, body) == (200, {})
    assert await b.recv() == {"event": "ev", "channel": "t-chan", "data": "hi"}
    await nothing_before_marker(server.http, "t-chan", a, b)  # a excluded, b once
    await a.close(), await b.close()


async def test_trigger_info(server):
    a = await Client.connect(server.ws_url())
    await a.subscribe("presence-info", "u1")
    await a.subscribe("info-pub")
    status, body = await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {
            "name": "e",
            "channels": ["presence-info", "info-pub", "empty"],
            "data": "x",
            "info": "user_count,subscription_count",
        },
    )
    assert status == 200
    assert body == {
        "channels": {
            "presence-info": {"user_count": 1, "subscription_count": 1},
            "info-pub": {"subscription_count": 1},
            "empty": {"subscription_count": 0},
        }
    }
    await a.close()


async def test_batch(server):
    a = await Client.connect(server.ws_url())
    await a.subscribe("b1")
    status, body = await rest(
        server.http,
        "POST",
        "/apps/app-id/batch_events",
        {
            "batch": [
                {"name": "x", "channel": "b1", "data": "1"},
                {"name": "y", "channel": "b1", "data": "2", "info": "subscription_count"},
            ]
        },
    )
    assert status == 200
    assert body == {"batch": [{}, {"subscription_count": 1}]}
    assert (await a.recv())["data"] == "1"
    assert (await a.recv())["data"] == "2"
    await a.close()


async def test_channels_and_channel_info(server):
    a = await Client.connect(server.ws_url())
    await a.subscribe("presence-lst", "u1")
    await a.subscribe("lst-public")
    status, body = await rest(
        server.http,
        "GET",
        "/apps/app-id/channels",
        params={"filter_by_prefix": "presence-lst", "info": "user_count"},
    )
    assert (status, body) == (200, {"channels": {"presence-lst": {"user_count": 1}}})
    status, body = await rest(
        server.http, "GET", "/apps/app-id/channels", params={"filter_by_prefix": "lst-"}
    )
    assert (status, body) == (200, {"channels": {"lst-public": {}}})
    status, body = await rest(
        server.http,
        "GET",
        "/apps/app-id/channels/presence-lst",
        params={"info": "user_count,subscription_count"},
    )
    assert body == {"occupied": True, "user_count": 1, "subscription_count": 1}
    status, body = await rest(server.http, "GET", "/apps/app-id/channels/nobody-here")
    assert (status, body) == (200, {"occupied": False})
    await a.close()


async def test_cache_channel_info(server):
    await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "c", "channel": "cache-info", "data": "last"},
    )
    status, body = await rest(
        server.http, "GET", "/apps/app-id/channels/cache-info", params={"info": "cache"}
    )
    assert status == 200 and body["cache"]["data"] == "last"
    assert 0 < body["cache"]["ttl"] <= 1800
    c = await Client.connect(server.ws_url())
    await c.subscribe("cache-info")
    assert await c.recv() == {"event": "c", "channel": "cache-info", "data": "last"}
    await c.close()


async def test_terminate_connections(server):
    from pushwire.protocol.signing import sign_auth, user_string_to_sign

    c = await Client.connect(server.ws_url())
    ud = '{"id":"term-user"}'
    await c.send(
        {
            "event": "pusher:signin",
            "data": {
                "user_data": ud,
                "auth": sign_auth("app-key", "app-secret", user_string_to_sign(c.socket_id, ud)),
            },
        }
    )
    assert (await c.recv())["event"] == "pusher:signin_success"
    status, body = await rest(
        server.http, "POST", "/apps/app-id/users/term-user/terminate_connections", {}
    )
    assert (status, body) == (200, {})
    assert data(await c.recv())["code"] == 4009
    msg = await c.ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4009
    await c.close()


BAD = [
    # (method, path, body, params, expected status, message fragment)
    ("POST", "/apps/app-id/events", {"channel": "a", "data": "x"}, None, 400, "'name'"),
    ("POST", "/apps/app-id/events", {"name": "e", "data": "x"}, None, 400, "'channel'"),
    (
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "a b", "data": "x"},
        None,
        400,
        "Invalid channel name",
    ),
    (
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channels": [f"c{i}" for i in range(101)], "data": "x"},
        None,
        400,
        "more than 100 channels",
    ),
    (
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "a", "data": "x" * 10241},
        None,
        413,
        "larger than 10240",
    ),
    (
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "a", "data": "x", "socket_id": "abc"},
        None,
        400,
        "socket_id",
    ),
    (
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "a", "data": "x", "info": "bogus"},
        None,
        400,
        "unknown info",
    ),
    (
        "POST",
        "/apps/app-id/batch_events",
        {"batch": [{"name": "e", "channel": "a", "data": "x"}] * 11},
        None,
        400,
        "more than 10",
    ),
    ("POST", "/apps/app-id/batch_events", {"nope": 1}, None, 400, "batch"),
    ("GET", "/apps/app-id/channels", None, {"info": "user_count"}, 400, "presence-"),
    ("GET", "/apps/app-id/channels/public-one", None, {"info": "user_count"}, 400, "presence"),
    ("GET", "/apps/app-id/channels/public-one/users", None, None, 400, "presence"),
    ("GET", "/apps/nope/channels", None, None, 404, "Unknown app"),
    ("GET", "/apps/1004/channels", None, None, 403, "disabled"),
]


@pytest.mark.parametrize(("method", "path", "body", "params", "status", "fragment"), BAD)
async def test_rest_errors(server, method, path, body, params, status, fragment):
    key, secret = ("off-key", "off-secret") if "1004" in path else ("app-key", "app-secret")
    got, answer = await rest(server.http, method, path, body, params, key=key, secret=secret)
    assert got == status
    assert fragment in answer["error"]


async def test_invalid_json_body(server):
    status, answer = await rest(server.http, "POST", "/apps/app-id/events", raw_body=b"{nope")
    assert status == 400 and "JSON" in answer["error"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"secret": "wrong"}, "Invalid signature"),
        ({"key": "other"}, "auth_key"),
        ({"timestamp": int(time.time()) - 601}, "Timestamp expired"),
        ({"sign_path": "/apps/app-id/batch_events"}, "Invalid signature"),
    ],
)
async def test_rest_auth_failures_are_401(server, kwargs, fragment):
    status, answer = await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "a", "data": "x"},
        **kwargs,
    )
    assert status == 401
    assert fragment in answer["error"]


async def test_unsigned_and_tampered_body(server):
    async with aiohttp.ClientSession() as s:
        async with s.post(server.http + "/apps/app-id/events", data=b"{}") as r:
            assert r.status == 401
        from pushwire.protocol.signing import sign_rest

        q = sign_rest("app-key", "app-secret", "POST", "/apps/app-id/events", {}, b'{"a":1}')
        async with s.post(server.http + "/apps/app-id/events", params=q, data=b'{"a":2}') as r:
            assert r.status == 401
            assert "body_md5" in (await r.json())["error"]


async def test_health(server):
    async with aiohttp.ClientSession() as s, s.get(server.http + "/up") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
