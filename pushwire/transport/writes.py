"""The write path of every WebSocket: frames queued per socket, written with one write per
socket per event-loop tick.

Why writes look like this: on these machines broadcast fan-out is bound by the kernel's cost
per write, so a socket's frames that become pending within one event-loop tick are joined and
written with one `transport.write` (5-7x the messages/s of one write per message). Frames are
encoded once per message (`Outbound.wire`) and shared by every recipient; permessage-deflate
is declined, so a shared frame is valid on every connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..connection import Connection
from ..metrics import Metrics
from ..protocol import messages
from ..protocol.errors import OverCapacity
from ..protocol.frames import Outbound
from ..protocol.websocket import close_frame

if TYPE_CHECKING:
    from ..apps.model import App

log = logging.getLogger("pushwire.ws")

ABORT_AFTER = 2.0  # seconds a closed socket's last frames may take to leave before an abort


class Flusher:
    """Writes every connection's pending frames with one write per connection per round.

    A round starts on the next loop tick after a frame is queued. A large round (a fan-out
    to thousands of sockets costs ~10 us of kernel time per write here) is cut into slices
    of `slice_s` seconds with the event loop free in between, so requests keep being served
    during a round: a frame for a socket the round has not reached yet rides in the same
    write; a socket already written waits for the next round. Under load many events thus
    share each write, with no timer and no added delay when the server is idle.
    """

    def __init__(self, metrics: Metrics, slice_s: float = 0.0005) -> None:
        self.metrics = metrics
        self.dirty: list[QueuedConnection] = []
        self.current: list[QueuedConnection] = []
        self.index = 0
        self.scheduled = False
        self.slice_s = slice_s

    def mark(self, conn: QueuedConnection) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        cur, i = self.current, self.index
        if i >= len(cur):
            cur, i = self.dirty, 0
            self.dirty = []
        n = len(cur)
        deadline = time.monotonic() + self.slice_s
        while i < n:
            cur[i].flush()
            i += 1
            if not i & 63 and time.monotonic() > deadline:
                break
        if i < n:
            self.current, self.index = cur, i
            asyncio.get_running_loop().call_soon(self.flush)
            return
        self.current, self.index = [], 0
        if self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self.scheduled = False


class QueuedConnection(Connection):
    """A connection whose frames are queued by `send` and written by the `Flusher`: nothing
    is allocated per socket while nothing is pending. Subclasses implement `close`."""

    __slots__ = ("_flusher", "_max_pending", "_pending", "_transport")

    def __init__(
        self,
        app: App,
        socket_id: str,
        now: float,
        transport: asyncio.Transport,
        flusher: Flusher,
        max_pending: int,
    ) -> None:
        super().__init__(app, socket_id, now)
        self._transport = transport
        self._flusher = flusher
        self._max_pending = max_pending
        self._pending: bytes | list[bytes] | None = None

    def send(self, msg: Outbound) -> None:
        if self.closed:
            return
        self._flusher.metrics.frames_out += 1
        # One pending frame is kept as bytes, more as a list: most rounds carry one frame per
        # socket, and not allocating a list per recipient keeps the garbage collector quiet.
        pending = self._pending
        if pending is None:
            self._pending = msg.wire
            self._flusher.mark(self)
        elif isinstance(pending, bytes):
            self._pending = [pending, msg.wire]
        else:
            pending.append(msg.wire)

    def flush(self) -> None:
        pending = self._pending
        self._pending = None
        if pending is None:
            return
        transport = self._transport
        if transport.is_closing():
            return
        data = pending if isinstance(pending, bytes) else b"".join(pending)
        transport.write(data)
        metrics = self._flusher.metrics
        metrics.writes += 1
        metrics.bytes_out += len(data)
        if transport.get_write_buffer_size() > self._max_pending:
            self._overflow()

    def _overflow(self) -> None:
        """The client stopped reading: drop it rather than buffer without limit."""
        log.warning(
            "closing %s/%s: more than %d bytes unsent (client not reading)",
            self.app.id,
            self.socket_id,
            self._max_pending,
        )
        self.closed = True
        self._flusher.metrics.slow_consumers_closed += 1
        err = OverCapacity("Over capacity: the client is not reading its messages fast enough")
        self._shut(messages.error(err).wire + close_frame(err.code or 4100, err.message))

    def _shut(self, last: bytes) -> None:
        """Write `last` (the closing frames) and close the TCP connection at once: nothing
        more is read; an abort follows if the peer does not take `last` in ABORT_AFTER s."""
        transport = self._transport
        if transport.is_closing():
            return
        transport.write(last)
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(ABORT_AFTER, transport.abort)

