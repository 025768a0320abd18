"""RFC 6455 framing without I/O: a decoder (bytes in; messages, control frames and a close
code out) and the encoders of the frames a server sends.

No sockets, no event loop, no clock: the transport (`transport/rawws.py`) feeds the decoder
what it reads and acts on what comes out; tests feed it byte streams directly, and
tests/unit/test_websocket_differential.py holds it to wsproto's decoder.

The decoder is a server's: client frames must be masked (5.1); no extension is negotiated,
so reserved bits fail (5.2); lengths must be minimally encoded and a 64-bit length may not
have its most significant bit set (5.2); control frames are final and at most 125 bytes
(5.5); a message is joined from its fragments, control frames may come between them (5.4);
text must be UTF-8, checked fragment by fragment (8.1); a message over `max_size` bytes
fails with 1009 as soon as a frame header announces it (its payload is never buffered). A
close frame's code must be one a peer may send (7.4) and its reason UTF-8. Whatever breaks a
rule comes out as `Fail(code, reason)`; after a `Fail` or the peer's `Close`, nothing more is
decoded. The decoder pulls one event at a time (`next()`), so the caller decides how much to
decode before it lets other work run: the bytes fed and not decoded yet are all it holds, plus
at most `max_size` bytes of a fragmented message.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
from enum import IntEnum
from typing import NamedTuple

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """The close codes this server sends on its own account (RFC 6455 7.4.1)."""

    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005  # not sent: what a close frame without a code means
    INVALID_DATA = 1007
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011


_OPCODES = frozenset(Opcode)
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = (int(op) for op in Opcode)


# Events ------------------------------------------------------------------------------------
class Text(NamedTuple):
    """A whole text message; `size` is its length in bytes."""

    text: str
    size: int


class Binary(NamedTuple):
    data: bytes


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Partial(NamedTuple):
    """A frame of a message still under way: nothing to act on yet (one frame, counted)."""


PARTIAL = Partial()


class Close(NamedTuple):
    """The peer's close frame: its code (1005 when it gave none) and reason."""

    code: int
    reason: str


class Fail(NamedTuple):
    """The peer broke the protocol: fail the connection with this close code."""

    code: int
    reason: str


Event = Text | Binary | Ping | Pong | Partial | Close | Fail


def valid_close_code(code: int) -> bool:
    """Codes a peer may send in a close frame: the registered ones it may use (RFC 6455 7.4,
    IANA's registry) and 3000-4999."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Decoder:
    """Client frames in, events out: `feed(data)`, then `next()` until it returns None."""

    __slots__ = ("_buf", "_done", "_frag", "_frag_op", "_pos", "_utf8", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size  # bytes of one message (all its fragments)
        self._buf: bytes | bytearray = b""
        self._pos = 0  # where the next frame starts in _buf
        self._done = False  # a Fail or the peer's Close came out: nothing more is decoded
        self._frag_op = 0  # the opcode of the fragmented message under way (0: none)
        self._frag: bytearray | None = None  # its payload so far
        self._utf8: codecs.IncrementalDecoder | None = None  # its text checked so far

    @property
    def buffered(self) -> int:
        """Bytes fed and not decoded yet."""
        return len(self._buf) - self._pos

    @property
    def idle(self) -> bool:
        """Nothing buffered, no message under way: the decoder holds no state."""
        return self._pos >= len(self._buf) and self._frag is None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes | bytearray) -> None:
        if self._done or not data:
            return
        buf, pos = self._buf, self._pos
        if pos >= len(buf):  # everything before was decoded: take the bytes as they are
            self._buf, self._pos = data, 0
        elif type(buf) is bytearray:
            if pos:
                del buf[:pos]
                self._pos = 0
            buf += data
        else:
            grown = bytearray(buf[pos:])
            grown += data
            self._buf, self._pos = grown, 0

    def next(self) -> Event | None:
        """The next event (one per frame), or None when more bytes are needed (or after a
        Fail or Close)."""
        if self._done:
            return None
        buf, pos = self._buf, self._pos
        n = len(buf)
        if n - pos < 2:
            if pos >= n and n:
                self._buf, self._pos = b"", 0  # let go of the bytes decoded
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        op, fin, length = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
        # the checks in the order wsproto makes them (the same close code either way)
        if op not in _OPCODES:
            return self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {op}")
        control = op >= _CLOSE
        if control and (not fin or length > 125):
            return self._fail(
                CloseCode.PROTOCOL_ERROR, "control frames must be final and at most 125 bytes"
            )
        hdr = 2
        if length == 126:
            if n - pos < 4:
                return None
            length, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            if length < 126:
                return self._fail(CloseCode.PROTOCOL_ERROR, "length not minimally encoded")
        elif length == 127:
            if n - pos < 10:
                return None
            length, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if length >> 63:
                return self._fail(
                    CloseCode.PROTOCOL_ERROR, "64-bit length with its most significant bit set"
                )
            if length < 65536:
                return self._fail(CloseCode.PROTOCOL_ERROR, "length not minimally encoded")
        if b0 & 0x70:
            return self._fail(
                CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
            )
        if not b1 & 0x80:
            return self._fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        if not control:
            if op == _CONT:
                if not self._frag_op:
                    return self._fail(
                        CloseCode.PROTOCOL_ERROR,
                        "continuation frame without a message to continue",
                    )
            elif self._frag_op:
                return self._fail(
                    CloseCode.PROTOCOL_ERROR, "new message before the fragmented one ended"
                )
            held = len(self._frag) if self._frag is not None else 0
            if held + length > self.max_size:
                return self._fail(
                    CloseCode.TOO_BIG, f"message larger than {self.max_size} bytes"
                )
        end = pos + hdr + 4 + length
        if end > n:
            return None  # the rest of the frame is on its way
        start = end - length
        payload = unmask(buf[start:end], buf[start - 4 : start])
        self._pos = end
        if control:
            if op == _PING:
                return Ping(payload)
            if op == _PONG:
                return Pong(payload)
            return self._close(payload)
        if fin and op != _CONT:  # a whole message in one frame: the usual case
            if op == _BINARY:
                return Binary(payload)
            try:
                return Text(payload.decode(), length)
            except UnicodeDecodeError:
                return self._fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
        return self._fragment(op, fin, payload)

    def _fragment(self, op: int, fin: int, payload: bytes) -> Event:
        """One frame of a fragmented message: its message once `fin`, else PARTIAL (or a
        Fail)."""
        if op != _CONT:  # the first one
            self._frag_op = op
            self._frag = bytearray()
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if op == _TEXT else None
        frag = self._frag
        assert frag is not None
        frag += payload  # one buffer: empty fragments cost nothing to hold
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, bool(fin))
            except UnicodeDecodeError:
                return self._fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
        if not fin:
            return PARTIAL
        op, self._frag_op, self._frag, self._utf8 = self._frag_op, 0, None, None
        if op == _BINARY:
            return Binary(bytes(frag))
        return Text(frag.decode(), len(frag))

    def _close(self, payload: bytes) -> Close | Fail:
        if not payload:
            self._stop()
            return Close(CloseCode.NO_STATUS, "")
        if len(payload) == 1:
            return self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if not valid_close_code(code):
            return self._fail(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            return self._fail(CloseCode.INVALID_DATA, "close reason is not valid UTF-8")
        self._stop()
        return Close(code, reason)

    def _fail(self, code: int, reason: str) -> Fail:
        self._stop()
        return Fail(code, reason)

    def _stop(self) -> None:
        self._done = True
        self._buf, self._pos = b"", 0
        self._frag = self._utf8 = None
        self._frag_op = 0


# Encoders (server frames are never masked) ---------------------------------------------------
def accept_key(ws_key: str) -> bytes:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(ws_key.encode() + GUID).digest())


def switching_protocols(ws_key: str) -> bytes:
    """The server's answer to an upgrade request: the handshake's last step."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(ws_key) + b"\r\n\r\n"
    )


def _head(b0: int, n: int) -> bytes:
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big")
    return bytes((b0, 127)) + n.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """A final text frame carrying `payload` (UTF-8)."""
    return _head(0x80 | _TEXT, len(payload)) + payload


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping: the same payload (at most 125 bytes)."""
    return bytes((0x80 | _PONG, len(payload))) + payload


def close_reason(reason: str, limit: int = 120) -> bytes:
    """`reason` as UTF-8 cut to `limit` bytes on a character boundary (a close frame's reason
    must be valid UTF-8, or the client fails the connection with 1007)."""
    raw = reason.encode()
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode()


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit 125 bytes."""
    payload = code.to_bytes(2, "big") + close_reason(reason)
    return bytes((0x80 | _CLOSE, len(payload))) + payload
