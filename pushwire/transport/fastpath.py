"""The raw listener: every TCP connection starts with a `HeadReader`, which reads its first
request head itself, bounded in size (`MAX_HEAD`) and time (`handshake_timeout`), and then:

- a plain RFC 6455 upgrade to `/app/{key}` (transport/httphead.py) goes to the WebSocket
  endpoint (transport/ws.py: the 101, then the socket's `RawWsConnection`);
- a plain REST trigger is served here: the REST fast path (below);
- anything else (other REST calls, /metrics, pages, the dashboard, a malformed or unusual
  request, even an odd upgrade) is handed to aiohttp on the same connection, with the bytes
  already read, so aiohttp answers it exactly as it would have.

TLS sits below the protocol, so it works unchanged.

REST fast path (`[server] rest_fast_path = false`, or `PUSHWIRE_REST_FAST_PATH=0`, turns it
off): a plain `POST /apps/{app_id}/events` or `/batch_events` (HTTP/1.1, one Content-Length,
no Transfer-Encoding, Expect, Upgrade, Content-Encoding or Connection other than keep-alive,
a path without percent-escapes, nothing odd) is served by the same `RestRoute.direct` that
aiohttp's direct dispatch calls (so the same checks, in the same order, with the same answers
and counters), and answered with the same bytes aiohttp writes (`rest.wire`). The body must
have come with the head: a body still on its way goes to aiohttp, which checks the signature
first and then reads it, as without the fast path. The connection stays here for the next
request (keep-alive, pipelined requests answered in order, idle for at most
`handshake_timeout`; an upgrade too) until the first request neither the fast path nor the
WebSocket endpoint takes: from there on, aiohttp serves the connection, starting with every
byte not consumed yet. Any doubt about a head (size, syntax, obs-fold, a repeated
Content-Length) hands it to aiohttp, which judges it as it always did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from aiohttp import web
from yarl import URL

from .http import client_error
from .httphead import PREFIX, REQUEST_START_RE, RestCall, Upgrade, parse_rest, parse_upgrade
from .rest import RestRoute, wire
from .ws import WS_ENDPOINT, WsEndpoint

log = logging.getLogger("pushwire.ws")

MAX_HEAD = 16384  # bytes of a request head read here; a longer one is aiohttp's to judge
READ_AHEAD = 65536  # pipelined bytes buffered while an answer is pending (then: pause reading)
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 55\r\nConnection: close\r\n\r\n"
    b"500 Internal Server Error\n\nServer got itself in trouble"
)



class FastRequest:
    """What `RestApi._run` reads from a request, for a fast-path call whose body is whole."""

    __slots__ = ("_body", "content_length", "path", "query", "raw_path")

    method = "POST"

    def __init__(self, call: RestCall, body: bytes) -> None:
        self.raw_path = call.target
        self.path = call.target.partition("?")[0]  # no percent-escape: as sent
        self.query = URL.build(query_string=call.query, encoded=True).query  # as aiohttp's
        self.content_length = call.length
        self._body = body

    @property
    def can_read_body(self) -> bool:
        return bool(self._body)

    @property
    def content(self) -> FastRequest:
        return self

    def is_eof(self) -> bool:
        return True  # the whole body is in memory

    async def read(self) -> bytes:
        return self._body



class RawServer:
    """What the raw listener's connections share: the WebSocket endpoint, the aiohttp server
    that takes every other request, the REST fast path's routes and its connections."""

    def __init__(self, http: web.Server, endpoint: WsEndpoint) -> None:
        server = endpoint.handler.config.server
        self.http = http
        self.endpoint = endpoint
        self.metrics = endpoint.metrics
        self.handshake_timeout = server.handshake_timeout
        self.websocket = server.role in ("all", "websocket")
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()  # fast-path requests being served
        # the REST fast path: the routes aiohttp's direct dispatch serves (none when it cannot)
        self.rest: dict[str, RestRoute] = {}
        if server.rest_fast_path:
            for tail, direct in getattr(http, "direct", {}).items():
                owner = getattr(direct, "__self__", None)
                if isinstance(owner, RestRoute):
                    self.rest[tail] = owner
        self.kept: set[HeadReader] = set()  # idle keep-alive connections of the fast path

    def protocol(self) -> HeadReader:
        return HeadReader(self)

    def hand_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """Let aiohttp serve this connection from here on, starting with `data`."""
        handler = self.http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def upgrade(self, transport: asyncio.Transport, req: Upgrade, rest: bytes) -> None:
        query = URL.build(query_string=req.query, encoded=True).query
        protocol = self.endpoint.accept(
            transport,
            req.ws_key,
            req.app_key,
            query,
            req.header("origin"),
            req.headers.get("x-forwarded-for", []),
        )
        transport.set_protocol(protocol)
        if rest:
            protocol.data_received(rest)


class HeadReader(asyncio.Protocol):
    """A connection until its first request aiohttp or the WebSocket takes: reads request
    heads, upgrades a WebSocket (first request only), serves REST fast-path calls."""

    __slots__ = (
        "_buf",
        "_busy",
        "_done",
        "_rpaused",
        "_served",
        "_srv",
        "_timer",
        "_transport",
        "_wpaused",
    )

    def __init__(self, srv: RawServer) -> None:
        self._srv = srv
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._served = False  # a fast-path request was answered (keep-alive from here)
        self._busy = False  # a fast-path request is being served
        self._done = False  # handed over, upgraded or lost: nothing more to do here
        self._rpaused = False  # reading paused (pipelined bytes waiting, or a slow reader)
        self._wpaused = False  # the transport's write buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._timer = self._srv.loop.call_later(self._srv.handshake_timeout, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._done = True
        self._buf = b""
        self._srv.kept.discard(self)

    def pause_writing(self) -> None:
        self._wpaused = True

    def resume_writing(self) -> None:
        self._wpaused = False
        if not self._busy and not self._done:
            self._resume()
            self._next()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if self._served:  # an idle keep-alive connection: closed, as aiohttp does
            self._transport.close()
            return
        client_error(self._srv.metrics, "handshake_timeout", "connection sent no request in time")
        self._transport.abort()

    def _resume(self) -> None:
        if self._rpaused and self._transport is not None:
            self._rpaused = False
            self._transport.resume_reading()

    def _hand_over(self) -> None:
        transport = self._transport
        assert transport is not None
        self._stop_timer()
        self._resume()
        self._done = True
        self._srv.kept.discard(self)
        buf, self._buf = self._buf, b""
        self._srv.hand_over(transport, buf)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buf = self._buf + data if self._buf else data
        if self._busy or self._wpaused:  # answered in order, once the current one is
            if len(self._buf) > MAX_HEAD + READ_AHEAD and not self._rpaused:
                self._rpaused = True
                assert self._transport is not None
                self._transport.pause_reading()
            return
        self._next()

    def _next(self) -> None:
        """Act on the buffered bytes: wait for more, upgrade, serve, or hand over."""
        buf = self._buf
        transport = self._transport
        assert transport is not None
        srv = self._srv
        if not buf:
            if self._timer is None:  # idle between kept-alive requests
                self._timer = srv.loop.call_later(srv.handshake_timeout, self._expire)
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            # wait for the whole head (within the handshake or keep-alive timeout), unless
            # aiohttp can judge it now: too long, bare line feeds, or not an HTTP request line
            if len(buf) > MAX_HEAD or b"\n\n" in buf or not REQUEST_START_RE.match(buf):
                self._hand_over()
            elif self._timer is None:
                self._timer = srv.loop.call_later(srv.handshake_timeout, self._expire)
            return
        if srv.websocket and buf.startswith(PREFIX):
            req = parse_upgrade(buf[:end])
            if req is not None:  # the first request, or one after fast-path answers
                self._stop_timer()
                self._resume()
                self._done = True
                srv.kept.discard(self)
                self._buf = b""
                srv.upgrade(transport, req, buf[end + 4 :])
                return
        call = parse_rest(buf[:end], srv.rest) if srv.rest else None
        if call is None:
            self._hand_over()  # the head is whole: aiohttp's timer stops at once
            return
        start = end + 4
        if len(buf) - start < call.length:
            # a body still on its way: aiohttp reads it, after it checked the signature (a
            # badly signed request is refused at once, and the wait counts in the body
            # budget and body_timeout once)
            self._hand_over()
            return
        self._stop_timer()
        body = buf[start : start + call.length]
        self._buf = buf[start + call.length :]
        self._busy = True
        srv.kept.discard(self)
        task = srv.loop.create_task(self._serve(call, body))
        srv.tasks.add(task)
        task.add_done_callback(srv.tasks.discard)

    async def _serve(self, call: RestCall, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            # FastRequest has every attribute RestApi._run reads from a web.Request
            request = cast(web.Request, FastRequest(call, body))
            answer = wire(await call.route.direct(request, call.app_id))
        except Exception:
            log.exception("error serving %s", call.target.partition("?")[0])
            self._done = True
            transport.write(INTERNAL_ERROR)
            transport.close()
            return
        finally:
            self._busy = False
        if self._done:  # the connection was lost meanwhile
            return
        transport.write(answer)
        self._served = True
        if self._wpaused:  # a client that does not read its answers is not read either
            if not self._rpaused:
                self._rpaused = True
                transport.pause_reading()
            return
        self._resume()
        if not self._buf:
            self._srv.kept.add(self)
        self._next()

    def close_idle(self) -> None:
        """Server shutdown: close this kept-alive connection if it waits for a request."""
        if not self._busy and not self._done and self._transport is not None:
            self._transport.close()



class RawSite(web.TCPSite):
    """A TCPSite whose connections start with a `HeadReader` (see the module docstring)."""

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        raw = RawServer(runner.server, runner.app[WS_ENDPOINT])
        # role = "api" without the REST fast path: every connection is aiohttp's at once
        factory = raw.protocol if raw.websocket or raw.rest else runner.server
        self._raw = raw
        self._server = await raw.loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        for sock in sockets:  # inherited by every accepted socket: peers that vanish are found
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        raw = getattr(self, "_raw", None)
        if raw is not None:  # kept-alive fast-path connections are not aiohttp's to close
            for reader in list(raw.kept):
                reader.close_idle()
