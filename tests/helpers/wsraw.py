"""A WebSocket client written by hand, to send what libraries refuse to (unmasked frames,
reserved bits, floods), and the frame builder the transport tests share."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct

import orjson

from tests.conftest import TIMEOUT

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def upgrade_request(path: str = "/app/app-key?protocol=7") -> bytes:
    return UPGRADE.format(path=path, key=base64.b64encode(os.urandom(16)).decode()).encode()


def frame(
    op: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame (masked unless `mask` is false), lengths encoded minimally."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | op
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


PING_EVENT = frame(1, b'{"event":"pusher:ping","data":{}}')


class Raw:
    """A hand-written WebSocket client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str = "/app/app-key?protocol=7") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def recv(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not b1 & 0x80, "server frames are not masked"
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def event(self, timeout: float = TIMEOUT) -> dict:
        op, payload = await self.recv(timeout)
        assert op == 1, (op, payload)
        return orjson.loads(payload)

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while True:
            op, payload = await self.recv()
            if op == 8:
                return struct.unpack("!H", payload[:2])[0]

    async def eof(self, timeout: float = TIMEOUT) -> bool:
        """Whether the server closed the TCP connection within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def opened(port: int) -> Raw:
    c = await Raw.connect(port)
    assert (await c.event())["event"] == "pusher:connection_established"
    return c
