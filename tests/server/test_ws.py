"""The WebSocket endpoint over real sockets against a real `pushwire serve` process."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, start_server
from tests.helpers.client import Client, data, nothing_before_marker, rest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def expect_close(url: str, code: int) -> dict:
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        msg = await ws.receive(timeout=TIMEOUT)
        ev = orjson.loads(msg.data)
        assert ev["event"] == "pusher:error"
        assert data(ev)["code"] == code
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == code
        return data(ev)


@pytest.mark.parametrize(
    ("key", "query", "code"),
    [
        ("nope", "protocol=7", 4001),
        ("off-key", "protocol=7", 4003),
        ("app-key", "client=x", 4008),
        ("app-key", "protocol=3", 4007),
        ("app-key", "protocol=7&version=%25%25bad", 4006),
    ],
)
async def test_handshake_errors(server, key, query, code):
    err = await expect_close(server.ws_url(key, query), code)
    assert err["message"]


async def test_connection_established_and_ping(server):
    c = await Client.connect(server.ws_url())
    assert c.socket_id.count(".") == 1 and c.socket_id.replace(".", "").isdigit()
    await c.send({"event": "pusher:ping", "data": {}})
    assert await c.recv() == {"event": "pusher:pong", "data": {}}
    await c.ws.ping(b"x")  # WebSocket-level ping is answered by a pong frame (autoping)
    await c.close()


async def test_connection_quota_4004(server):
    a = await Client.connect(server.ws_url("quota-key"))
    b = await Client.connect(server.ws_url("quota-key"))
    await expect_close(server.ws_url("quota-key"), 4004)
    await a.close()
    await asyncio.sleep(0.1)
    c = await Client.connect(server.ws_url("quota-key"))  # a slot is free again
    await b.close(), await c.close()


async def test_malformed_frames_get_errors_and_others_unaffected(server):
    bad, good = await Client.connect(server.ws_url()), await Client.connect(server.ws_url())
    await good.subscribe("mal-chan")
    for frame in [
        "{not json",
        "[]",
        '{"event": 1}',
        '{"event":"pusher:subscribe","data":3}',
        '{"event":"what"}',
    ]:
        await bad.send(frame)
        assert data(await bad.recv())["code"] == 4300
    await bad.ws.send_bytes(b"\x00\x01")
    err = data(await bad.recv())
    assert err == {"code": 4300, "message": "Binary frames are not supported"}
    await bad.send({"event": "pusher:subscribe", "data": {"channel": "bad name!"}})
    assert (await bad.recv())["event"] == "pusher:subscription_error"
    assert data(await bad.recv())["code"] == 4305
    status, _ = await rest(
        server.http,
        "POST",
        "/apps/app-id/events",
        {"name": "e", "channel": "mal-chan", "data": "ok"},
    )
    assert status == 200
    assert await good.recv() == {"event": "e", "channel": "mal-chan", "data": "ok"}
    await bad.close(), await good.close()


async def test_oversized_frames(server):
    c = await Client.connect(server.ws_url())
    await c.subscribe("private-big")
    await c.send({"event": "client-x", "channel": "private-big", "data": "x" * 20000})
    assert data(await c.recv())["code"] == 4303
    await c.send("x" * 300_000)  # beyond max_frame_size: closed with 1009
    msg = await c.ws.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
    await c.close()


async def test_presence_over_sockets(server):
    a, b = await Client.connect(server.ws_url()), await Client.connect(server.ws_url())
    ok = await a.subscribe("presence-room", "1", {"name": "A"})
    assert data(ok)["presence"]["ids"] == ["1"]
    ok = await b.subscribe("presence-room", 2, {"name": "B"})
    assert data(ok)["presence"]["count"] == 2
    added = await a.recv()
    assert added == {
        "event": "pusher_internal:member_added",
        "channel": "presence-room",
        "data": '{"user_id":"2","user_info":{"name":"B"}}',
    }
    status, users = await rest(server.http, "GET", "/apps/app-id/channels/presence-room/users")
    assert status == 200 and users == {"users": [{"id": "1"}, {"id": "2"}]}
    await b.close()
    removed = await a.recv()
    assert removed["event"] == "pusher_internal:member_removed"
    assert data(removed) == {"user_id": "2"}
    await a.close()


async def test_presence_limit_per_app(server):
    cs = [await Client.connect(server.ws_url("quota-key")) for _ in range(2)]
    ok = await cs[0].subscribe("presence-x", "1", key="quota-key", secret="quota-secret")
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    err = await cs[1].subscribe("presence-x", "2", key="quota-key", secret="quota-secret")
    assert err["event"] == "pusher:subscription_error" and err["channel"] == "presence-x"
    assert data(err)["status"] == 4100
    assert data(await cs[1].recv())["code"] == 4100
    # the same user on another connection is not a new member: accepted
    ok = await cs[1].subscribe("presence-x", "1", key="quota-key", secret="quota-secret")
    assert data(ok)["presence"]["ids"] == ["1"]
    for c in cs:
        await c.close()


async def test_client_events_over_sockets(server):
    a, b = await Client.connect(server.ws_url()), await Client.connect(server.ws_url())
    await a.subscribe("private-chat"), await b.subscribe("private-chat")
    await a.send({"event": "client-typing", "channel": "private-chat", "data": {"t": 1}})
    assert await b.recv() == {"event": "client-typing", "channel": "private-chat", "data": {"t": 1}}
    await nothing_before_marker(server.http, "private-chat", a, b)  # no echo to a, once to b
    await a.subscribe("public-x")
    await a.send({"event": "client-typing", "channel": "public-x", "data": {}})
    assert data(await a.recv())["code"] == 4304
    await a.close(), await b.close()


async def test_client_events_disabled_app(server):
    c = await Client.connect(server.ws_url("noclient-key"))
    await c.subscribe("private-x", key="noclient-key", secret="noclient-secret")
    await c.send({"event": "client-x", "channel": "private-x", "data": {}})
    err = data(await c.recv())
    assert err["code"] == 4304 and "not enabled" in err["message"]
    await c.close()


async def test_heartbeat_server_pings_then_4201(tmp_path):
    srv = start_server(
        tmp_path,
        """
        [server]
        port = 0
        activity_timeout = 1
        pong_timeout = 1
    """,
    )
    try:
        c = await Client.connect(srv.ws_url())
        ping = await c.recv(timeout=5)
        assert ping == {"event": "pusher:ping", "data": {}}
        # answer once: the connection stays up
        await c.send({"event": "pusher:pong", "data": {}})
        ping = await c.recv(timeout=5)
        assert ping["event"] == "pusher:ping"
        # now stay silent: error 4201 then close 4201
        err = await c.recv(timeout=5)
        assert data(err)["code"] == 4201
        msg = await c.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4201
        await c.close()
    finally:
        srv.stop()


async def test_slow_consumer_is_closed_and_others_get_everything(tmp_path):
    srv = start_server(
        tmp_path,
        """
        [server]
        port = 0
        max_pending_bytes = 65536
    """,
    )
    try:
        good = await Client.connect(srv.ws_url())
        await good.subscribe("firehose")
        # a raw client that completes the handshake and subscribes, then never reads again
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(
            b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        payload = b'{"event":"pusher:subscribe","data":{"channel":"firehose"}}'
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)
        await asyncio.sleep(0.3)
        status, stats = await rest(
            srv.http, "GET", "/apps/app-id/channels/firehose", params={"info": "subscription_count"}
        )
        assert stats["subscription_count"] == 2
        n = 800
        big = "x" * 9000

        async def read_all() -> list[int]:
            return [int((await good.recv())["data"].split(":")[0]) for _ in range(n)]

        reader = asyncio.create_task(read_all())
        for i in range(n):
            status, _ = await rest(
                srv.http,
                "POST",
                "/apps/app-id/events",
                {"name": "e", "channel": "firehose", "data": f"{i}:{big}"},
            )
            assert status == 200
        assert await reader == list(range(n))
        for _ in range(int(TIMEOUT * 10)):  # the stalled socket is aborted after 2 s
            status, stats = await rest(
                srv.http,
                "GET",
                "/apps/app-id/channels/firehose",
                params={"info": "subscription_count"},
            )
            if stats["subscription_count"] == 1:
                break
            await asyncio.sleep(0.1)
        assert stats["subscription_count"] == 1
        assert "not reading" in srv.log.read_text()
        sock.close()
        await good.close()
    finally:
        srv.stop()
