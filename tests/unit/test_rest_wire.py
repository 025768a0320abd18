"""The REST answers written without aiohttp's response machinery (transport/rest.py: `EmptyOk`
for the direct dispatch, `wire()` for the raw listener's fast path) against what aiohttp
itself writes for the same responses, over a real socket. These copy aiohttp's rendering
(its header order, Date and Server), so an aiohttp upgrade that changes it fails here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from pushwire.transport.rest import EMPTY, EmptyOk, error, ok, wire

RESPONSES = {
    "/plain-empty": lambda: web.Response(body=EMPTY, content_type="application/json"),
    "/empty-ok": lambda: EmptyOk(body=EMPTY, content_type="application/json"),
    "/ok-body": lambda: ok({"channels": {"a": {"user_count": 2}}}),
    "/error": lambda: error(401, "Authentication failed: nope"),
    "/too-large": lambda: error(413, "Request body too large"),
}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application()
    for path, make in RESPONSES.items():

        async def handler(request: web.Request, make=make) -> web.StreamResponse:
            return make()

        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


async def fetch(port: int, *paths: str, version: str = "1.1") -> list[bytes]:
    """Each answer to `paths`, asked one after the other on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for path in paths:
            writer.write(f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            n = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            out.append(undated(head + await reader.readexactly(n)))
    finally:
        writer.close()
    return out


def undated(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", answer)


async def test_empty_ok_writes_what_aiohttp_writes_and_keeps_the_connection(port):
    plain, fast, again = await fetch(port, "/plain-empty", "/empty-ok", "/empty-ok")
    assert fast == plain == again
    assert plain.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")


async def test_wire_renders_as_aiohttp_does(port):
    paths = ["/plain-empty", "/ok-body", "/error", "/too-large"]
    served = await fetch(port, *paths)
    for path, answer in zip(paths, served, strict=True):
        assert undated(wire(RESPONSES[path]())) == answer, path
    assert undated(wire(RESPONSES["/empty-ok"]())) == served[0]


async def test_empty_ok_leaves_other_cases_to_aiohttp(port):
    [old] = await fetch(port, "/empty-ok", version="1.0")
    assert old.startswith(b"HTTP/1.0 200 OK\r\n") and old.endswith(b"{}")
