"""The WebSocket endpoint `/app/{key}`: the handshake's checks (app, origin, protocol,
per-address limits), the 101, and the socket's `RawWsConnection` (transport/rawws.py).

An upgrade comes in two ways, and both end in the same code: the raw listener
(transport/fastpath.py) reads most upgrades itself and calls `WsEndpoint.accept`; an upgrade
that reaches aiohttp (on a kept-alive connection aiohttp already served, or with a head the
raw listener leaves to aiohttp) is answered by `WsEndpoint.handle`, which hands the connection's
bytes to the same `RawWsConnection` through aiohttp's `RequestHandler.set_parser` (the hook
aiohttp's own WebSocketResponse uses; tests/server/test_rawws.py fails if an aiohttp upgrade
breaks it). aiohttp's WebSocket reader is not used for `/app/`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from ..handler import PusherHandler, new_socket_id
from ..metrics import Metrics
from ..protocol import messages
from ..protocol.errors import ConnectionUnauthorized, OverCapacity, PusherError
from ..protocol.websocket import close_frame, switching_protocols
from .rawws import RawWsConnection, Refused
from .writes import Flusher

if TYPE_CHECKING:
    from ..config import ServerConfig

FLOOD_RATE = 1000.0  # frames per second one socket may send on average (see rawws.py)
FLOOD_BURST = 10_000  # and at once


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
        self.needed = bool(self.max_open or self.rate)  # else every method here is a no-op
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
    """What every socket shares: the handler, the write path, the limits, the counters, and
    the tasks handling messages."""

    def __init__(
        self,
        handler: PusherHandler,
        metrics: Metrics,
        flood_rate: float = FLOOD_RATE,
        flood_burst: int = FLOOD_BURST,
    ) -> None:
        server = handler.config.server
        self.handler = handler
        self.metrics = metrics
        self.addresses = AddressLimits(server, metrics, handler.clock)
        self.flusher = Flusher(metrics, server.flush_slice)
        self.max_frame = server.max_frame_size
        self.max_pending = server.max_pending_bytes
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst
        self.active = 0  # connections whose handler is running
        self.tasks: set[asyncio.Task[None]] = set()  # handling messages

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def accept(
        self,
        transport: asyncio.Transport,
        ws_key: str,
        app_key: str,
        query: Mapping[str, str],
        origin: str | None,
        forwarded_for: list[str],
    ) -> asyncio.Protocol:
        """Answer a valid upgrade request (101) and admit the socket, or refuse it (a
        `pusher:error` and a close frame). Returns the protocol that takes the connection's
        bytes from here on: the socket's `RawWsConnection`, or `Refused`."""
        transport.write(switching_protocols(ws_key))
        # (SO_KEEPALIVE, which finds peers that vanished, comes from the listening socket)
        ip = ""  # the client's address matters to the per-address limits only
        if self.addresses.needed:
            peername = transport.get_extra_info("peername")
            peer = str(peername[0]) if isinstance(peername, list | tuple) else ""
            ip = self.addresses.client_ip_of(peer, forwarded_for)
        try:
            self.addresses.admit(ip)
            app = self.handler.check_handshake(app_key, query, origin)
        except PusherError as exc:
            self.metrics.connections_refused += 1
            if isinstance(exc, ConnectionUnauthorized) and "Origin" in exc.message:
                self.metrics.refused["origin"] += 1
            transport.write(messages.error(exc).wire + close_frame(exc.code or 4000, exc.message))
            return Refused(transport, self.loop)
        self.addresses.opened(ip)
        self.active += 1
        conn = RawWsConnection(app, new_socket_id(), self.handler.clock(), transport, self, ip)
        conn.start()
        return conn

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /app/{key}` through aiohttp (see the module docstring)."""
        transport = request.transport
        if transport is None or not web.WebSocketResponse().can_prepare(request).ok:
            return web.json_response(
                {"error": "This endpoint only speaks WebSocket (Pusher protocol 7)"}, status=400
            )
        feed = Feed(
            self.accept(
                transport,
                request.headers["Sec-WebSocket-Key"],
                request.match_info["key"],
                request.query,
                request.headers.get("Origin"),
                request.headers.getall("X-Forwarded-For", []),
            ),
            self.loop.create_future(),
        )
        request.protocol.set_parser(feed)  # type: ignore[arg-type]
        await feed.gone
        return web.Response()  # never written: the connection is closed


class Feed:
    """The parser aiohttp's RequestHandler takes after an upgrade (`set_parser`): the bytes it
    reads go to `protocol`, and its end resolves `gone`."""

    __slots__ = ("gone", "protocol")

    def __init__(self, protocol: asyncio.Protocol, gone: asyncio.Future[None]) -> None:
        self.protocol = protocol
        self.gone = gone

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.protocol.data_received(data)
        return False, b""

    def feed_eof(self) -> None:
        self.protocol.connection_lost(None)
        if not self.gone.done():
            self.gone.set_result(None)


WS_ENDPOINT = web.AppKey("pushwire_ws_endpoint", WsEndpoint)  # for the raw listener's site
