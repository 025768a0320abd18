"""The raw listener (transport/fastpath.py) at the edges of HTTP: request lines and heads
that are long, odd or unauthenticated, upgrades aiohttp would refuse, slow bodies. Each is
sent to a server with the raw listener and to the same app on aiohttp alone
(tests/helpers/aiohttp_only.py), and must be answered alike."""

from __future__ import annotations

import asyncio
import base64
import os
import re

import pytest

from tests.conftest import running_server
from tests.helpers.aiohttp_only import aiohttp_only
from tests.helpers.rest import EVENT, later, signed, talk

pytestmark = pytest.mark.slow

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
body_timeout = 1.0
handshake_timeout = 2.0
max_request_body = 100000
max_frame_size = 1000

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
"""

STATUS = rb"HTTP/1\.[01] \d{3} [^\r]*"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with (
        running_server(tmp_path_factory.mktemp("rfast"), CONFIG) as fast,
        aiohttp_only(tmp_path_factory.mktemp("rref"), CONFIG) as ref,
    ):
        yield fast, ref


async def both(servers, *parts: bytes, **kw: float) -> tuple[bytes, bytes]:
    fast, ref = servers
    return await asyncio.gather(talk(fast.port, *parts, **kw), talk(ref.port, *parts, **kw))


# REST fast path: request line length --------------------------------------------------------
async def test_overlong_request_line_is_refused_as_aiohttp_does(servers):
    """aiohttp refuses a request line longer than max_line_size (8190); parse_rest checks the
    length of header lines only, so the fast path serves a request aiohttp would refuse."""
    req = signed("/apps/app-id/events", EVENT).replace(
        b" HTTP/1.1\r\n", b"&pad=" + b"a" * 9000 + b" HTTP/1.1\r\n", 1
    )
    a, b = await both(servers, req)
    assert re.findall(STATUS, a) == re.findall(STATUS, b), (a[:200], b[:200])


@pytest.mark.parametrize(
    "head",
    [
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0002\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost:\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length:\t2\t\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 000000000002\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Connection: Keep-Alive\r\n\r\n{}",
        b"POST /apps/app-id/events? HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id/events?auth_key=%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id./events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}\r\n"
        b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        later("/apps/app-id/events", EVENT, headers="Connection: keep-alive\r\n"),
        later("/apps/app-id/events", EVENT, headers="Keep-Alive: timeout=1\r\n"),
        later("/apps/app-id/events", EVENT, headers="X-Forwarded-For: 1.2.3.4\r\n"),
        later("/apps/app-id/events", EVENT, headers="Content-Type: text/plain\r\n"),
    ],
)
async def test_edge_heads_answer_as_aiohttp(servers, head):
    a, b = await both(servers, bytes(head))
    assert a == b


# WebSocket handshake: what aiohttp refuses --------------------------------------------------
def upgrade(headers: str, query: str = "protocol=7") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /app/app-key?{query} HTTP/1.1\r\n{headers}Upgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "headers",
    ["", "Host: x\r\nHost: y\r\n", "Host: x\r\nX-Long: " + "a" * 9000 + "\r\n"],
    ids=["no-host", "two-hosts", "long-field"],
)
async def test_odd_upgrades_answer_as_aiohttp(servers, headers):
    """parse_upgrade checks neither Host (required in HTTP/1.1, a singleton) nor aiohttp's
    line/field limits: the raw transport accepts upgrades aiohttp refuses with 400."""
    a, b = await both(servers, upgrade(headers))
    assert re.findall(STATUS, a)[:1] == re.findall(STATUS, b)[:1], (a[:300], b[:300])


async def test_upgrade_with_overlong_target_answers_as_aiohttp(servers):
    a, b = await both(servers, upgrade("Host: x\r\n", "protocol=7&pad=" + "a" * 9000))
    assert re.findall(STATUS, a)[:1] == re.findall(STATUS, b)[:1], (a[:300], b[:300])


# REST fast path: a slow body gets body_timeout twice ----------------------------------------
async def first_answer_after(port: int, data: bytes) -> float:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    t0 = loop.time()
    try:
        got = await asyncio.wait_for(reader.read(1), 10)
    finally:
        writer.close()
    assert got == b"H"
    return loop.time() - t0


async def test_slow_body_times_out_after_body_timeout_as_aiohttp(servers):
    """A fast-path body that does not come whole within body_timeout (1 s here) is handed to
    aiohttp, whose own body_timeout then starts afresh: the 408 comes after 2 s, not 1 s, so
    a slow-body client holds a connection (and its buffered bytes) twice as long."""
    fast, ref = servers
    partial = signed("/apps/app-id/events", EVENT)[:-5]
    a, b = await asyncio.gather(
        first_answer_after(fast.port, partial), first_answer_after(ref.port, partial)
    )
    assert a < b + 0.5, f"fast path answered after {a:.2f} s, aiohttp after {b:.2f} s"


async def test_unauthenticated_partial_body_is_refused_at_once_as_aiohttp(servers):
    """aiohttp's route checks app, key, timestamp and signature before waiting for the body
    (read_body) and answers 401 at once; the fast path first waits for the whole body (up to
    READ_AHEAD bytes, body_timeout seconds), so an unauthenticated client holds a connection
    and up to 64 KB of buffered body per connection for body_timeout (then aiohttp's own)."""
    fast, ref = servers
    partial = signed("/apps/app-id/events", EVENT, secret="wrong")[:-5]
    a, b = await asyncio.gather(
        first_answer_after(fast.port, partial), first_answer_after(ref.port, partial)
    )
    assert b < 0.5, b
    assert a < 0.5, f"fast path answered 401 after {a:.2f} s, aiohttp after {b:.2f} s"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ("Host: x\r\n" + "X-A: b\r\n" * 200, "protocol=7"),  # more fields than aiohttp's 128
        ("Host: x\r\n", "protocol=7&x=\x7f"),  # DEL in the target
        ("Host: x\r\n", "protocol=7&x=\x01"),  # a control character in the target
        ("Host: x\r\n", "protocol=7&x=\tb"),  # a tab in the target
        ("Host: x\r\n", 'protocol=7&x="<>'),  # characters a URL may not hold as they are
    ],
    ids=["many-fields", "del", "ctl", "tab", "unsafe"],
)
async def test_odd_upgrade_targets_answer_as_aiohttp(servers, headers, query):
    a, b = await both(servers, upgrade(headers, query))
    assert re.findall(STATUS, a)[:1] == re.findall(STATUS, b)[:1], (a[:300], b[:300])
