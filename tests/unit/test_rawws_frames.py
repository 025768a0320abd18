"""The raw transport's frame parser, without sockets: whatever way the byte stream is cut
into reads, the same messages come out, in order, and each ping is answered once."""

from __future__ import annotations

import itertools
import os
import struct
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pushwire.apps.model import App
from pushwire.metrics import Metrics
from pushwire.transport.rawws import (
    _BINARY,
    _LOST,
    RawWsConnection,
    accept_key,
    parse_upgrade,
    unmask,
)

MAX = 1000


def frame(op: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Recorder(RawWsConnection):
    """Records what would be handed to the handler instead of starting tasks."""

    def deliver(self, item: str | int) -> None:
        self.got.append(item)


class FakeLoop:
    def call_later(self, *args: Any) -> None:
        return None


def make() -> tuple[Recorder, FakeTransport]:
    transport = FakeTransport()
    metrics = Metrics()
    srv = SimpleNamespace(
        flusher=SimpleNamespace(metrics=metrics, mark=lambda conn: None),
        max_pending=1 << 20,
        max_message=MAX,
        metrics=metrics,
        loop=FakeLoop(),
    )
    conn = Recorder.__new__(Recorder)
    conn.got = []
    RawWsConnection.__init__(
        conn,
        App("a", "k", "s"),
        "1.2",
        0.0,
        transport,  # type: ignore[arg-type]
        srv,  # type: ignore[arg-type]
        "127.0.0.1",
    )
    return conn, transport


message = st.tuples(
    st.sampled_from(["text", "binary"]),
    st.text(max_size=300).filter(lambda t: len(t.encode()) <= MAX),
    st.integers(min_value=1, max_value=4),  # fragments
    st.booleans(),  # a ping between the fragments
)


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=8), st.lists(st.integers(0, 100_000), max_size=12))
def test_any_cut_of_the_stream_gives_the_same_messages(messages, cuts):
    stream = b""
    expected: list[str | int] = []
    pings = 0
    for kind, text, parts, ping in messages:
        data = text.encode()
        op = 1 if kind == "text" else 2
        size = -(-len(data) // parts) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for i, chunk in enumerate(chunks):
            stream += frame(op if i == 0 else 0, chunk, fin=i == len(chunks) - 1)
            if ping and i == 0:
                stream += frame(9, b"p%d" % pings)
                pings += 1
        expected.append(text if kind == "text" else _BINARY)
    conn, transport = make()
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        conn.data_received(stream[a:b])
    assert conn.got == expected
    assert transport.written == [bytes((0x8A, len(b"p%d" % i))) + b"p%d" % i for i in range(pings)]
    assert conn._buf is None and conn._frag is None


def test_a_message_over_the_limit_closes_1009_and_its_payload_is_skipped():
    conn, transport = make()
    big = frame(1, b"x" * (MAX + 1))
    conn.data_received(big[:100])
    [close] = transport.written
    assert close[0] == 0x88 and struct.unpack("!H", close[2:4])[0] == 1009
    assert conn.got == [_LOST]
    conn.data_received(big[100:] + frame(1, b"ignored"))  # skipped, never buffered
    assert conn._buf is None and conn.got == [_LOST]
    conn.data_received(frame(8, struct.pack("!H", 1000)))  # the peer's close reply
    assert transport.closing


def test_invalid_utf8_closes_1007():
    conn, transport = make()
    conn.data_received(frame(1, b"ok") + frame(1, b"\xc3\x28") + frame(1, b"late"))
    assert conn.got == ["ok", _LOST]
    assert struct.unpack("!H", transport.written[0][2:4])[0] == 1007


def test_helpers():
    # RFC 6455 section 1.3's example
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert unmask(b"", b"abcd") == b""
    assert unmask(unmask(b"hello world", b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == (
        b"hello world"
    )
    head = (
        b"GET /app/app-key?protocol=7&client=js HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8"
    )
    req = parse_upgrade(head)
    assert req is not None and req.app_key == "app-key" and req.query == "protocol=7&client=js"
    assert req.headers["x-forwarded-for"] == ["1.2.3.4", "5.6.7.8"]
    # anything unusual is aiohttp's to answer
    for bad in (
        head.replace(b"GET", b"POST"),
        head.replace(b"HTTP/1.1", b"HTTP/1.0"),
        head.replace(b"Version: 13", b"Version: 8"),
        head.replace(b"/app/app-key", b"/app/app%20key"),
        head.replace(b"/app/app-key", b"/app/"),
        head.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"),
        head.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        head + b"\r\nContent-Length: 5",
        head + b"\r\n folded",
        head + b"\r\nBad Header: x",
        head.replace(b"Host: x", "Host: \u00e9".encode()),
    ):
        assert parse_upgrade(bad) is None, bad
