"""The WebSocket transport (transport/rawws.py) at the frame level, over real sockets against
a real server: fragmentation, control frames, close codes, failing at once, limits, upgrades
that come through aiohttp, and every other request handed to aiohttp on the same
connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import struct
import subprocess
import time

import aiohttp
import orjson
import pytest

from pushwire.config import ConfigError, load
from tests.conftest import TIMEOUT, running_server, start_server
from tests.helpers.client import Client
from tests.helpers.rest import EVENT, Signed, later
from tests.helpers.wsraw import Raw, frame, opened, upgrade_request

pytestmark = pytest.mark.slow

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
handshake_timeout = 1.0
max_frame_size = 1000

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("rawws"), CONFIG) as s:
        yield s


async def test_fragments_with_a_ping_between_them(srv):
    c = await opened(srv.port)
    msg = b'{"event":"pusher:ping","data":{}}'
    c.send(frame(1, msg[:5], fin=False))
    c.send(frame(9, b"are you there"))
    c.send(frame(0, msg[5:12], fin=False))
    c.send(frame(0, msg[12:]))
    assert await c.recv() == (10, b"are you there")  # the pong comes first
    assert (await c.event())["event"] == "pusher:pong"
    await c.aclose()


async def test_messages_are_handled_in_order(srv):
    c = await opened(srv.port)
    names = [f"order-{i}" for i in range(40)]
    c.send(
        b"".join(
            frame(1, orjson.dumps({"event": "pusher:subscribe", "data": {"channel": n}}))
            for n in names
        )
    )
    got = [(await c.event())["channel"] for _ in names]
    assert got == names
    await c.aclose()


async def test_binary_frame_is_a_pusher_error(srv):
    c = await opened(srv.port)
    c.send(frame(2, b"\x00\x01"))
    ev = await c.event()
    assert ev["event"] == "pusher:error" and orjson.loads(orjson.dumps(ev["data"]))["code"] == 4300
    await c.aclose()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(1, b'{"event":"x"}', mask=False), 1002),  # client frames must be masked
        (frame(1, b"\xff\xfe not utf-8"), 1007),
        (frame(0, b"x"), 1002),  # a continuation of nothing
        (frame(1, b"a", fin=False) + frame(1, b"b"), 1002),  # a new message mid-message
        (frame(5, b""), 1002),  # unknown opcode
        (frame(9, b"x" * 126), 1002),  # control frames are short
        (bytes((0xC1, 0x80)) + b"\0\0\0\0", 1002),  # RSV1 without an extension
        (frame(1, b"x" * 1001), 1009),  # max_frame_size = 1000
        (frame(1, b"x" * 600, fin=False) + frame(0, b"x" * 600), 1009),  # the message counts
    ],
)
async def test_protocol_errors_close_with_their_code(srv, data, code):
    c = await opened(srv.port)
    c.send(data)
    assert await c.close_code() == code
    c.send(frame(8, struct.pack("!H", 1000)))  # our side of the closing handshake
    assert await c.eof()
    await c.aclose()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(1, b'{"event":"x"}', mask=False), 1002),
        (bytes((0xC1, 0x80)) + b"\0\0\0\0", 1002),
        (frame(1, b"\xff\xfe not utf-8"), 1007),
        (frame(1, b"x" * 300_000)[:70_000], 1009),  # announced, partly sent
        # a 64-bit length with its most significant bit set (RFC 6455 5.2)
        (bytes((0x81, 0xFF)) + (1 << 63 | 5).to_bytes(8, "big") + b"\0\0\0\0", 1002),
    ],
    ids=["unmasked", "rsv", "utf8", "too-big", "length-msb"],
)
async def test_a_failed_connection_is_closed_at_once(srv, data, code):
    """RFC 6455 7.1.7: after the close frame, stop reading and close the TCP connection;
    no waiting for the peer's close frame (a client that never sends one held the
    connection for 5 s)."""
    c = await opened(srv.port)
    try:
        c.send(data)
        t0 = time.monotonic()
        assert await c.close_code() == code
        assert await c.eof(1.0), "the connection is still open 1 s after the close frame"
        assert time.monotonic() - t0 < 1.0
    finally:
        await c.aclose()


async def test_oversized_frame_is_refused_before_its_payload(srv):
    c = await opened(srv.port)
    c.send(frame(1, b"x" * 300_000))  # the server answers 1009 and reads on past it
    assert await c.close_code() == 1009
    c.send(frame(8, struct.pack("!H", 1000)))
    assert await c.eof()
    await c.aclose()


async def test_exactly_max_frame_size_is_accepted(srv):
    c = await opened(srv.port)
    c.send(frame(1, b" " * 1000))
    ev = await c.event()
    assert ev["event"] == "pusher:error"  # not JSON, but not too large either
    await c.aclose()


async def test_client_close_is_echoed_and_the_socket_closed(srv):
    c = await opened(srv.port)
    c.send(frame(8, struct.pack("!H", 4321) + b"bye"))
    assert await c.close_code() == 4321
    assert await c.eof()
    await c.aclose()
    c = await opened(srv.port)
    c.send(frame(8, struct.pack("!H", 1005)))  # not a code one may send
    assert await c.close_code() == 1002
    await c.aclose()


async def test_refused_handshake_waits_for_the_close_reply(srv):
    c = await Raw.connect(srv.port, "/app/nope?protocol=7")
    assert (await c.event())["event"] == "pusher:error"
    assert await c.close_code() == 4001
    c.send(frame(8, struct.pack("!H", 4001)))
    assert await c.eof()
    await c.aclose()


async def test_frames_sent_with_the_handshake_are_read(srv):
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        + frame(1, b'{"event":"pusher:ping","data":{}}')
    )
    await reader.readuntil(b"\r\n\r\n")
    c = Raw(reader, writer)
    assert (await c.event())["event"] == "pusher:connection_established"
    assert (await c.event())["event"] == "pusher:pong"
    await c.aclose()


async def test_other_requests_are_aiohttps_on_the_same_port(srv):
    async with aiohttp.ClientSession() as s:
        async with s.get(srv.http + "/up") as r:
            assert r.status == 200
        async with s.get(srv.http + "/app/app-key?protocol=7") as r:  # not an upgrade
            assert r.status == 400
            assert "only speaks WebSocket" in (await r.json())["error"]
        async with s.get(srv.http + "/nothing-here") as r:
            assert r.status == 404
        # a keep-alive connection that served a request can still upgrade (through aiohttp)
        async with s.get(srv.http + "/up") as r:
            await r.read()
        ws = await s.ws_connect(srv.http + "/app/app-key?protocol=7")
        msg = await ws.receive(timeout=TIMEOUT)
        assert "connection_established" in msg.data
        await ws.close()


async def test_pipelined_requests_are_all_answered(srv):
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\nGET /up HTTP/1.1\r\nHost: x\r\n\r\n")
    body = b""
    async with asyncio.timeout(TIMEOUT):
        while body.count(b"HTTP/1.1 200") < 2:
            body += await reader.read(4096)
    writer.close()
    await writer.wait_closed()


async def test_malformed_request_gets_400_at_once(srv):
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(b"\x16\x03\x01\x02\x00garbage")  # e.g. TLS spoken to a plain port
        async with asyncio.timeout(0.9):  # before the handshake timeout
            head = await reader.read(4096)
        assert b" 400 " in head.split(b"\r\n")[0], head
    finally:
        writer.close()
        await writer.wait_closed()


async def test_partial_head_is_closed_after_the_handshake_timeout(srv):
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n")
    async with asyncio.timeout(3.0):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_library_client_round_trip(srv):
    c = await Client.connect(srv.ws_url())
    ev = await c.subscribe("plain")
    assert ev["event"] == "pusher_internal:subscription_succeeded"
    await c.close()


def test_ws_transport_aiohttp_is_refused_with_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nws_transport = "aiohttp"\n')
    with pytest.raises(ConfigError, match=r"ws_transport' must be raw .*removed"):
        load(str(cfg), env={})
    with pytest.raises(ConfigError, match="ws_transport"):
        load(None, env={"PUSHWIRE_WS_TRANSPORT": "aiohttp"})
    cfg.write_text('[server]\nws_transport = "raw"\n')
    assert load(str(cfg), env={}).server.ws_transport == "raw"


async def keep_alive_then_upgrade(port: int, first: bytes | Signed) -> Raw:
    """A connection that first serves `first` (one request, answered) and then upgrades."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes(first))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 "), head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    c = Raw(reader, writer)
    c.send(upgrade_request() + frame(1, b'{"event":"pusher:ping","data":{}}'))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert (await c.event())["event"] == "pusher:connection_established"
    assert (await c.event())["event"] == "pusher:pong"  # sent with the upgrade head
    return c


@pytest.mark.parametrize(
    "first",
    [
        b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n",  # aiohttp serves it, then the upgrade
        later("/apps/app-id/events", EVENT),  # the REST fast path serves it
    ],
    ids=["through-aiohttp", "after-fast-path"],
)
async def test_an_upgrade_on_a_kept_alive_connection_is_the_same_websocket(srv, first):
    """The upgrade that aiohttp receives is handed to the same RawWsConnection (through
    aiohttp's RequestHandler.set_parser): the same frame checks, the same close at once. This
    fails if an aiohttp upgrade breaks that hook."""
    c = await keep_alive_then_upgrade(srv.port, first)
    try:
        c.send(frame(9, b"hi"))
        assert await c.recv() == (10, b"hi")
        c.send(frame(1, b'{"event":"pusher:ping","data":{}}', mask=False))  # unmasked
        assert await c.close_code() == 1002
        assert await c.eof(1.0)
    finally:
        await c.aclose()
    c = await keep_alive_then_upgrade(srv.port, first)
    try:
        c.send(frame(8, struct.pack("!H", 1006)))  # a code no peer may send
        assert await c.close_code() == 1002
        assert await c.eof(1.0)
    finally:
        await c.aclose()


def test_per_socket_objects_have_no_instance_dict():
    """An idle socket's memory is mostly its RawWsConnection: keep every class slotted."""
    from pushwire.protocol.websocket import Decoder
    from pushwire.transport.fastpath import HeadReader
    from pushwire.transport.rawws import RawWsConnection, Refused

    for cls in (RawWsConnection, HeadReader, Refused, Decoder):
        assert cls.__dictoffset__ == 0, cls


async def test_forwarded_for_from_a_trusted_proxy_counts_per_client(tmp_path):
    config = CONFIG.replace(
        "max_frame_size = 1000",
        'max_frame_size = 1000\nmax_connections_per_ip = 1\ntrusted_proxies = ["127.0.0.0/8"]',
    )
    srv = start_server(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as s:

            async def connect(client: str) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
                ws = await s.ws_connect(
                    srv.ws_url(), headers={"X-Forwarded-For": f"{client}, 127.0.0.9"}
                )
                return ws, orjson.loads((await ws.receive(timeout=TIMEOUT)).data)

            first, ev = await connect("203.0.113.1")
            assert ev["event"] == "pusher:connection_established"
            again, ev = await connect("203.0.113.1")  # the same client behind the proxy
            assert ev["event"] == "pusher:error" and ev["data"]["code"] == 4100
            msg = await again.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4100
            other, ev = await connect("203.0.113.2")  # another one is let in
            assert ev["event"] == "pusher:connection_established"
            for ws in (first, again, other):
                await ws.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_websockets_keep_tcp_keepalive_on(srv):
    """SO_KEEPALIVE (finds peers that vanished) comes from the listening socket now, not a
    setsockopt per socket: the server's end of a WebSocket has its keepalive timer."""
    c = await opened(srv.port)
    try:
        port = c.writer.get_extra_info("sockname")[1]
        out = subprocess.run(
            ["ss", "-tno", "state", "established", f"( dport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "keepalive" in out, out
    finally:
        await c.aclose()
