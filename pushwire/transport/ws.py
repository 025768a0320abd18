"""WebSocket transport on aiohttp: the `/app/{key}` endpoint and coalesced writes.

`ws_transport = "aiohttp"` serves sockets here; the default, `"raw"` (`rawws.py`), serves them
on its own protocol but shares this module's `Flusher`, `QueuedConnection` (the send path),
`AddressLimits` and the `WsEndpoint`'s counters.

Why writes look like this: on these machines broadcast fan-out is bound by the kernel's cost
per write, so a socket's frames that become pending within one event-loop tick are joined and
written with one `transport.write` (5-7x the messages/s of one write per message). Frames are
encoded once per message (`Outbound.wire`) and shared by every recipient; permessage-deflate
is declined (`compress=False`) so a shared frame is valid on every connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ..connection import Connection
from ..handler import PusherHandler, new_socket_id
from ..metrics import Metrics
from ..protocol import messages
from ..protocol.errors import ConnectionUnauthorized, OverCapacity, PusherError
from ..protocol.frames import Outbound, close_frame, close_reason

if TYPE_CHECKING:
    from ..apps.model import App
    from ..config import ServerConfig

log = logging.getLogger("pushwire.ws")


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
        transport = self._transport
        err = OverCapacity("Over capacity: the client is not reading its messages fast enough")
        transport.write(messages.error(err).wire + close_frame(err.code or 4100, err.message))
        transport.close()  # flushes what it can; abort if the peer never reads it
        asyncio.get_running_loop().call_later(2.0, transport.abort)


class WsConnection(QueuedConnection):
    """A socket served by aiohttp's `WebSocketResponse` (`ws_transport = "aiohttp"`)."""

    __slots__ = ("_closing_tasks", "_ws")

    def __init__(
        self,
        app: App,
        socket_id: str,
        now: float,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        flusher: Flusher,
        max_pending: int,
        closing_tasks: set[asyncio.Task[None]],
    ) -> None:
        super().__init__(app, socket_id, now, transport, flusher, max_pending)
        self._ws = ws
        self._closing_tasks = closing_tasks

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # queued frames (e.g. the pusher:error) go out before the close frame
        self.closed = True
        task = asyncio.ensure_future(self._close(code, reason))
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._ws.close(code=code, message=close_reason(reason))
        except Exception:  # the peer may already be gone
            self._transport.abort()


class AddressLimits:
    """Per client address (on this node): open WebSockets and new ones per second. The
    address is the peer's, or the one a trusted proxy puts last in X-Forwarded-For."""

    def __init__(self, server: ServerConfig, metrics: Metrics, clock: Callable[[], float]):
        self.max_open = server.max_connections_per_ip
        self.rate = server.max_new_connections_per_ip_per_sec
        self.metrics = metrics
        self.clock = clock
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in server.trusted_proxies]
        self.open: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def client_ip(self, request: web.Request) -> str:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        return self.client_ip_of(request.remote or "", forwarded)

    def client_ip_of(self, peer: str, forwarded_for: list[str]) -> str:
        """The client's address: `peer`, or from the X-Forwarded-For headers' values when
        `peer` is a trusted proxy."""
        if not self.proxies or not self._trusted(peer):
            return peer
        # walk X-Forwarded-For from the right, past our own proxies
        joined = ",".join(forwarded_for)  # every header
        hops = [h.strip() for h in joined.split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._trusted(hop):
                return hop
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def admit(self, ip: str) -> None:
        """Raise OverCapacity (4100: the client retries with backoff) past a limit."""
        if self.max_open and self.open.get(ip, 0) >= self.max_open:
            self.metrics.refused["ip_connections"] += 1
            raise OverCapacity(f"Over capacity: at most {self.max_open} connections per address")
        if self.rate:
            now = self.clock()
            tokens, at = self.buckets.get(ip, (self.rate, now))
            tokens = min(self.rate, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self.buckets[ip] = (tokens, now)
                self.metrics.refused["ip_rate"] += 1
                raise OverCapacity(
                    f"Over capacity: at most {self.rate:g} new connections per second per address"
                )
            self.buckets[ip] = (tokens - 1.0, now)
            if len(self.buckets) > 100_000:  # forget full buckets (idle addresses)
                rate = self.rate
                self.buckets = {
                    k: v for k, v in self.buckets.items() if v[0] + (now - v[1]) * rate < rate
                }

    def opened(self, ip: str) -> None:
        if self.max_open:
            self.open[ip] = self.open.get(ip, 0) + 1

    def closed(self, ip: str) -> None:
        if self.max_open:
            n = self.open.get(ip, 0) - 1
            if n > 0:
                self.open[ip] = n
            else:
                self.open.pop(ip, None)


class WsEndpoint:
    def __init__(self, handler: PusherHandler, metrics: Metrics) -> None:
        self.handler = handler
        self.metrics = metrics
        self.addresses = AddressLimits(handler.config.server, metrics, handler.clock)
        server = handler.config.server
        self.flusher = Flusher(metrics, server.flush_slice)
        self.closing_tasks: set[asyncio.Task[None]] = set()
        self.active = 0  # connections whose handler is running
        server = handler.config.server
        self.max_frame = server.max_frame_size
        self.max_pending = server.max_pending_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            autoping=True, compress=False, max_msg_size=self.max_frame + 1, heartbeat=None
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": "This endpoint only speaks WebSocket (Pusher protocol 7)"}, status=400
            )
        await ws.prepare(request)
        handler = self.handler
        ip = self.addresses.client_ip(request)
        try:
            self.addresses.admit(ip)
            app = handler.check_handshake(
                request.match_info["key"], request.query, request.headers.get("Origin")
            )
        except PusherError as exc:
            self.metrics.connections_refused += 1
            if isinstance(exc, ConnectionUnauthorized) and "Origin" in exc.message:
                self.metrics.refused["origin"] += 1
            await ws.send_str(messages.error(exc).payload.decode())
            await ws.close(code=exc.code or 4000, message=close_reason(exc.message))
            return ws
        self.addresses.opened(ip)
        try:
            return await self._serve(request, ws, app)
        finally:
            self.addresses.closed(ip)

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, app: App
    ) -> web.WebSocketResponse:
        handler = self.handler
        transport = request.transport
        assert transport is not None
        conn = WsConnection(
            app,
            new_socket_id(),
            handler.clock(),
            ws,
            transport,
            self.flusher,
            self.max_pending,
            self.closing_tasks,
        )
        self.active += 1
        try:
            return await self._run(ws, conn)
        finally:
            self.active -= 1

    async def _run(self, ws: web.WebSocketResponse, conn: WsConnection) -> web.WebSocketResponse:
        handler = self.handler
        try:
            await handler.open(conn)
        except PusherError:
            self.metrics.connections_refused += 1
            await asyncio.gather(*self.closing_tasks, return_exceptions=True)
            return ws
        self.metrics.connections_opened += 1
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.metrics.frames_in += 1
                    self.metrics.bytes_in += len(msg.data)
                    await handler.on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    handler.on_binary(conn)
                elif msg.type is WSMsgType.ERROR:
                    break
        except Exception:  # never let one socket's failure escape into aiohttp's logs
            log.exception("error on connection %s", conn)
        finally:
            await handler.on_close(conn)
        return ws


WS_ENDPOINT = web.AppKey("pushwire_ws_endpoint", WsEndpoint)  # for the raw transport's site
