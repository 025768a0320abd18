"""REST ingest (POST /apps/{id}/events and /batch_events) over raw HTTP against a real server:
the direct dispatch and the router answer alike, whole and split bodies, 100-continue, and
every request is counted in /metrics."""

from __future__ import annotations

import asyncio
import re
import socket

import aiohttp
import orjson
import pytest

from tests.conftest import TIMEOUT, running_server
from tests.helpers.client import Client
from tests.helpers.rest import counted, signed

pytestmark = pytest.mark.slow

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
body_timeout = 2.0

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


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("ingest"), CONFIG) as s:
        yield s


def request_bytes(path: str, body: bytes, **kwargs: str) -> tuple[bytes, bytes]:
    """The head (request line and headers) and body of one signed POST."""
    data = signed(path, body, **kwargs)  # type: ignore[arg-type]
    return data[: len(data) - len(body)], body


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> tuple[int, dict, bytes]:
    """Send `parts` (pausing between them), read one response: status, JSON body, raw head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = b""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
            if b"Expect: 100-continue" in part:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = int(re.search(rb"Content-Length: (\d+)", raw, re.I).group(1))
        body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        return int(raw.split()[1]), orjson.loads(body), head + raw
    finally:
        writer.close()


EVENT = orjson.dumps({"name": "ingest", "channel": "ingest-chan", "data": "x"})


async def test_direct_and_routed_requests_answer_alike(srv):
    c = await Client.connect(srv.ws_url())
    await c.subscribe("ingest-chan")
    before = await counted(srv, EVENTS, 200)
    # plain path: served by the direct dispatch
    status, body, head = await exchange(srv.port, *request_bytes("/apps/app-id/events", EVENT))
    assert (status, body) == (200, {})
    assert b"application/json" in head
    assert (await c.recv())["event"] == "ingest"
    # the same call with a percent-escape in its path: through aiohttp's router (signed over
    # the decoded path, as the SDKs do)
    status, body, _ = await exchange(
        srv.port,
        *request_bytes("/apps/app%2Did/events", EVENT, sign_path="/apps/app-id/events"),
    )
    assert (status, body) == (200, {})
    assert (await c.recv())["event"] == "ingest"
    assert await counted(srv, EVENTS, 200) == before + 2
    await c.close()


async def test_batch_through_the_direct_dispatch(srv):
    c = await Client.connect(srv.ws_url())
    await c.subscribe("ingest-b")
    batch = orjson.dumps(
        {"batch": [{"name": f"e{i}", "channel": "ingest-b", "data": "x"} for i in range(3)]}
    )
    status, body, _ = await exchange(srv.port, *request_bytes("/apps/app-id/batch_events", batch))
    assert (status, body) == (200, {})
    assert [(await c.recv())["event"] for _ in range(3)] == ["e0", "e1", "e2"]
    await c.close()


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("/apps/nope/events", {}, 404, "Unknown app id 'nope'"),
        ("/apps/off-id/events", {"key": "off-key", "secret": "off-secret"}, 403, "disabled"),
        ("/apps/app-id/events", {"secret": "wrong"}, 401, "Invalid signature"),
        ("/apps/app-id/events", {"sign_path": "/apps/app-id/batch_events"}, 401, "signature"),
    ],
)
async def test_direct_dispatch_errors(srv, path, kwargs, status, fragment):
    before = await counted(srv, EVENTS, status)
    got, body, _ = await exchange(srv.port, *request_bytes(path, EVENT, **kwargs))
    assert got == status and fragment in body["error"]
    assert await counted(srv, EVENTS, status) == before + 1


async def test_other_methods_and_paths_still_go_to_the_router(srv):
    async with aiohttp.ClientSession() as s:
        async with s.get(srv.http + "/apps/app-id/events") as r:
            assert r.status == 405
        async with s.post(srv.http + "/apps/app-id/events/") as r:
            assert r.status == 404
        async with s.post(srv.http + "/apps//events") as r:
            assert r.status == 404


async def test_body_sent_after_the_headers(srv):
    head, body = request_bytes("/apps/app-id/events", EVENT)
    status, answer, _ = await exchange(srv.port, head, body[:5], body[5:], pause=0.2)
    assert (status, answer) == (200, {})


async def test_expect_100_continue(srv):
    head, body = request_bytes("/apps/app-id/events", EVENT, headers="Expect: 100-continue\r\n")
    status, answer, raw = await exchange(srv.port, head, body)
    assert raw.startswith(b"HTTP/1.1 100 Continue")
    assert (status, answer) == (200, {})


async def test_keep_alive_connection_serves_many_triggers(srv):
    head, body = request_bytes("/apps/app-id/events", EVENT)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
    try:
        sock.sendall((head + body) * 20)  # pipelined
        got = b""
        while got.count(b"HTTP/1.1 200 OK") < 20:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
    finally:
        sock.close()


def _head_lines(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line and not line.startswith(b"Date: ")]


async def test_direct_answer_is_the_same_bytes_as_aiohttps(srv):
    """The direct dispatch writes `200 {}` in one piece: the same status line and headers as
    aiohttp writes for the same answer through the router."""
    _, _, direct = await exchange(srv.port, *request_bytes("/apps/app-id/events", EVENT))
    _, _, routed = await exchange(
        srv.port,
        *request_bytes("/apps/app%2Did/events", EVENT, sign_path="/apps/app-id/events"),
    )
    assert _head_lines(direct) == _head_lines(routed)
    assert _head_lines(direct)[:3] == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: application/json",
        b"Content-Length: 2",
    ]
    assert re.search(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]{8} GMT\r\n", direct)


async def test_http10_and_closing_connections_get_aiohttps_answer(srv):
    head, body = request_bytes("/apps/app-id/events", EVENT)
    status, answer, raw = await exchange(srv.port, head.replace(b"HTTP/1.1", b"HTTP/1.0"), body)
    assert (status, answer) == (200, {}) and raw.startswith(b"HTTP/1.0 200 OK")
    head, body = request_bytes("/apps/app-id/events", EVENT, headers="Connection: close\r\n")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
    try:
        sock.sendall(head + body)
        got = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            got += chunk
    finally:
        sock.close()
    assert got.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in got
    assert got.endswith(b"\r\n\r\n{}")


async def test_answers_with_info_are_rendered_in_full(srv):
    event = orjson.dumps(
        {"name": "e", "channel": "ingest-info", "data": "x", "info": "subscription_count"}
    )
    status, answer, _ = await exchange(srv.port, *request_bytes("/apps/app-id/events", event))
    assert (status, answer) == (200, {"channels": {"ingest-info": {"subscription_count": 0}}})
