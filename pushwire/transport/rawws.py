"""One WebSocket on a plain `asyncio.Protocol`: the glue between the transport's bytes, the
frame decoder (`protocol/websocket.py`) and the session handler.

An idle subscribed socket is one object, both the transport's protocol and the `Connection`
the handler sees, and holds no buffer, decoder, timer or task while nothing is pending.

Every read is bounded in memory and in time, and one socket never keeps the event loop from
the others:
- decoded messages wait in the socket's inbox, handled one at a time, in order, by a task
  that exists only while there are some; the task lets the loop run between two messages;
- the inbox holds at most INBOX_ITEMS messages and INBOX_BYTES characters: past either,
  nothing more is decoded and reading pauses until the handler caught up (the bytes already
  read wait in the decoder: one read's worth, plus a message under way);
- at most FRAMES_PER_TURN frames are decoded per event-loop turn (control frames are answered
  at once, their pongs in one write): past that, reading pauses until the next turn;
- a socket that sends frames faster than the flood limit (WsEndpoint: a burst of
  `flood_burst`, then `flood_rate` per second) is closed with 4100 (rate_limited{ws_frames}).

Closing: the handler's `close` starts the closing handshake (our close frame, then the peer's,
at most CLOSE_TIMEOUT s). A peer's close frame is answered with its code and the TCP
connection closed. A peer that breaks the protocol is failed (RFC 6455 7.1.7): the close frame
with the decoder's code (1002, 1007, 1009), then the TCP connection is closed at once and
nothing more is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..protocol import messages
from ..protocol.errors import OverCapacity, PusherError
from ..protocol.websocket import (
    Binary,
    Close,
    CloseCode,
    Decoder,
    Fail,
    Partial,
    Ping,
    Pong,
    Text,
    close_frame,
    pong_frame,
)
from .http import client_error
from .writes import QueuedConnection

if TYPE_CHECKING:
    from ..apps.model import App
    from .ws import WsEndpoint

log = logging.getLogger("pushwire.ws")

CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame before dropping the socket
INBOX_ITEMS = 64  # messages waiting to be handled past which nothing more is decoded
INBOX_BYTES = 65536  # characters of text waiting to be handled, likewise
FRAMES_PER_TURN = 256  # frames decoded per event-loop turn

# socket states
OPEN, CLOSING, GONE = 0, 1, 2
# inbox items besides text messages
_OPENED, _BINARY, _LOST = 0, 1, 2


class Refused(asyncio.Protocol):
    """A refused handshake: the error and close frames are written; wait for the peer's
    close frame (any data) or the timeout, then close."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        self._transport.close()


class RawWsConnection(QueuedConnection, asyncio.Protocol):
    """One WebSocket: the transport's protocol and the handler's `Connection` at once."""

    __slots__ = (
        "_busy",
        "_decoder",
        "_inbox",
        "_ip",
        "_opened",
        "_paused",
        "_queued",
        "_srv",
        "_state",
        "_tat",
    )

    def __init__(
        self,
        app: App,
        socket_id: str,
        now: float,
        transport: asyncio.Transport,
        srv: WsEndpoint,
        ip: str,
    ) -> None:
        super().__init__(app, socket_id, now, transport, srv.flusher, srv.max_pending)
        self._srv = srv
        self._ip = ip
        self._state = OPEN
        self._decoder: Decoder | None = None  # while bytes or a fragmented message are held
        self._inbox: deque[str | int] | None = None  # waiting while a message is handled
        self._queued = 0  # characters of text in the inbox
        self._busy = False  # a task is handling this socket's messages
        self._paused = False  # reading is paused (inbox full, or this turn's frames decoded)
        self._opened = False  # the handler accepted it (on_close is due)
        self._tat = 0.0  # flood limit: when the frames seen so far are paid for (GCRA)

    def start(self) -> None:
        """Hand the new socket to the handler (its `pusher:connection_established`)."""
        self.deliver(_OPENED)

    # Outbound ------------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """The handler closes the socket: the closing handshake (the peer's close frame is
        awaited for CLOSE_TIMEOUT s at most)."""
        if self.closed:
            return
        self.flush()  # queued frames (e.g. the pusher:error) go out before the close frame
        self.closed = True
        if self._state != OPEN:
            return
        self._state = CLOSING
        self.deliver(_LOST)  # the session ends now (as with aiohttp), the socket a bit later
        transport = self._transport
        if transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        self._srv.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def _end(self, last: bytes) -> None:
        """The connection ends now: `last` (closing frames) written, the TCP connection
        closed, nothing more read or handled but what the inbox holds."""
        self.flush()
        self.closed = True
        if self._state == OPEN:
            self.deliver(_LOST)
        self._state = GONE
        self._decoder = None
        self._shut(last)

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol (RFC 6455 7.1.7)."""
        client_error(self._srv.metrics, "ws_protocol", f"{reason} (closed with {code})")
        self._end(close_frame(code, reason) if self._state == OPEN else b"")

    def _flooded(self) -> None:
        srv = self._srv
        srv.metrics.rate_limited["ws_frames"] += 1
        err = OverCapacity(
            f"Over capacity: more than {srv.flood_burst} frames at once or "
            f"{srv.flood_rate:g} per second"
        )
        last = messages.error(err).wire + close_frame(err.code or 4100, err.message)
        self._end(last if self._state == OPEN else b"")

    # Inbound frames --------------------------------------------------------------------------
    def data_received(self, data: bytes | bytearray) -> None:
        if self._state == GONE:
            return
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = Decoder(self._srv.max_frame)
        decoder.feed(data)
        if not self._paused:
            self._pump()

    def _pump(self) -> None:
        """Decode and act on the bytes read: until the decoder needs more (reading goes on),
        the inbox is full (reading pauses until the handler caught up) or this turn's frames
        are decoded (reading pauses until the next turn)."""
        decoder = self._decoder
        if decoder is None or self._state == GONE:
            return
        frames = 0
        pongs = b""
        starved = False
        while True:
            inbox = self._inbox
            if self._queued >= INBOX_BYTES or (inbox is not None and len(inbox) >= INBOX_ITEMS):
                break  # the handler calls again once the inbox is half empty
            if frames == FRAMES_PER_TURN:
                self._srv.loop.call_soon(self._pump)
                break
            event = decoder.next()
            if event is None:
                starved = True
                break
            frames += 1
            if type(event) is Text:
                if self._state == OPEN:
                    metrics = self._srv.metrics
                    metrics.frames_in += 1
                    metrics.bytes_in += event.size
                    self.deliver(event.text)
            elif type(event) is Binary:
                if self._state == OPEN:
                    self.deliver(_BINARY)
            elif type(event) is Ping:
                if self._state == OPEN:
                    pongs += pong_frame(event.payload)
            elif type(event) is Partial or type(event) is Pong:
                pass
            else:
                if pongs:
                    self._transport.write(pongs)
                if type(event) is Close:
                    self._peer_closed(event.code)
                elif type(event) is Fail:
                    self._fail(event.code, event.reason)
                return
        if pongs:
            transport = self._transport
            transport.write(pongs)
            if transport.get_write_buffer_size() > self._max_pending:
                self._overflow()  # pings sent by a peer that reads nothing
                return
        if frames and self._flooding(frames):
            self._flooded()
            return
        transport = self._transport
        if starved:
            if decoder.idle:
                self._decoder = None
            if self._paused:
                self._paused = False
                transport.resume_reading()
        elif not self._paused:
            self._paused = True
            transport.pause_reading()

    def _flooding(self, frames: int) -> bool:
        """Count `frames` against the flood limit (generic cell rate: a burst of flood_burst
        frames, flood_rate per second on average, never less than twice the app's
        client_event_rate)."""
        srv = self._srv
        rate = max(srv.flood_rate, 2.0 * self.app.client_event_rate)
        now = srv.loop.time()
        tat = max(self._tat, now) + frames / rate
        self._tat = tat
        return tat - now > srv.flood_burst / rate

    def _peer_closed(self, code: int) -> None:
        """The peer's close frame: answered with its code (none given: 1000), then closed."""
        if self._state == CLOSING:  # the answer to ours: the handshake is complete
            self._state = GONE
            self._decoder = None
            self._transport.close()
            return
        self._end(close_frame(CloseCode.NORMAL if code == CloseCode.NO_STATUS else code))

    def connection_lost(self, exc: Exception | None) -> None:
        was = self._state
        self._state = GONE
        self._decoder = None
        if was == OPEN:
            self.deliver(_LOST)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # Handling messages, one at a time --------------------------------------------------------
    def deliver(self, item: str | int) -> None:
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(item)
            if type(item) is str:
                self._queued += len(item)
            return
        self._busy = True
        task = self._srv.loop.create_task(self._drive(item))
        tasks = self._srv.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _drive(self, item: str | int) -> None:
        handler = self._srv.handler
        while True:
            try:
                if type(item) is str:
                    if self._opened:
                        await handler.on_text(self, item)
                elif item == _OPENED:
                    await self._open()
                elif item == _BINARY:
                    if self._opened:
                        handler.on_binary(self)
                else:
                    await self._lost()
                    return
            except Exception:  # one socket's failure never escapes
                log.exception("error on connection %s", self)
            inbox = self._inbox
            if not inbox:
                self._busy = False
                return
            item = inbox.popleft()
            if type(item) is str:
                self._queued -= len(item)
            if not inbox:
                self._inbox = None
            if (
                self._paused
                and len(inbox) <= INBOX_ITEMS // 2
                and self._queued <= INBOX_BYTES // 2
            ):
                self._pump()  # decode on: reading resumes once the bytes read are decoded
            await asyncio.sleep(0)  # the other sockets' turn between two messages

    async def _open(self) -> None:
        srv = self._srv
        try:
            await srv.handler.open(self)
        except PusherError:
            srv.metrics.connections_refused += 1  # the handler sent the error and closed
            return
        except Exception:
            log.exception("error opening connection %s", self)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        self._opened = True
        srv.metrics.connections_opened += 1

    async def _lost(self) -> None:
        srv = self._srv
        try:
            if self._opened:
                await srv.handler.on_close(self)
        finally:
            self.closed = True
            self._inbox = None
            srv.addresses.closed(self._ip)
            srv.active -= 1
