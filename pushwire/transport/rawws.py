"""WebSocket transport on a plain `asyncio.Protocol` (`[server] ws_transport = "raw"`).

aiohttp keeps ~13.5 KB per open WebSocket (request, protocol, parser, reader, writer,
response objects and their buffers). Here an idle subscribed socket is one object, which is
both the transport's protocol and the `Connection` the handler sees, and holds no buffer,
timer or task while nothing is pending.

The listening protocol (`HeadReader`) reads the first request head of each new TCP connection
itself, bounded in size (`MAX_HEAD`) and time (`handshake_timeout`). A clean RFC 6455 upgrade
to `/app/{key}` is answered here; anything else (REST, /metrics, pages, the dashboard, a
malformed or unusual request, even an odd upgrade) is handed to aiohttp on the same
connection, with the bytes already read, so aiohttp answers it exactly as it would have.
TLS sits below the protocol, so it works unchanged.

REST fast path (on with `ws_transport = "raw"`; `[server] rest_fast_path = false`, or
`PUSHWIRE_REST_FAST_PATH=0`, turns it off): a plain `POST /apps/{app_id}/events` or
`/batch_events` (HTTP/1.1, one Content-Length, no Transfer-Encoding, Expect, Upgrade,
Content-Encoding or Connection other than keep-alive, a path without percent-escapes, nothing
odd) is served here too, by the same `RestRoute.direct` that aiohttp's direct dispatch calls
(so the same checks, in the same order, with the same answers and counters), and answered with
the same bytes aiohttp writes (`rest.wire`). The body must have come with the head: a body
still on its way goes to aiohttp, which checks the signature first and then reads it, as
without the fast path. The connection stays here for
the next request (keep-alive, pipelined requests answered in order, idle for at most
`handshake_timeout`) until the first request the fast path does not take: from there on,
aiohttp serves the connection, starting with every byte not consumed yet. Any doubt about a
head (size, syntax, obs-fold, a repeated Content-Length) hands it to aiohttp, which judges it
as it always did: the fast path never parses a request differently from aiohttp.

Frames: client frames must be masked; fragmented messages are joined; control frames may
come between fragments; a message longer than `max_frame_size` closes with 1009 (its payload
is skipped, never buffered), text that is not UTF-8 with 1007, other protocol errors with
1002. Ping is answered with pong. Closing waits for the peer's close frame (at most
`CLOSE_TIMEOUT` seconds). Outbound frames go through the same `Flusher` as the aiohttp
transport: one write per socket per loop tick. Inbound messages are handled one at a time,
in order, by a task that exists only while a socket has messages to handle.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import socket
from typing import TYPE_CHECKING, cast

from aiohttp import web
from yarl import URL

from ..handler import new_socket_id
from ..protocol import messages
from ..protocol.errors import ConnectionUnauthorized, PusherError
from ..protocol.frames import close_frame
from .http import client_error
from .rest import RestRoute, wire
from .ws import WS_ENDPOINT, Flusher, QueuedConnection, WsEndpoint

if TYPE_CHECKING:
    from ..apps.model import App

log = logging.getLogger("pushwire.ws")

MAX_HEAD = 16384  # bytes of a request head read here; a longer one is aiohttp's to judge
CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame before dropping the socket
INBOX_HIGH = 65536  # queued inbound text (characters) past which reading pauses
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PREFIX = b"GET /app/"
KEY_RE = re.compile(r"[A-Za-z0-9._~-]+")  # app keys taken as they are (no %-decoding needed)
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
REQUEST_START_RE = re.compile(rb"[A-Z]{1,20}(?: |$)")  # what an HTTP request starts with

# REST fast path
READ_AHEAD = 65536  # pipelined bytes buffered while an answer is pending (then: pause reading)
MAX_FIELDS = 100  # header lines a fast-path head may have (more: aiohttp judges it)
MAX_LINE = 8190  # and their length (aiohttp's own limit)
REST_TARGET_RE = re.compile(
    r"/apps/([A-Za-z0-9_~-][A-Za-z0-9._~-]*)/([a-z_]+)(?:\?([A-Za-z0-9._~!$&'()*+,;=:@/?%-]*))?"
)
QUERY_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")  # a query as RFC 3986 allows it
REST_REFUSED = frozenset(
    ("transfer-encoding", "expect", "upgrade", "content-encoding", "te", "trailer")
)
# headers aiohttp refuses to see twice (RFC 9110 singletons): a repeated one is aiohttp's
SINGLETONS = frozenset(
    (
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    )
)
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 55\r\nConnection: close\r\n\r\n"
    b"500 Internal Server Error\n\nServer got itself in trouble"
)

# opcodes
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# socket states
OPEN, CLOSING, GONE = 0, 1, 2
# inbox items besides text messages
_OPENED, _BINARY, _LOST = 0, 1, 2


class Upgrade:
    """A parsed WebSocket upgrade request."""

    __slots__ = ("app_key", "headers", "query", "ws_key")

    def __init__(self, app_key: str, query: str, headers: dict[str, list[str]], ws_key: str):
        self.app_key = app_key
        self.query = query
        self.headers = headers
        self.ws_key = ws_key

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def _plain_lines(head: bytes) -> list[str] | None:
    """The lines of a request head that aiohttp would take as they are: ASCII, at most
    MAX_FIELDS header lines of at most MAX_LINE bytes (the request line too); None for any
    other head (aiohttp judges it, and answers 400 where it must)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if len(lines) > MAX_FIELDS + 1 or any(len(line) > MAX_LINE for line in lines):
        return None
    return lines


def parse_upgrade(head: bytes) -> Upgrade | None:
    """The upgrade request in `head` (without the blank line), or None when it is anything
    else than a plain, well-formed RFC 6455 upgrade to /app/{key}: aiohttp takes those."""
    lines = _plain_lines(head)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
        return None
    path, _, query = parts[1].partition("?")
    app_key = path[5:]
    if (
        not path.startswith("/app/")
        or not KEY_RE.fullmatch(app_key)
        or not QUERY_RE.fullmatch(query)  # no '#', control characters, DEL, tabs, spaces
    ):
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.fullmatch(name) or BAD_VALUE_RE.search(value):
            return None
        lname = name.lower()
        if lname in SINGLETONS and lname in headers:
            return None  # a repeated Host, Content-Length...: aiohttp refuses it
        headers.setdefault(lname, []).append(value.strip(" \t"))
    if "host" not in headers:  # aiohttp refuses HTTP/1.1 without Host
        return None

    def one(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values is not None and len(values) == 1 else None

    upgrade = one("upgrade")
    tokens = {t.strip().lower() for v in headers.get("connection", ()) for t in v.split(",")}
    ws_key = one("sec-websocket-key")
    if (
        upgrade is None
        or upgrade.lower() != "websocket"
        or "upgrade" not in tokens
        or one("sec-websocket-version") != "13"
        or ws_key is None
        or "transfer-encoding" in headers
        or headers.get("content-length", ["0"]) != ["0"]
    ):
        return None
    try:
        if len(base64.b64decode(ws_key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return Upgrade(app_key, query, headers, ws_key)


class RestCall:
    """A request head the REST fast path takes."""

    __slots__ = ("app_id", "length", "query", "route", "target")

    def __init__(self, route: RestRoute, app_id: str, target: str, query: str, length: int):
        self.route = route
        self.app_id = app_id
        self.target = target
        self.query = query
        self.length = length


def parse_rest(head: bytes, routes: dict[str, RestRoute]) -> RestCall | None:
    """The fast-path REST call in `head` (without the blank line), or None for anything else:
    aiohttp takes those, exactly as without the fast path."""
    if not head.startswith(b"POST /apps/"):
        return None
    lines = _plain_lines(head)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        return None
    m = REST_TARGET_RE.fullmatch(parts[1])
    if m is None:
        return None
    route = routes.get(m[2])
    if route is None:
        return None
    length = -1
    seen: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if (
            not sep
            or len(line) > MAX_LINE
            or not TOKEN_RE.fullmatch(name)
            or BAD_VALUE_RE.search(value)
        ):
            return None  # obs-fold, bare CR, control characters, no colon...
        lname = name.lower()
        if lname in REST_REFUSED:
            return None
        if lname in SINGLETONS:
            if lname in seen:
                return None  # a repeated Content-Length, Host, ...
            seen.add(lname)
        if lname == "content-length":
            value = value.strip(" \t")
            if not value.isdigit() or len(value) > 12:
                return None  # signed, spaced, hexadecimal or absurd
            length = int(value)
        elif lname == "connection" and value.strip(" \t").lower() != "keep-alive":
            return None
    if length < 0 or "host" not in seen:  # aiohttp refuses HTTP/1.1 without Host
        return None
    return RestCall(route, m[1], parts[1], m[3] or "", length)


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


def accept_key(ws_key: str) -> bytes:
    return base64.b64encode(hashlib.sha1(ws_key.encode() + GUID).digest())


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def valid_close_code(code: int) -> bool:
    """Codes a peer may send in a close frame (RFC 6455 section 7.4)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class RawServer:
    """What the raw protocols share: the endpoint (handler, flusher, limits, counters), the
    aiohttp server that takes every other request, and the tasks handling messages."""

    def __init__(self, http: web.Server, endpoint: WsEndpoint) -> None:
        server = endpoint.handler.config.server
        self.http = http
        self.endpoint = endpoint
        self.handler = endpoint.handler
        self.metrics = endpoint.metrics
        self.addresses = endpoint.addresses
        self.flusher: Flusher = endpoint.flusher
        self.max_message = endpoint.max_frame
        self.max_pending = endpoint.max_pending
        self.handshake_timeout = server.handshake_timeout
        self.websocket = server.role in ("all", "websocket")
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.body_timeout = server.body_timeout
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
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(req.ws_key) + b"\r\n\r\n"
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp does: find peers that vanished
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, list | tuple) else ""
        ip = self.addresses.client_ip_of(peer, req.headers.get("x-forwarded-for", []))
        query = URL.build(query_string=req.query, encoded=True).query
        try:
            self.addresses.admit(ip)
            app = self.handler.check_handshake(req.app_key, query, req.header("origin"))
        except PusherError as exc:
            self.metrics.connections_refused += 1
            if isinstance(exc, ConnectionUnauthorized) and "Origin" in exc.message:
                self.metrics.refused["origin"] += 1
            transport.write(messages.error(exc).wire + close_frame(exc.code or 4000, exc.message))
            transport.set_protocol(Refused(transport, self.loop))
            return
        self.addresses.opened(ip)
        self.endpoint.active += 1
        conn = RawWsConnection(app, new_socket_id(), self.handler.clock(), transport, self, ip)
        transport.set_protocol(conn)
        conn.deliver(_OPENED)
        if rest:
            conn.data_received(rest)


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
        if srv.websocket and not self._served and buf.startswith(PREFIX):
            req = parse_upgrade(buf[:end])
            if req is not None:
                self._stop_timer()
                self._done = True
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
        "_buf",
        "_busy",
        "_frag",
        "_inbox",
        "_ip",
        "_opened",
        "_queued",
        "_skip",
        "_srv",
        "_state",
    )

    def __init__(
        self,
        app: App,
        socket_id: str,
        now: float,
        transport: asyncio.Transport,
        srv: RawServer,
        ip: str,
    ) -> None:
        super().__init__(app, socket_id, now, transport, srv.flusher, srv.max_pending)
        self._srv = srv
        self._ip = ip
        self._state = OPEN
        self._buf: bytearray | None = None  # an incomplete frame
        self._frag: tuple[int, bytearray] | None = None  # (opcode, bytes) of a fragmented one
        self._skip = 0  # payload bytes still to drop (of a frame refused while closing)
        self._inbox: list[str | int] | None = None  # waiting while a message is handled
        self._queued = 0  # characters of text in the inbox
        self._busy = False  # a task is handling this socket's messages
        self._opened = False  # the handler accepted it (on_close is due)

    # Outbound ------------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # queued frames (e.g. the pusher:error) go out before the close frame
        self.closed = True
        self._start_closing(code, reason)

    def _start_closing(self, code: int, reason: str) -> None:
        if self._state != OPEN:
            return
        self._state = CLOSING
        self._frag = None
        self.deliver(_LOST)  # the session ends now (as with aiohttp), the socket a bit later
        transport = self._transport
        if transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        self._srv.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error: close with `code`, drop whatever else the peer sends."""
        self.flush()
        self.closed = True
        self._start_closing(code, reason)

    # Inbound frames --------------------------------------------------------------------------
    def data_received(self, data: bytes | bytearray) -> None:
        if self._state == GONE:
            return
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return
            data = data[skip:]
            self._skip = 0
        buf = self._buf
        if buf is not None:
            buf += data
            data = buf
            self._buf = None
        n = len(data)
        pos = 0
        while n - pos >= 2 and self._state != GONE:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            op = b0 & 0x0F
            end = pos + hdr + length
            if self._state == CLOSING:  # only the peer's close frame matters now
                if op == CLOSE and length <= 125:
                    if end > n:
                        break
                    self._transport.close()
                    return
                if end > n:
                    self._skip = end - n
                    return
                pos = end
                continue
            error = self._check(b0, masked, op, length)
            if error is not None:
                self._fail(*error)
                continue  # parsed again in the closing state: the payload is skipped
            if end > n:
                break
            payload = data[pos + hdr : end]
            if masked:
                payload = unmask(payload, data[end - length - 4 : end - length])
            pos = end
            self._frame(op, b0 & 0x80, payload)
        if pos < n and self._state != GONE:  # an incomplete frame (at most a message long)
            if pos == 0 and isinstance(data, bytearray):
                self._buf = data
            else:
                self._buf = bytearray(data[pos:])

    def _check(self, b0: int, masked: int, op: int, length: int) -> tuple[int, str] | None:
        """Why this frame header fails the connection (close code, reason), if it does."""
        if b0 & 0x70:
            return 1002, "reserved bits set (no extension was negotiated)"
        if not masked:
            return 1002, "client frames must be masked"
        if op >= 8:
            if op > PONG:
                return 1002, f"unknown opcode {op}"
            if length > 125 or not b0 & 0x80:
                return 1002, "control frames must be final and at most 125 bytes"
            return None
        if op == CONT:
            if self._frag is None:
                return 1002, "continuation frame without a message to continue"
        elif op in (TEXT, BINARY):
            if self._frag is not None:
                return 1002, "new message before the fragmented one ended"
        else:
            return 1002, f"unknown opcode {op}"
        size = length + (len(self._frag[1]) if self._frag is not None else 0)
        if size > self._srv.max_message:
            return 1009, f"message larger than {self._srv.max_message} bytes"
        return None

    def _frame(self, op: int, fin: int, payload: bytes | bytearray) -> None:
        if op in (TEXT, BINARY):
            if fin:
                self._message(op, payload)
            else:
                self._frag = (op, bytearray(payload))
        elif op == CONT:
            frag = self._frag
            assert frag is not None
            frag[1].extend(payload)  # one buffer: empty fragments cost nothing to hold
            if fin:
                self._frag = None
                self._message(frag[0], frag[1])
        elif op == PING:
            transport = self._transport
            if not transport.is_closing():
                transport.write(bytes((0x8A, len(payload))) + payload)
                if transport.get_write_buffer_size() > self._max_pending:
                    self._overflow()  # pings sent by a peer that reads nothing
        elif op == CLOSE:
            self._peer_closed(payload)
        # PONG: nothing to do

    def _message(self, op: int, payload: bytes | bytearray) -> None:
        if op == BINARY:
            self.deliver(_BINARY)
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._fail(1007, "text message is not valid UTF-8")
            return
        metrics = self._srv.metrics
        metrics.frames_in += 1
        metrics.bytes_in += len(payload)
        self.deliver(text)

    def _peer_closed(self, payload: bytes | bytearray) -> None:
        """The peer started the closing handshake: answer it and close."""
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            try:
                bytes(payload[2:]).decode()
                reply = code if valid_close_code(code) else 1002
            except UnicodeDecodeError:
                reply = 1007
        else:
            reply = 1000 if not payload else 1002
        self.flush()
        self.closed = True
        if self._state == OPEN:
            self._state = CLOSING
            self.deliver(_LOST)
        transport = self._transport
        if not transport.is_closing():
            transport.write(close_frame(reply, ""))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        was = self._state
        self._state = GONE
        self._buf = None
        self._frag = None
        if was == OPEN:
            self.deliver(_LOST)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # Handling messages, one at a time --------------------------------------------------------
    def deliver(self, item: str | int) -> None:
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = []
            inbox.append(item)
            if type(item) is str:
                self._queued += len(item)
                if self._queued > INBOX_HIGH and not self._transport.is_closing():
                    self._transport.pause_reading()
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
            item = inbox.pop(0)
            if not inbox:
                self._inbox = None
            if type(item) is str:
                was = self._queued
                self._queued -= len(item)
                if was > INBOX_HIGH >= self._queued and self._state == OPEN:
                    self._transport.resume_reading()

    async def _open(self) -> None:
        srv = self._srv
        try:
            await srv.handler.open(self)
        except PusherError:
            srv.metrics.connections_refused += 1  # the handler sent the error and closed
            return
        except Exception:
            log.exception("error opening connection %s", self)
            self.close(1011, "internal error")
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
            srv.endpoint.active -= 1


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
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        raw = getattr(self, "_raw", None)
        if raw is not None:  # kept-alive fast-path connections are not aiohttp's to close
            for reader in list(raw.kept):
                reader.close_idle()
