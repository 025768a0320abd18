"""Signed REST requests written by hand (to send what clients refuse to), a raw HTTP
conversation, and the REST request counters of /metrics."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import aiohttp
import orjson

from pushwire.protocol.signing import sign_rest

EVENT = orjson.dumps({"name": "fast", "channel": "fast-chan", "data": "x"})


def signed(
    path: str,
    body: bytes,
    *,
    sign_path: str | None = None,
    key: str = "app-key",
    secret: str = "app-secret",
    headers: str = "",
    length: int | None = None,
    sign_body: bytes | None = None,
) -> bytes:
    signed_body = body if sign_body is None else sign_body
    q = sign_rest(key, secret, "POST", sign_path or path, {}, signed_body)
    query = "&".join(f"{k}={v}" for k, v in q.items())
    n = len(body) if length is None else length
    return (
        f"POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {n}\r\n{headers}\r\n"
    ).encode() + body


@dataclass(frozen=True)
class Signed:
    """A signed request described where tests are collected (parametrize) and signed when the
    test runs, by `bytes(...)`: signed at collection time, it expires after the REST timestamp
    window (600 s) in a long run. `bytes(b"...")` is the bytes themselves, so a parameter may be
    either."""

    path: str
    body: bytes
    options: dict[str, str | int | bytes] = field(default_factory=dict)

    def __bytes__(self) -> bytes:
        return signed(self.path, self.body, **self.options)  # type: ignore[arg-type]


def later(path: str, body: bytes, **options: str | int | bytes) -> Signed:
    """`signed(path, body, **options)`, done when the test runs."""
    return Signed(path, body, options)


async def talk(port: int, *parts: bytes, pause: float = 0.0, idle: float = 0.4) -> bytes:
    """Send `parts` (pausing between them), read until the server closes or stays silent for
    `idle` seconds; Date headers blanked (they may differ by a second between servers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), idle)
            except TimeoutError:
                break
            except ConnectionError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", got)


async def counted(srv, route: str, status: int) -> float:
    """`pushwire_rest_requests_total{route, status}` of the server `srv`."""
    async with aiohttp.ClientSession() as s, s.get(srv.http + "/metrics") as r:
        text = await r.text()
    line = f'pushwire_rest_requests_total{{route="{route}",status="{status}"}}'
    for row in text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0
