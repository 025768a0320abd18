"""The raw listener's REST fast path (transport/fastpath.py): POST /apps/{id}/events and
/batch_events served by the raw protocol itself. Every answer is compared byte for byte
(Date aside) with the same app on aiohttp alone (tests/helpers/aiohttp_only.py):
successes, each error, smuggling attempts, slow and oversize bodies, keep-alive, pipelining
and the hand-over to aiohttp in the middle of a connection."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from pushwire.transport.httphead import parse_rest
from tests.conftest import running_server
from tests.helpers.aiohttp_only import aiohttp_only
from tests.helpers.client import Client
from tests.helpers.rest import EVENT, counted, later, signed, talk

pytestmark = pytest.mark.slow

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
body_timeout = 1.0
max_request_body = 100000

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"

[[apps]]
id = "off-id"
key = "off-key"
secret = "off-secret"
enabled = false
"""

EVENTS = "/apps/{app_id}/events"
P = b"POST /apps/app-id/events HTTP/1.1\r\n"
H = b"Host: x\r\n"
BATCH = orjson.dumps(
    {"batch": [{"name": f"e{i}", "channel": "fast-b", "data": "x"} for i in range(3)]}
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(fast, reference): the raw transport with the fast path, and plain aiohttp."""
    with (
        running_server(tmp_path_factory.mktemp("fast"), CONFIG) as fast,
        aiohttp_only(tmp_path_factory.mktemp("ref"), CONFIG) as ref,
    ):
        yield fast, ref


async def same(servers, *parts: bytes, **kw: float) -> bytes:
    fast, ref = servers
    a, b = await asyncio.gather(talk(fast.port, *parts, **kw), talk(ref.port, *parts, **kw))
    assert a == b
    assert a, "no answer"
    return a


# Answers ------------------------------------------------------------------------------------
async def test_success_is_the_same_bytes(servers):
    got = await same(servers, signed("/apps/app-id/events", EVENT))
    assert got == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nDate: -\r\n"
        + got.split(b"Date: -\r\n")[1]
    )
    assert got.endswith(b"\r\n\r\n{}")
    got = await same(servers, signed("/apps/app-id/batch_events", BATCH))
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"{}")


async def test_answer_with_info_is_the_same_bytes(servers):
    event = orjson.dumps({"name": "e", "channel": "fast-i", "data": "x", "info": "user_count"})
    got = await same(servers, signed("/apps/app-id/events", event))
    assert b'{"channels":' in got


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (later("/apps/nope/events", EVENT), 404),
        (later("/apps/off-id/events", EVENT, key="off-key", secret="off-secret"), 403),
        (later("/apps/app-id/events", EVENT, secret="wrong"), 401),
        (later("/apps/app-id/events", EVENT, sign_body=b"{}"), 401),  # body_md5
        (later("/apps/app-id/events", b"{nope"), 400),
        (later("/apps/app-id/events", b"[]"), 400),
        (later("/apps/app-id/batch_events", b'{"batch": 3}'), 400),
        (later("/apps/app-id/events", b"x" * 100001), 413),  # whole, but too large
        (later("/apps/app-id/events", b""), 400),
        (P + H + b"Content-Length: 2\r\n\r\n{}", 401),
        (P + b"Content-Length: 2\r\n\r\n{}", 400),
        (P + b"Host: x\r\nHost: y\r\nContent-Length: 2\r\n\r\n{}", 400),
        (P.replace(b"events", b"events?auth_key=app-key") + H + b"Content-Length: 0\r\n\r\n", 401),
    ],
)
async def test_errors_are_the_same_bytes(servers, request_, status):
    got = await same(servers, bytes(request_))
    # (aiohttp answers a request it cannot parse in HTTP/1.0, and closes)
    assert re.match(rf"HTTP/1\.[01] {status} ".encode(), got), got
    assert b'{"error":' in got or got.startswith(b"HTTP/1.0 400 Bad Request")


async def test_requests_are_counted_alike(servers):
    fast, _ = servers
    ok = await counted(fast, EVENTS, 200)
    bad = await counted(fast, EVENTS, 401)
    await talk(fast.port, signed("/apps/app-id/events", EVENT) * 3)
    await talk(fast.port, signed("/apps/app-id/events", EVENT, secret="x"))
    assert await counted(fast, EVENTS, 200) == ok + 3
    assert await counted(fast, EVENTS, 401) == bad + 1


async def test_events_reach_subscribers(servers):
    fast, _ = servers
    c = await Client.connect(fast.ws_url())
    await c.subscribe("fast-chan")
    await talk(fast.port, signed("/apps/app-id/events", EVENT) * 2)
    assert [(await c.recv())["event"] for _ in range(2)] == ["fast", "fast"]
    await c.close()


# Keep-alive, pipelining, hand-over ------------------------------------------------------------
async def test_pipelined_then_handed_to_aiohttp_then_back(servers):
    one = signed("/apps/app-id/events", EVENT)
    bad = signed("/apps/app-id/events", EVENT, secret="wrong")
    get = b"GET /apps/app-id/events HTTP/1.1\r\nHost: x\r\n\r\n"  # aiohttp's (405)
    got = await same(servers, one + bad + one + get + one + bad)
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", got)
    assert statuses == [b"200", b"401", b"200", b"405", b"200", b"401"]


async def test_keep_alive_in_separate_writes(servers):
    one = signed("/apps/app-id/events", EVENT)
    got = await same(servers, one, one, one[:30], one[30:], pause=0.05)
    assert got.count(b"HTTP/1.1 200 OK") == 3


async def test_a_split_head_and_body(servers):
    one = signed("/apps/app-id/events", EVENT)
    head_end = one.index(b"\r\n\r\n") + 4
    got = await same(servers, one[:head_end], one[head_end:-3], one[-3:], pause=0.2)
    assert got.startswith(b"HTTP/1.1 200 OK")


async def test_http10_connection_close_and_expect_go_to_aiohttp(servers):
    one = signed("/apps/app-id/events", EVENT)
    await same(servers, one.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    got = await same(servers, signed("/apps/app-id/events", EVENT, headers="Connection: close\r\n"))
    assert b"Connection: close" in got
    got = await same(
        servers, signed("/apps/app-id/events", EVENT, headers="Expect: 100-continue\r\n")
    )
    assert got.startswith(b"HTTP/1.1 100 Continue")


async def test_websocket_upgrade_still_works(servers):
    c = await Client.connect(servers[0].ws_url())
    await c.subscribe("fast-ws")
    await c.close()


# Bodies ---------------------------------------------------------------------------------------
async def test_slow_body_times_out_with_408(servers):
    one = signed("/apps/app-id/events", EVENT)
    got = await same(servers, one[:-5], idle=3.0)
    assert got.startswith(b"HTTP/1.1 408 ")


async def test_large_incomplete_body_is_aiohttps(servers):
    body = b'{"name":"e","channel":"c","data":"' + b"x" * 90000 + b'"}'
    got = await same(servers, signed("/apps/app-id/events", body), idle=1.0)
    assert got.startswith(b"HTTP/1.1 413 ") and b"event data larger" in got
    # announced larger than the limit, sent in part: refused before reading it
    head = signed("/apps/app-id/events", b"", length=10**9)
    got = await same(servers, head + b"x" * 1000, idle=1.0)
    assert got.startswith(b"HTTP/1.1 413 ")


# Smuggling and odd heads: all aiohttp's, answered as without the fast path ------------------
SMUGGLE = [
    "Content-Length: 2\r\n",  # a second Content-Length, equal
    "Content-Length: 5\r\n",  # a second one, different
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: identity\r\n",
    "X-Folded: a\r\n b\r\n",  # obs-fold
    "Content-Length : 2\r\n",  # space before the colon
    "Bad Header: x\r\n",
    "X-Null: a\x00b\r\n",
    "X-Cr: a\rb\r\n",
    "Upgrade: h2c\r\nConnection: Upgrade\r\n",
]


@pytest.mark.parametrize("extra", SMUGGLE)
async def test_smuggling_attempts_answer_as_aiohttp(servers, extra):
    one = signed("/apps/app-id/events", b"{}", headers=extra)
    follow = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    fast, ref = servers
    a, b = await asyncio.gather(talk(fast.port, one + follow), talk(ref.port, one + follow))
    # /metrics differs between servers: compare the status lines and the first answer
    status = rb"HTTP/1\.[01] \d{3} [^\r]*"
    assert re.findall(status, a) == re.findall(status, b)
    first = rb"(?=HTTP/1\.[01] \d{3} )"
    assert re.split(first, a)[1] == re.split(first, b)[1]


@pytest.mark.parametrize(
    "head",
    [
        P + H + b"Content-Length: +2\r\n\r\n{}",
        P + H + b"Content-Length: 0x2\r\n\r\n{}",
        P + H + b"Content-Length:  2 \r\n\r\n{}",  # spaces around: allowed by both
        P + H + b"\r\n",  # no Content-Length
        b"POST /apps/app-id/events HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
        b"POST /apps/app-id/events  HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}",
        b"POST /apps/app%2Did/events HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}",
        b"POST /apps/../apps/app-id/events HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}",
        b"POST /apps/app-id/events#x HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}",
        P + H + b"X: \xff\r\nContent-Length: 2\r\n\r\n{}",
        P + H + b"X-A: b\r\n" * 200 + b"Content-Length: 2\r\n\r\n{}",
        P + H + b"X: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
async def test_odd_heads_answer_as_aiohttp(servers, head):
    await same(servers, head)


async def test_garbage_after_pipelined_requests(servers):
    """Both read the same message boundaries: the byte after the second body is a bad
    request. aiohttp refuses the whole chunk that holds it (answering only its 400); the fast
    path answers the two requests before it, in order, then aiohttp answers the 400."""
    fast, ref = servers
    one = P + H + b"Content-Length: 2\r\n\r\n{}"
    two = P + H + b"Content-Length: 1\r\n\r\n{}"  # one byte of body, then "}"
    a = await talk(fast.port, one + two)
    b = await talk(ref.port, one, two, pause=0.1)
    status = rb"HTTP/1\.[01] \d{3}"
    assert re.findall(status, a) == [b"HTTP/1.1 401", b"HTTP/1.1 401", b"HTTP/1.0 400"]
    assert re.findall(status, b) == [b"HTTP/1.1 401", b"HTTP/1.0 400"]
    assert a.endswith(b"Invalid method encountered:\n\n  b'}'\n    ^")


def test_parse_rest_takes_only_plain_heads():
    routes = {"events": object(), "batch_events": object()}
    base = b"POST /apps/a/events?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2"
    call = parse_rest(base, routes)  # type: ignore[arg-type]
    assert call is not None and (call.app_id, call.query, call.length) == ("a", "x=1", 2)
    assert parse_rest(base + b"\r\nConnection: keep-alive", routes) is not None  # type: ignore[arg-type]
    # Content-Encoding is aiohttp's too (not sent to the servers above: aiohttp logs a
    # traceback for a body that does not decompress, with or without the fast path)
    odd = [b"Connection: close\r\n", b"Expect: x\r\n", b"Content-Encoding: gzip\r\n"]
    for extra in [e.encode() for e in SMUGGLE] + odd:
        assert parse_rest(base + b"\r\n" + extra.rstrip(b"\r\n"), routes) is None  # type: ignore[arg-type]
    assert parse_rest(base.replace(b"events", b"channels"), routes) is None  # type: ignore[arg-type]
    assert parse_rest(base.replace(b"/a/", b"/../"), routes) is None  # type: ignore[arg-type]
    assert parse_rest(base.replace(b"POST", b"GET"), routes) is None  # type: ignore[arg-type]
    assert parse_rest(base.replace(b"Content-Length: 2", b"X: y"), routes) is None  # type: ignore[arg-type]
