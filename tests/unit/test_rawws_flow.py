"""The WebSocket glue's flow control (transport/rawws.py) on a real event loop with a
recording transport and handler: the inbox bound pauses reading, a turn decodes at most
FRAMES_PER_TURN frames, messages of one socket leave the loop to the others in between,
floods are closed with 4100 and protocol errors at once."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from pushwire.apps.model import App
from pushwire.metrics import Metrics
from pushwire.transport.rawws import FRAMES_PER_TURN, INBOX_ITEMS, RawWsConnection
from pushwire.transport.writes import Flusher
from tests.helpers.wsraw import frame

EMPTY_TEXT = b"\x81\x80\0\0\0\0"
EMPTY_PING = b"\x89\x80\0\0\0\0"


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.pauses = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False


class Handler:
    """Records the messages handled (socket, text); `gate` holds each one until it is set."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def open(self, conn: Any) -> None:
        pass

    async def on_text(self, conn: Any, text: str) -> None:
        await self.gate.wait()
        self.handled.append((conn.socket_id, text))

    def on_binary(self, conn: Any) -> None:
        self.handled.append((conn.socket_id, "<binary>"))

    async def on_close(self, conn: Any) -> None:
        pass


def endpoint(handler: Handler, flood_rate: float = 1e9, flood_burst: int = 10**9) -> Any:
    metrics = Metrics()
    return SimpleNamespace(
        handler=handler,
        metrics=metrics,
        flusher=Flusher(metrics),
        max_pending=1 << 20,
        max_frame=1 << 20,
        tasks=set(),
        addresses=SimpleNamespace(closed=lambda ip: None),
        active=1,
        loop=asyncio.get_running_loop(),
        flood_rate=flood_rate,
        flood_burst=flood_burst,
    )


async def connect(srv: Any, socket_id: str = "1.1") -> tuple[RawWsConnection, Transport]:
    transport = Transport()
    conn = RawWsConnection(App("a", "k", "s"), socket_id, 0.0, transport, srv, "")  # type: ignore[arg-type]
    conn.start()
    await settle()
    return conn, transport


async def settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_a_full_inbox_pauses_reading_and_decoding():
    handler = Handler()
    handler.gate.clear()  # the handler is slow
    conn, transport = await connect(endpoint(handler))
    conn.data_received(EMPTY_TEXT * 1000)
    await settle()
    assert transport.paused
    assert conn._inbox is not None and len(conn._inbox) <= INBOX_ITEMS
    assert conn._decoder is not None and conn._decoder.buffered > 0  # the rest waits, raw
    handler.gate.set()
    await settle(5000)
    assert len(handler.handled) == 1000
    assert not transport.paused and conn._decoder is None and conn._inbox is None


async def test_one_turn_decodes_at_most_frames_per_turn():
    conn, transport = await connect(endpoint(Handler()))
    conn.data_received(EMPTY_PING * 1000)
    assert transport.paused
    assert transport.written[-1] == b"\x8a\x00" * FRAMES_PER_TURN  # one write of pongs
    await settle()
    assert b"".join(transport.written) == b"\x8a\x00" * 1000
    assert not transport.paused


async def test_a_busy_socket_lets_the_others_in_between_its_messages():
    handler = Handler()
    srv = endpoint(handler)
    busy, _ = await connect(srv, "busy")
    other, _ = await connect(srv, "other")
    busy.data_received(EMPTY_TEXT * 200)
    await asyncio.sleep(0)
    other.data_received(frame(1, b"hello"))
    await settle(5000)
    assert len(handler.handled) == 201
    assert handler.handled.index(("other", "hello")) < 10


async def test_a_flood_is_closed_with_4100():
    handler = Handler()
    srv = endpoint(handler, flood_rate=10, flood_burst=100)
    conn, transport = await connect(srv)
    conn.data_received(EMPTY_TEXT * 50)
    await settle()
    assert not transport.closed  # within the burst
    conn.data_received(EMPTY_TEXT * 200)
    await settle(1000)
    assert transport.closed
    last = transport.written[-1]  # the pusher:error, then the close frame
    error, close = last[: last.index(b"\x88")], last[last.index(b"\x88") :]
    assert b'"code":4100' in error and close[2:4] == struct.pack("!H", 4100)
    assert srv.metrics.rate_limited["ws_frames"] == 1
    assert len(handler.handled) <= 150


async def test_a_protocol_error_closes_at_once_and_reads_nothing_more():
    handler = Handler()
    conn, transport = await connect(endpoint(handler))
    conn.data_received(frame(1, b"one") + frame(1, b"x", mask=False) + frame(1, b"two"))
    await settle()
    assert transport.closed
    assert transport.written[-1] == b"\x88" + bytes((2 + 28,)) + struct.pack("!H", 1002) + (
        b"client frames must be masked"
    )
    conn.data_received(frame(1, b"three"))
    await settle()
    assert [t for _, t in handler.handled] == ["one"]
